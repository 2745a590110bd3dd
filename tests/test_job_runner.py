"""The widget's job runner, progress estimate and error messages on their own (Qt event loop, no viewer)."""

import threading
import time

import numpy as np
import pytest

from napari_sam2.plugin.job_runner import Job, JobRunner
from napari_sam2.plugin.messages import is_user_mistake, message_of
from napari_sam2.plugin.run_progress import RunProgress

WAIT_MS = 10_000


@pytest.fixture
def runner(qtbot):
    runner = JobRunner()
    yield runner
    runner.retire()
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)


def frames(log: list, count: int = 1000, delay: float = 0.01):
    """A job's generator: yields 0, 1, 2, ... and records in which thread it was closed."""
    def work(_context):
        try:
            for i in range(count):
                time.sleep(delay)
                yield i
        finally:
            log.append(("closed", threading.current_thread() is threading.main_thread()))
    return work


def test_cancel_closes_the_generator_in_the_worker_and_keeps_the_items_so_far(runner, qtbot):
    log, items, ends = [], [], []

    def on_item(i):
        items.append(i)
        if i == 2:
            runner.cancel_job(job)

    job = runner.submit(Job("run", frames(log), on_item=on_item, on_end=ends.append))
    qtbot.waitUntil(lambda: bool(ends), timeout=WAIT_MS)
    assert ends[0].status == "cancelled" and ends[0].current
    assert log == [("closed", False)]  # closed once, at once, in the worker thread
    assert items[:3] == [0, 1, 2] and len(items) < 10


def test_retire_drops_the_running_jobs_items_and_the_queued_jobs(runner, qtbot):
    log, items, ends, second = [], [], [], []
    runner.submit(Job("old", frames(log), on_item=items.append, on_end=ends.append))
    runner.submit(Job("queued", lambda _c: second.append("ran"), on_end=ends.append))
    qtbot.waitUntil(lambda: len(items) >= 1, timeout=WAIT_MS)
    runner.retire()
    seen = len(items)
    built = []
    runner.when_idle(lambda: built.append(log[:]))  # the new state is built once the old job is finished
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    assert len(items) == seen  # nothing more reached the GUI
    assert second == [] and [e.current for e in ends] == [False, False]
    assert built == [[("closed", False)]]


def test_a_model_load_survives_a_retire_and_a_failing_callback_does_not_stall_the_queue(runner, qtbot):
    results, reported, ends = [], [], []
    runner.callback_failed.connect(reported.append)
    runner.submit(Job("busy", frames([], count=5), on_item=lambda _i: 1 / 0))  # its GUI callback is broken
    runner.submit(Job("model load", lambda _c: "model", on_result=results.append, survives_retire=True))
    runner.submit(Job("click", lambda _c: "mask", on_result=results.append, on_end=ends.append))
    runner.retire()  # the image changed: the click is dropped, the model load is not
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    assert results == ["model"]
    assert [(e.status, e.started) for e in ends] == [("cancelled", False)]
    assert reported == [] or all(isinstance(error, ZeroDivisionError) for error in reported)
    runner.submit(Job("broken item", frames([], count=2), on_item=lambda _i: 1 / 0))
    runner.submit(Job("next", lambda _c: 42, on_result=results.append))
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    assert results == ["model", 42] and reported and isinstance(reported[-1], ZeroDivisionError)


def test_a_runtime_error_ends_the_job_and_the_next_one_runs(runner, qtbot):
    ends, results = [], []

    def broken(_context):
        raise RuntimeError("CUDA out of memory")

    runner.submit(Job("broken", broken, on_end=ends.append))
    runner.submit(Job("next", lambda _c: 42, on_result=results.append, on_end=ends.append))
    qtbot.waitUntil(lambda: len(ends) == 2, timeout=WAIT_MS)
    assert ends[0].status == "failed" and str(ends[0].error) == "CUDA out of memory"
    assert ends[1].status == "done" and results == [42]


def test_a_generator_jobs_return_value_is_its_result(runner, qtbot):
    items, results = [], []

    def work(_context):
        yield "loading…"
        return "model"

    runner.submit(Job("load", work, on_item=items.append, on_result=results.append))
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    assert items == ["loading…"] and results == ["model"]


def test_a_job_cancels_speculative_work_which_stops_at_once(runner, qtbot):
    stopped, order = [], []

    def speculative(context):
        while not context.should_stop():
            time.sleep(0.002)
        stopped.append(time.perf_counter())
        return False

    runner.submit(Job("ahead", speculative, speculative=True, on_end=lambda e: order.append(("ahead", e.status))))
    assert not runner.busy and not runner.idle
    submitted = time.perf_counter()
    runner.submit(Job("click", lambda _c: "mask", on_end=lambda e: order.append(("click", e.status))))
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    assert stopped and stopped[0] - submitted < 0.3
    assert order == [("ahead", "cancelled"), ("click", "done")]


def test_run_progress_takes_its_pace_from_tracked_frames_after_the_first():
    now = [0.0]
    progress = RunProgress(total=6, clock=lambda: now[0])
    for kind, seconds in (("mask", 0.05), ("start", 0.1), ("frame", 2.0), ("frame", 2.0)):
        now[0] += seconds
        progress.step(tracked=kind != "mask")
    # 2 of 4 tracked steps done at 2 s each: 2 steps left take 4 s (elapsed / done would say 2.8 s).
    assert progress.seconds_left() == pytest.approx(4.0)
    assert progress.text() == "4/6 steps, about 4 s left"
    fresh = RunProgress(total=3, clock=lambda: now[0])
    fresh.step()
    assert fresh.seconds_left() is None and fresh.text() == "1/3 steps"


def test_messages_are_one_short_line_and_bugs_are_told_apart():
    from napari_sam2.plugin.track_target import TargetError

    ours = TargetError("layer 'flat' is a single 2-D image")
    assert is_user_mistake(ours)
    try:
        np.zeros(3).reshape(2, 2)
    except ValueError as error:
        assert not is_user_mistake(error)  # raised inside numpy: a bug of ours that passed bad shapes
    try:
        raise ValueError("object 3 has no pixels on frame 2")
    except ValueError as error:
        assert not is_user_mistake(error)  # raised here, in a test module, not by napari-sam2
    ours_module = {"__name__": "napari_sam2.example"}  # functions that live in a napari-sam2 module
    exec("def converts():\n    return int('x')\n\ndef refuses():\n    raise ValueError('frame 9 is out of range')\n",
         ours_module)  # noqa: S102 - a module whose name is napari-sam2's, made for the test
    for name, mistake in (("converts", False), ("refuses", True)):
        try:
            ours_module[name]()
        except ValueError as error:  # int('x') fails inside C, called from our code: a bug, not a message
            assert is_user_mistake(error) is mistake, name
    long = message_of("a" * 50 + " " + "b" * 300)
    assert len(long.short) < 210 and long.details.startswith("a" * 50)
    assert message_of(FileNotFoundError("movie.tif")).short == "movie.tif"
    assert is_user_mistake(FileNotFoundError("movie.tif"))
