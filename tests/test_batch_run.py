"""track_many on a real dask LocalCluster (2 worker processes, 1 thread each): the single-movie CLI's labels,
a failed movie reported while the others go on, resuming (skips), and a worker killed mid-movie.

Workers load a random-weight checkpoint at input size 128 (``ModelSpec``); the CLI runs compared against load
the same checkpoint at the same size in this process.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from batch_support import IMAGE_SIZE, write_four_movie_sheet, write_movie
from batch_support import cli_labels as batch_cli_labels

from napari_sam2 import batch_run, cli, track_many
from napari_sam2.batch_movie import TOPIC, ModelSpec, finished, manifest_path, row_fingerprint
from napari_sam2.batch_sheet import read_sheet

distributed = pytest.importorskip("distributed")

FRAMES = 4
SLOW_FRAMES = 24  # long enough that a worker killed on frame 2 dies mid-movie


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster for the module: 2 worker processes x 1 thread (torch: 1 thread each, 2 cores)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"OMP_NUM_THREADS": "1"}) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint):
    """4 movies with their sheet (movie 3's prompt file is broken) and one slow movie for the kill test."""
    root = tmp_path_factory.mktemp("batch")
    write_four_movie_sheet(root, FRAMES)
    write_movie(root, "slow", SLOW_FRAMES, 5)
    (root / "slow_sheet.csv").write_text("movie,prompts\nslow.tif,slow.csv\n")
    return {"root": root, "checkpoint": tiny_checkpoint,
            "spec": ModelSpec(str(tiny_checkpoint), image_size=IMAGE_SIZE, device="cpu")}


def cli_labels(row, checkpoint: Path, out: Path, monkeypatch) -> np.ndarray:
    """The single-movie command's labels for ``row``, with one torch thread as in a worker here."""
    return batch_cli_labels(row.track_args(str(checkpoint)), out, monkeypatch, threads=1)


@pytest.fixture(scope="module")
def first_run(files, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch_out")
    summary = track_many(files["root"] / "sheet.csv", out, client, model=files["spec"], progress=False)
    return out, summary


def test_outputs_equal_the_single_movie_cli_and_the_broken_movie_is_reported(files, first_run, monkeypatch,
                                                                             tmp_path):
    out, summary = first_run
    rows = read_sheet(files["root"] / "sheet.csv")
    assert [line["status"] for line in summary] == ["done", "done", "done", "failed"]
    for row, line in zip(rows[:3], summary[:3], strict=True):
        expected = cli_labels(row, files["checkpoint"], tmp_path / f"cli_{row.row}.tif", monkeypatch)
        labels = tifffile.imread(row.output_path(out))
        np.testing.assert_array_equal(labels, expected)
        assert set(np.unique(labels)) == {0, 1, 2}
        assert (line["frames"], line["objects"], line["error"]) == (FRAMES - (row.row == 2), 2, "")
        assert line["output"] == str(row.output_path(out)) and line["seconds"] > 0
    assert summary[1]["frames"] == FRAMES - 1 and rows[1].frames == 2  # the row's option reached the command
    broken = summary[3]
    assert "m3.csv" in broken["error"] and "\n" not in broken["error"]
    assert not rows[3].output_path(out).exists() and not manifest_path(rows[3].output_path(out)).exists()
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        written = list(csv.DictReader(fh))
    assert [line["status"] for line in written] == ["done", "done", "done", "failed"]
    assert list(written[0]) == ["movie", "status", "frames", "objects", "seconds", "output", "error"]
    assert written[3]["error"] == broken["error"] and written[0]["frames"] == str(FRAMES)
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


def test_a_second_run_skips_the_done_movies(files, first_run, client):
    out, _ = first_run
    rows = read_sheet(files["root"] / "sheet.csv")
    stamps = [row.output_path(out).stat().st_mtime_ns for row in rows[:3]]
    summary = track_many(files["root"] / "sheet.csv", out, client, model=files["spec"], progress=False)
    assert [line["status"] for line in summary] == ["skipped", "skipped", "skipped", "failed"]
    assert [row.output_path(out).stat().st_mtime_ns for row in rows[:3]] == stamps  # not rewritten
    assert summary[0]["frames"] == FRAMES and summary[0]["objects"] == 2  # read back from the manifest
    # another model (or input size), or a changed prompt file, no longer matches: the movie would run again
    spec = files["spec"]
    assert finished(rows[0].output_path(out), row_fingerprint(rows[0], spec)) is not None
    assert finished(rows[0].output_path(out), row_fingerprint(rows[0], ModelSpec("sam2.1_hiera_small"))) is None
    assert finished(rows[0].output_path(out), row_fingerprint(rows[0], ModelSpec(spec.name, 256))) is None
    clicks = rows[0].prompts.read_text()
    rows[0].prompts.write_text(clicks.replace("20.0,18.0", "21.0,18.0"))  # one click moved
    try:
        assert finished(rows[0].output_path(out), row_fingerprint(read_sheet(files["root"] / "sheet.csv")[0],
                                                                  spec)) is None
    finally:
        rows[0].prompts.write_text(clicks)
    assert finished(rows[0].output_path(out), row_fingerprint(rows[0], spec)) is not None  # as it was: done


def test_the_batch_command_exits_1_while_a_movie_fails_and_0_when_all_are_done(files, first_run, cluster,
                                                                              monkeypatch, capsys):
    out, _ = first_run
    root = files["root"]
    # the command's --model is the checkpoint at the official input size; workers here run it at 128
    monkeypatch.setattr(batch_run, "_model_spec", lambda model: files["spec"])
    good = root / "good_sheet.csv"
    good.write_text("\n".join((root / "sheet.csv").read_text().splitlines()[:4]) + "\n")  # without m3
    errors = []
    for sheet, code, counts in ((root / "sheet.csv", 1, "1 failed of 4"), (good, 0, "0 failed of 3")):
        assert cli.main(["batch", str(sheet), "--out", str(out), "--model", str(files["checkpoint"]),
                         "--scheduler", cluster.scheduler_address, "--quiet"]) == code
        errors.append(capsys.readouterr().err)
        assert f"0 done, 3 skipped (already done), {counts} movie(s)" in errors[-1]
    assert f"failed: {root / 'm3.tif'}: " in errors[0] and "failed: " not in errors[1]


def test_a_ctc_folder_output_from_records_replaces_an_unfinished_one(files, first_run, client, monkeypatch,
                                                                    tmp_path):
    out = tmp_path / "out"
    stale = out / "ctc" / "01_RES"
    stale.mkdir(parents=True)
    (stale / "mask999.tif").write_bytes(b"from a run that never finished")
    monkeypatch.chdir(files["root"])  # records' paths are relative to the working folder
    records = [{"movie": "m0.tif", "prompts": "m0.csv", "out": "ctc/01_RES"}]
    with pytest.raises(ValueError, match="already exists and no batch wrote it"):  # no done-marker: the user's
        track_many(records, out, client, model=files["spec"], progress=False)
    (out / "ctc" / "01_RES.done.json").write_text('{"fingerprint": null, "publishing": true}')  # cut off
    summary = track_many(records, out, client, model=files["spec"], progress=False)
    assert summary[0]["status"] == "done" and summary[0]["output"] == str(stale)
    masks = sorted(stale.glob("mask*.tif"))
    assert len(masks) == FRAMES and (stale / "res_track.txt").is_file()
    first_out, _ = first_run
    np.testing.assert_array_equal(np.stack([tifffile.imread(m) for m in masks]),
                                  tifffile.imread(first_out / "m0_labels.tif"))  # the same row as the sheet's
    names = {p.name for p in (out / "ctc").iterdir()}
    assert names - {"01_RES_divisions.csv"} == {"01_RES", "01_RES.done.json"}  # and no hidden partial folder
    assert ("01_RES_divisions.csv" in names) == (first_out / "m0_labels_divisions.csv").exists()


def _count_model_loads() -> None:
    """On a worker: forget the models it loaded and count the loads from now on (in ``weights.model_loads``)."""
    from napari_sam2 import batch_movie, weights

    batch_movie._MODELS.clear()
    original = getattr(weights, "_uncounted_load_model", weights.load_model)

    def counting(*args, **kwargs):
        weights.model_loads += 1
        return original(*args, **kwargs)

    weights._uncounted_load_model, weights.model_loads, weights.load_model = original, 0, counting


def _model_loads() -> int:
    from napari_sam2 import weights

    count = weights.model_loads
    weights.load_model = weights._uncounted_load_model
    return count


def test_each_worker_loads_the_model_once_and_force_runs_done_movies_again(files, first_run, client):
    out, _ = first_run
    client.run(_count_model_loads)
    summary = track_many(files["root"] / "sheet.csv", out, client, model=files["spec"], force=True,
                         progress=False)
    assert [line["status"] for line in summary] == ["done", "done", "done", "failed"]  # none skipped
    loads = client.run(_model_loads)
    assert len(loads) == 2 and sum(loads.values()) >= 1  # 4 movies on 2 workers: at most one load each
    assert all(count <= 1 for count in loads.values()), loads


def test_a_worker_killed_mid_movie_is_retried_and_leaves_a_complete_output(files, cluster, client, monkeypatch,
                                                                           tmp_path, capsys):
    from distributed import Client

    out = tmp_path / "out"
    row = read_sheet(files["root"] / "slow_sheet.csv")[0]
    output = row.output_path(out)
    pids = set(client.run(os.getpid).values())
    events, killed = [], {}
    lock = threading.Lock()

    subscribed = threading.Event()

    def kill_on_frame_2(event):
        message = event[1]
        if message.get("event") == "probe":
            subscribed.set()
            return
        with lock:
            events.append(message)
            if message["event"] == "frame" and message["done"] == 2 and not killed:
                assert message["pid"] in pids
                killed.update(pid=message["pid"], output_existed=output.exists(), total=message["total"])
                os.kill(message["pid"], signal.SIGKILL)

    # A second client: a client has one handler per topic, and track_many's client uses its own.
    with Client(cluster.scheduler_address) as watcher:
        watcher.subscribe_topic(TOPIC, kill_on_frame_2)
        while not subscribed.wait(0.1):  # the subscription reaches the scheduler asynchronously
            watcher.log_event(TOPIC, {"event": "probe"})
        summary = track_many([row], out, client, model=files["spec"], progress=True)
    assert killed and killed["total"] == SLOW_FRAMES and killed["output_existed"] is False
    starts = [m["pid"] for m in events if m["event"] == "start"]
    assert len(starts) == 2 and starts[0] == killed["pid"] != starts[1]  # run again in another process
    assert [m["event"] for m in events].count("done") == 1
    assert summary[0]["status"] == "done" and summary[0]["frames"] == SLOW_FRAMES
    np.testing.assert_array_equal(tifffile.imread(output),
                                  cli_labels(row, files["checkpoint"], tmp_path / "cli.tif", monkeypatch))
    proposals = out / "slow_labels_divisions.csv"  # what the command writes beside its output came along
    assert proposals.read_text() == (tmp_path / "cli_divisions.csv").read_text()
    assert not [p for p in out.rglob("*") if ".partial" in p.name]  # the dead worker's folder is gone
    err = capsys.readouterr().err
    assert "1/1" in err and f"/{SLOW_FRAMES}" in err  # movies done, and frames of the running movie
