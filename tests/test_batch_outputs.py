"""A batch refuses, before anything runs, outputs that would replace a row's input, land outside --out or
replace a file no batch wrote; publishing an output never loses the older one it replaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_sam2 import batch_movie
from napari_sam2.batch_movie import manifest_path, remove_partials, write_manifest
from napari_sam2.batch_run import check_outputs
from napari_sam2.batch_sheet import MovieRow


def test_outputs_inside_out_and_apart_from_the_inputs_pass(tmp_path):
    rows = [MovieRow(row=1, movie=tmp_path / "pos1.tif", prompts=tmp_path / "pos1_seeds.tif")]
    check_outputs(rows, tmp_path / "results")


def test_an_output_that_is_a_prompt_file_is_refused(tmp_path):
    rows = [MovieRow(row=1, movie=tmp_path / "pos1.tif", prompts=tmp_path / "pos1_labels.tif")]
    with pytest.raises(ValueError, match=r"row 1: its output .*pos1_labels.tif would replace row 1's input"):
        check_outputs(rows, tmp_path)  # the default output name, pos1_labels.tif, is the seed labels


def test_an_output_folder_holding_an_input_is_refused(tmp_path):
    rows = [MovieRow(row=1, movie=tmp_path / "data" / "pos1.tif", prompts="auto"),
            MovieRow(row=2, movie=tmp_path / "pos2.tif", prompts="auto", out="../data")]
    with pytest.raises(ValueError, match="row 2, column 'out'"):  # outside --out
        check_outputs(rows, tmp_path / "results")
    rows[1] = MovieRow(row=2, movie=tmp_path / "pos2.tif", prompts="auto", out="data")
    with pytest.raises(ValueError, match="would replace row 1's input"):
        check_outputs(rows, tmp_path)


def test_an_existing_output_no_batch_wrote_is_refused_unless_forced(tmp_path):
    rows = [MovieRow(row=1, movie=tmp_path / "pos1.tif", prompts="auto")]
    mine = tmp_path / "results" / "pos1_labels.tif"
    mine.parent.mkdir()
    mine.write_bytes(b"labels the user made with napari-sam2 track")
    with pytest.raises(ValueError, match=r"row 1: .*pos1_labels\.tif already exists and no batch wrote it \(no "
                                         r"pos1_labels\.tif\.done\.json beside it\); move it away"):
        check_outputs(rows, tmp_path / "results")
    mine.rename(mine.with_name("pos1_labels_divisions.csv"))  # the division CSV a batch would replace
    with pytest.raises(ValueError, match=r"row 1: .*pos1_labels_divisions\.csv already exists and no batch"):
        check_outputs(rows, tmp_path / "results")
    mine.with_name("pos1_labels_divisions.csv").rename(mine)
    check_outputs(rows, tmp_path / "results", force=True)
    write_manifest(mine, {"fingerprint": None, "publishing": True})  # a batch's, e.g. cut off while publishing
    check_outputs(rows, tmp_path / "results")


def older_and_new_folders(root: Path) -> tuple[Path, Path]:
    """An older CTC folder ``root/01_RES`` and a batch's partial folder holding the new one."""
    output = root / "01_RES"
    output.mkdir()
    (output / "mask000.tif").write_bytes(b"the older result")
    partial = root / f"{batch_movie.partial_prefix(output, 'b1')}123-abc"
    (partial / "01_RES").mkdir(parents=True)
    (partial / "01_RES" / "mask000.tif").write_bytes(b"the new result")
    return output, partial


class Killed(BaseException):
    """A worker's end (SIGKILL) in the middle of publishing: no handler of the code runs."""


def test_a_worker_killed_while_publishing_a_folder_never_loses_the_older_one(tmp_path, monkeypatch):
    output, partial = older_and_new_folders(tmp_path)
    moves = []
    replace = batch_movie.os.replace

    def killed_after_the_first_move(source, target):  # of a folder (the marker is written with os.replace too)
        if Path(source).is_dir():
            if moves:
                raise Killed("the worker is killed here")
            moves.append(Path(target))
        replace(source, target)

    monkeypatch.setattr(batch_movie.os, "replace", killed_after_the_first_move)
    with pytest.raises(Killed):
        batch_movie._publish(partial, output)
    monkeypatch.undo()
    remove_partials(output, "b1")  # the batch's clean-up of what the dead worker left
    (aside,) = moves
    assert not partial.exists() and (aside / "mask000.tif").read_bytes() == b"the older result"
    assert aside.parent == tmp_path and aside.name.startswith(".01_RES.replaced-")
    assert manifest_path(output).exists()  # the publishing marker: the rerun may replace what is there


def test_a_publish_that_fails_puts_the_older_folder_back(tmp_path, monkeypatch):
    output, partial = older_and_new_folders(tmp_path)
    replace = batch_movie.os.replace

    def refused(source, target):
        if Path(source) == partial / "01_RES":
            raise PermissionError("the new folder cannot be moved (for the test)")
        replace(source, target)

    monkeypatch.setattr(batch_movie.os, "replace", refused)
    with pytest.raises(PermissionError):
        batch_movie._publish(partial, output)
    monkeypatch.undo()
    assert (output / "mask000.tif").read_bytes() == b"the older result"
    assert not list(tmp_path.glob(".01_RES.replaced-*"))
