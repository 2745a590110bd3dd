"""``napari-sam2 batch`` end to end: the single-movie command's labels, a rerun that resumes, --force, an edited
prompt file that makes its movie run again, Ctrl-C (exit 130 with the counts) and the options' one-line errors."""

from __future__ import annotations

import csv

import pytest
import tifffile
from batch_support import IMAGE_SIZE, cli_labels, write_movie

from napari_sam2 import batch_run, cli, cli_batch
from napari_sam2.batch_cluster import cpu_cores, worker_layout
from napari_sam2.batch_movie import ModelSpec
from napari_sam2.batch_run import BatchInterrupted

pytest.importorskip("distributed")


@pytest.fixture
def sheet(tmp_path, tiny_checkpoint, monkeypatch):
    """Two movies, the second written to one/m1.tif; workers run the checkpoint at IMAGE_SIZE on the CPU (the
    command line always loads at 1024)."""
    monkeypatch.setattr(batch_run, "_model_spec",
                        lambda model: ModelSpec(str(model), image_size=IMAGE_SIZE, device="cpu"))
    for i in range(2):
        write_movie(tmp_path, f"m{i}", 3, i)
    (tmp_path / "sheet.csv").write_text("movie,prompts,out\nm0.tif,m0.csv,\nm1.tif,m1.csv,one/m1.tif\n")
    return tmp_path / "sheet.csv"


def batch(sheet, tiny_checkpoint, *options) -> int:
    out = sheet.parent / "out"
    return cli.main(["batch", str(sheet), "--out", str(out), "--model", str(tiny_checkpoint), "--quiet", *options])


def test_batch_command_tracks_the_sheet_as_track_does_and_resumes(sheet, tiny_checkpoint, threads_client,
                                                                   monkeypatch, capsys):
    root, out = sheet.parent, sheet.parent / "out"
    assert batch(sheet, tiny_checkpoint, "--workers", "1") == 0, capsys.readouterr().err  # its own LocalCluster
    assert "2 done, 0 skipped (already done), 0 failed of 2 movie(s)" in capsys.readouterr().err
    outputs = [out / "m0_labels.tif", out / "one" / "m1.tif"]
    threads = worker_layout(cpu_cores(), 0, 1)[1]  # what the one local worker gave torch
    for i, output in enumerate(outputs):
        expected = cli_labels([root / f"m{i}.tif", "--prompts", root / f"m{i}.csv", "--model", tiny_checkpoint],
                              root / f"single{i}.tif", monkeypatch, threads=threads)  # the worker's threads
        labels = tifffile.imread(output)
        assert labels.max() == 2 and labels.shape == (3, 64, 64)  # both objects tracked
        assert (labels == expected).all()

    scheduler = ["--scheduler", threads_client.scheduler.address]
    assert batch(sheet, tiny_checkpoint, *scheduler) == 0
    assert "0 done, 2 skipped (already done), 0 failed of 2 movie(s)" in capsys.readouterr().err
    assert batch(sheet, tiny_checkpoint, *scheduler, "--force") == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err

    (root / "m1.csv").write_text("index,axis-0\n0,not-a-frame\n")  # edited: its row must run again, and fails
    assert batch(sheet, tiny_checkpoint, *scheduler) == 1
    err = capsys.readouterr().err
    assert "0 done, 1 skipped (already done), 1 failed of 2 movie(s)" in err
    assert f"failed: {root / 'm1.tif'}: " in err and "m1.csv" in err
    with open(out / "summary.csv", newline="") as handle:
        assert [line["status"] for line in csv.DictReader(handle)] == ["skipped", "failed"]
    assert outputs[1].exists()  # the older output of the failed movie is kept


def test_ctrl_c_exits_130_with_the_counts(sheet, tiny_checkpoint, monkeypatch, capsys):
    def interrupted(rows, args):
        raise BatchInterrupted([{"status": "done"}, {"status": "not run"}])

    monkeypatch.setattr(cli_batch, "_track", interrupted)
    assert batch(sheet, tiny_checkpoint) == 130
    err = capsys.readouterr().err
    assert "1 done, 0 skipped (already done), 0 failed, 1 not run of 2 movie(s)" in err
    assert "interrupted; run the same command again to resume" in err


@pytest.mark.parametrize(("options", "message"), [
    (["--device", "gpu0"], "device 'gpu0' is not a torch device"),
    (["--model", "sam3_huge"], "'sam3_huge' is neither a known model nor an existing file"),
])
def test_bad_options_are_one_line_before_anything_runs(sheet, tiny_checkpoint, monkeypatch, capsys, options,
                                                        message):
    monkeypatch.undo()  # the real model check
    assert batch(sheet, tiny_checkpoint, *options) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (sheet.parent / "out").exists()
