"""The command line's lineage: ``track --divisions propose|auto|off`` and ``napari-sam2 evaluate``.

``track`` runs in-process with a small random-weight model (input 128) in place of the downloaded one, on the
synthetic time-lapse seeded with its ground truth on every frame: cell 3 ends where daughters 8 and 9 start, at
``division_frame(T)``. Movies are (T, Y, X), coordinates (row, col) = (y, x).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from lineage_support import LINEAGE, dividing_stack, write_lineage_gt
from session_support import small_model

from napari_sam2 import cli, load_session
from napari_sam2.exports import write_ctc
from napari_sam2.geff_files import read_geff
from napari_sam2.sample_data import division_frame, synthetic_cells_movie

T = 6  # the smallest movie whose division is proposed (cells of 16+ pixels at size 96)


@pytest.fixture(scope="module")
def movie_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_lineage")
    movie, truth = synthetic_cells_movie(num_frames=T, size=96)
    tifffile.imwrite(root / "movie.tif", movie, photometric="minisblack", metadata={"axes": "TYX"})
    tifffile.imwrite(root / "truth.tif", truth, photometric="minisblack", metadata={"axes": "TYX"})
    write_lineage_gt(root / "01_GT", truth, {8: 3, 9: 3})
    return root, truth, small_model()


def track(root, model, monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: model)
    code = cli.main(["track", str(root / "movie.tif"), "--prompts", str(root / "truth.tif"), "--quiet", *args])
    return code, capsys.readouterr().err


def test_auto_writes_the_lineage_into_ctc_and_the_session(movie_files, monkeypatch, capsys, tmp_path):
    root, truth, model = movie_files
    code, err = track(root, model, monkeypatch, capsys, "--out", str(tmp_path / "01_RES"), "--divisions", "auto",
                      "--save-session", str(tmp_path / "s.json"))
    assert code == 0, err
    assert "1 object(s) divided; the lineage has 2 link(s)" in err
    rows = {int(r.split()[0]): tuple(map(int, r.split()[1:])) for r in (tmp_path / "01_RES" / "res_track.txt")
            .read_text().splitlines()}
    split = division_frame(T)
    assert rows[3] == (0, split - 1, 0)
    assert rows[8] == (split, T - 1, 3) and rows[9] == (split, T - 1, 3)
    assert not (tmp_path / "01_RES_divisions.csv").exists()
    code = cli.main(["evaluate", str(tmp_path / "01_RES"), str(root / "01_GT")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    scores = {line.split()[0]: float(line.split()[1]) for line in lines}
    assert scores["TRA"] == 1.0 and scores["DET"] == 1.0 and scores["division_f1"] == 1.0
    assert load_session(tmp_path / "s.json", np.zeros_like(truth), model).lineage() == {8: 3, 9: 3}


def test_propose_applies_nothing_and_lists_the_proposal(movie_files, monkeypatch, capsys, tmp_path):
    root, _, model = movie_files
    code, err = track(root, model, monkeypatch, capsys, "--out", str(tmp_path / "run.geff"))
    assert code == 0, err
    assert f"1 division(s) proposed, none applied: listed in {tmp_path / 'run_divisions.csv'}" in err
    with open(tmp_path / "run_divisions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["frame"], r["parent"], r["kind"], r["daughters"]) for r in rows] == [
        (str(division_frame(T)), "3", "cells", "8 9")]
    assert int(rows[0]["part_area_1"]) > 0 and int(rows[0]["part_area_2"]) > 0
    assert read_geff(tmp_path / "run.geff").parents == {}  # nothing applied
    # the proposals file is output too: a run that would write it again needs --overwrite (refused at once)
    (tmp_path / "run.geff").rename(tmp_path / "moved.geff")
    code, err = track(root, model, monkeypatch, capsys, "--out", str(tmp_path / "run.geff"))
    assert code == 1 and "run_divisions.csv already exist" in err and not (tmp_path / "run.geff").exists()


def test_off_makes_no_proposal(movie_files, monkeypatch, capsys, tmp_path):
    root, _, model = movie_files
    (tmp_path / "labels_divisions.csv").write_text("frame,parent\n4,3\n")  # an earlier propose run's list
    code, err = track(root, model, monkeypatch, capsys, "--out", str(tmp_path / "labels.tif"), "--divisions", "off")
    assert code == 0, err
    assert "proposed" not in err and "divided" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]  # the stale list is gone


def test_division_flags_set_the_division_options():
    from napari_sam2.cli_lineage import division_options
    from napari_sam2.engine.divisions import DIVISION_MODES, DivisionOptions

    parser = cli._parser()
    base = ["track", "m.tif", "--prompts", "p.csv", "--out", "o.tif"]
    args = parser.parse_args([*base, "--division-ratio", "0.7", "--division-min-area", "30", "--division-neck", "0.5"])
    assert division_options(args) == DivisionOptions(min_area_ratio=0.7, min_part_area=30, neck_ratio=0.5)
    assert division_options(parser.parse_args(base)) is None
    bad = parser.parse_args([*base, "--division-coverage", "1.5"])
    with pytest.raises(ValueError, match=r"--division-coverage: DivisionOptions min_coverage must be in \(0, 1\]"):
        division_options(bad)
    assert [parser.parse_args([*base, "--divisions", mode]).divisions for mode in DIVISION_MODES] == list(
        DIVISION_MODES)


def test_evaluate_prints_one_line_per_metric(tmp_path, capsys):
    stack = dividing_stack()
    write_lineage_gt(tmp_path / "gt", stack, LINEAGE)
    write_ctc(tmp_path / "res", stack, parents={8: 3})
    assert cli.main(["evaluate", str(tmp_path / "res"), str(tmp_path / "gt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["DET", "SEG", "TRA", "division_precision", "division_recall",
                                                   "division_f1"]
    values = dict(line.split() for line in lines)
    assert values["DET"] == "1.0000" and float(values["TRA"]) < 1 and values["division_precision"] == "n/a"


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["missing", "gt"], "result missing does not exist"),
        (["res", "missing"], "ground truth missing does not exist"),
        (["res", "plain"], "is neither a GEFF nor a CTC folder"),
        (["res", "gt", "--result-labels", "labels.npy"], "which has its own masks"),
    ],
)
def test_evaluate_bad_paths_are_one_line_errors(tmp_path, capsys, monkeypatch, paths, message):
    monkeypatch.chdir(tmp_path)
    write_ctc(tmp_path / "res", dividing_stack())
    write_lineage_gt(tmp_path / "gt", dividing_stack(), LINEAGE)
    (tmp_path / "plain").mkdir()
    np.save(tmp_path / "labels.npy", dividing_stack())
    assert cli.main(["evaluate", *paths]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("napari-sam2: error: ") and message in line
