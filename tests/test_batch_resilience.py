"""A batch keeps the user's data whatever happens: a write that fails once is retried, one that keeps failing
leaves nothing under the output's name (an older output stays as it was), and Ctrl-C cancels the running
movie (it stops between frames on the scheduler, no partial folder stays), writes the summary with the rest
"not run", and a rerun resumes. One in-process worker thread, so that the test can patch the command."""

from __future__ import annotations

import _thread
import csv
import json
import signal
import threading
import time

import numpy as np
import pytest
import tifffile
from batch_support import IMAGE_SIZE, write_movie

from napari_sam2 import cli, track_many
from napari_sam2.batch_movie import TOPIC, ModelSpec, manifest_path, write_manifest
from napari_sam2.batch_run import BatchInterrupted

pytest.importorskip("distributed")

FRAMES = 3
LONG_FRAMES = 40  # a movie still running when Ctrl-C arrives on its frame 2


@pytest.fixture(scope="module")
def movies(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("movies")
    write_movie(root, "m0", FRAMES, 0)
    write_movie(root, "long", LONG_FRAMES, 1)
    return {"root": root, "spec": ModelSpec(str(tiny_checkpoint), image_size=IMAGE_SIZE, device="cpu"),
            "row": {"movie": str(root / "m0.tif"), "prompts": str(root / "m0.csv")},
            "long": {"movie": str(root / "long.tif"), "prompts": str(root / "long.csv")}}


def failing_writes(monkeypatch, failures: int | None) -> list[int]:
    """Make the command's label TIFF write raise ``OSError`` the first ``failures`` times (None: always)."""
    calls = []
    write = cli.write_label_tiff

    def flaky(*args, **kwargs):
        calls.append(1)
        if failures is None or len(calls) <= failures:
            raise OSError("No space left on device (a full disk, for the test)")
        return write(*args, **kwargs)

    monkeypatch.setattr(cli, "write_label_tiff", flaky)
    return calls


def leftovers(folder) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if ".partial" in path.name)


def test_a_write_that_fails_once_is_retried(movies, threads_client, monkeypatch, tmp_path):
    calls = failing_writes(monkeypatch, failures=1)
    summary = track_many([movies["row"]], tmp_path, threads_client, model=movies["spec"], retries=1,
                         progress=False)
    assert len(calls) == 2 and summary[0]["status"] == "done"
    assert set(np.unique(tifffile.imread(tmp_path / "m0_labels.tif"))) == {0, 1, 2}
    assert leftovers(tmp_path) == []


def test_a_write_that_keeps_failing_leaves_the_older_output_as_it_was(movies, threads_client, monkeypatch,
                                                                      tmp_path):
    older = tmp_path / "m0_labels.tif"
    older.write_bytes(b"an older result the user keeps")
    write_manifest(older, {"fingerprint": {"made": "with other settings"}})  # an earlier batch's: runs again
    calls = failing_writes(monkeypatch, failures=None)
    summary = track_many([movies["row"]], tmp_path, threads_client, model=movies["spec"], retries=2,
                         progress=False)
    assert len(calls) == 3  # the first try and 2 retries
    assert summary[0]["status"] == "failed" and "No space left on device" in summary[0]["error"]
    assert older.read_bytes() == b"an older result the user keeps"
    assert json.loads(manifest_path(older).read_text()) == {"fingerprint": {"made": "with other settings"}}
    assert leftovers(tmp_path) == []


def executing(client) -> int:
    return sum(client.run(lambda dask_worker: len(dask_worker.state.executing)).values())


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C (KeyboardInterrupt) for the test: importing dask_jobqueue in the tests (as a test of
    the job scripts does) replaces it with a silent exit; napari-sam2 keeps it (see test_batch_cluster)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_cancels_the_running_movie_writes_the_summary_and_a_rerun_resumes(movies, threads_client,
                                                                                 tmp_path, python_ctrl_c):
    from distributed import Client

    frames_seen, interrupted, subscribed = [], threading.Event(), threading.Event()

    def interrupt_on_frame_2(event):
        message = event[1]
        if message.get("event") == "probe":
            subscribed.set()
        elif message.get("event") == "frame":
            frames_seen.append(message["done"])
            if message["done"] == 2 and not interrupted.is_set():
                interrupted.set()
                _thread.interrupt_main()  # as Ctrl-C in the terminal: KeyboardInterrupt in the main thread

    rows = [movies["long"], movies["row"]]
    with Client(threads_client.scheduler.address) as watcher:  # a client has one handler per topic
        watcher.subscribe_topic(TOPIC, interrupt_on_frame_2)
        while not subscribed.wait(0.1):  # the subscription reaches the scheduler asynchronously
            watcher.log_event(TOPIC, {"event": "probe"})
        with pytest.raises(BatchInterrupted) as caught:
            track_many(rows, tmp_path, threads_client, model=movies["spec"], progress=False)
        deadline = time.monotonic() + 60
        while executing(threads_client) and time.monotonic() < deadline:  # the task stops between frames
            time.sleep(0.1)
        assert executing(threads_client) == 0
    assert interrupted.is_set() and max(frames_seen) < LONG_FRAMES  # it stopped, it did not run to the end
    statuses = [(line["status"], line["error"]) for line in caught.value.summary]
    assert statuses == [("not run", "interrupted (Ctrl-C)")] * 2
    with open(tmp_path / "summary.csv", newline="", encoding="utf-8") as fh:
        assert [line["status"] for line in csv.DictReader(fh)] == ["not run", "not run"]
    assert not (tmp_path / "long_labels.tif").exists() and leftovers(tmp_path) == []

    summary = track_many(rows, tmp_path, threads_client, model=movies["spec"], progress=False)
    assert [line["status"] for line in summary] == ["done", "done"]
    assert tifffile.imread(tmp_path / "long_labels.tif").shape == (LONG_FRAMES, 64, 64)


class FakeFuture:
    """A finished dask future as `_collect` sees it: its status and what `result()` does."""

    def __init__(self, status: str, outcome):
        self.status, self._outcome = status, outcome

    def result(self, timeout=None):
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome


@pytest.mark.parametrize(("future", "timeout", "expected"), [
    (FakeFuture("cancelled", None), None, ("not run", "cancelled: the batch lost its dask scheduler")),
    (FakeFuture("error", OSError("disk full\nsecond line")), None, ("failed", "disk full second line")),
    (FakeFuture("finished", TimeoutError()), 5.0, None),  # stopping, its worker gone: left "not run"
])
def test_a_finished_task_becomes_its_summary_line(movies, tmp_path, future, timeout, expected):
    from napari_sam2.batch_progress import BatchProgress
    from napari_sam2.batch_run import _collect
    from napari_sam2.batch_sheet import rows_from_records

    (row,) = rows_from_records([movies["row"]], base=tmp_path)
    results: dict = {}
    bar = BatchProgress(1, 0, disabled=True)
    _collect(future, row, tmp_path, results, bar, timeout=timeout)
    bar.close()
    got = results.get(row.row)
    if expected is None:
        assert got is None
    else:
        assert (got["status"], got["error"]) == expected
