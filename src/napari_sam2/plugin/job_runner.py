"""One owner of the dock widget's background work: clicks, masks, propagation, model and session loads, replays.

Why one runner: a session must never be used by two threads at once, results of a job whose target has gone away
must never reach the layers, and a cancelled job must be *finished* (its engine generator closed in its own thread,
so the engine's clean-up runs there and then) before anything new is built. So every job goes through
:class:`JobRunner`:

* one job runs at a time; others wait in a queue (or the caller refuses them, see :attr:`JobRunner.busy`);
* every job carries the runner's *generation* when it was submitted. :meth:`JobRunner.retire` bumps it (the image,
  axis, output layer or model changed): the running job is cancelled, queued ones are dropped, and nothing of theirs
  reaches the GUI any more;
* a job's work runs in a napari worker thread and only *computes*; its items and result are handed to callbacks in
  the GUI thread, which alone writes layers;
* cancel is cooperative: a generator job stops after the item being computed; the runner closes the generator in
  the worker thread. Speculative jobs (background encoding while the viewer rests on a frame) poll
  :meth:`JobContext.should_stop`, and any other job submitted cancels them.

napari's ``GeneratorWorker.quit()`` only stops *asking* a generator for items: it never closes it, so the engine's
``finally`` would run whenever the garbage collector gets to it, in whatever thread. The runner therefore never
calls ``quit()`` and drives the generator itself (written by hand for that reason). Errors never escape the worker:
superqt drops a worker's ``finished`` signal after a ``RuntimeError`` (torch raises those), which would leave the
runner waiting forever, so every outcome comes back as a :class:`JobEnd`.
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import GeneratorWorker
from qtpy.QtCore import QObject, Signal

__all__ = ["Job", "JobContext", "JobEnd", "JobRunner"]


class JobContext:
    """Handed to a job's work function (worker thread): whether the job has been asked to stop, and a way to report
    progress of a plain (non-generator) job."""

    def __init__(self, report: Callable[[int, int], None] | None = None) -> None:
        self._stop = threading.Event()
        self._report = report

    def cancel(self) -> None:
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def should_stop(self) -> bool:
        """The engine's stop check (polled between model blocks by speculative work)."""
        return self._stop.is_set()

    def report(self, done: int, total: int) -> None:
        """Progress of the work (any thread): handed to the job's ``on_progress`` in the GUI thread, while current."""
        if self._report is not None:
            self._report(int(done), int(total))


@dataclass(frozen=True)
class JobEnd:
    """How a job ended: ``status`` is "done", "cancelled" or "failed" (then ``error`` is set); ``current`` is False
    when the job was retired (its target went away), so its callers must not touch the layers."""

    status: str
    error: BaseException | None = None
    current: bool = True
    started: bool = True  # False for a job dropped from the queue before it ran


@dataclass
class Job:
    """A piece of background work and its GUI-thread callbacks.

    ``work(context)`` runs in a worker thread: a plain function (its return value goes to ``on_result``) or a
    generator function (each yielded item goes to ``on_item``; it stops at the next item once cancelled).
    ``on_start`` runs when the job leaves the queue; ``on_item`` / ``on_result`` / ``on_progress`` (what the work
    reported through :meth:`JobContext.report`, as ``(done, total)``) only while the job is current and running;
    ``on_end`` always, last. A ``survives_retire`` job (a model load: it does not use the session) is neither
    cancelled nor dropped by :meth:`JobRunner.retire`, and its result is always delivered.
    """

    name: str
    work: Callable[[JobContext], Any]
    on_item: Callable[[Any], None] | None = None
    on_result: Callable[[Any], None] | None = None
    on_end: Callable[[JobEnd], None] | None = None
    on_start: Callable[[], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    speculative: bool = False
    survives_retire: bool = False
    generation: int = -1
    context: JobContext | None = None


class _Outcome:
    def __init__(self, status: str, value: Any = None, error: BaseException | None = None) -> None:
        self.status, self.value, self.error = status, value, error


def _drive(job: Job, context: JobContext):
    """The worker's generator: runs ``job.work`` and hands back items, then one :class:`_Outcome` as its value."""
    try:
        result = job.work(context)
        if inspect.isgenerator(result):
            items, result = result, None
            with closing(items):  # closed here, in the worker thread, however the loop ends
                while not context.cancelled:
                    try:
                        item = next(items)
                    except StopIteration as stop:  # the generator's return value is the job's result
                        result = stop.value
                        break
                    yield item
        return _Outcome("cancelled" if context.cancelled else "done", result)
    except Exception as error:  # noqa: BLE001 - every outcome goes back to the GUI thread (see module doc)
        return _Outcome("failed", error=error)


class JobRunner(QObject):
    """Runs :class:`Job` s one at a time in napari worker threads (see the module docstring)."""

    changed = Signal()  # a job started, ended, was queued or dropped: read busy / idle again
    callback_failed = Signal(object)  # a GUI-thread callback of a job raised this exception (the runner goes on)
    _progressed = Signal(object, int, int)  # (job, done, total), emitted in the worker thread, received in the GUI's

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.generation = 0
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._worker: GeneratorWorker | None = None
        self._when_idle: list[Callable[[], None]] = []
        self._progressed.connect(self._on_progress)  # queued: the runner lives in the GUI thread

    # ------------------------------------------------------------------ state

    @property
    def busy(self) -> bool:
        """True while a job other than speculative work runs (and has not been cancelled) or waits. A new job
        submitted while a cancelled one finishes waits for it."""
        job = self._running
        running = job is not None and not job.speculative and not job.context.cancelled
        return running or any(not queued.speculative for queued in self._queue)

    @property
    def idle(self) -> bool:
        """True when nothing runs or waits, speculative work included."""
        return self._running is None and not self._queue

    @property
    def working(self) -> bool:
        """True while a job other than speculative work runs (also a cancelled one still finishing) or waits:
        the session is in use, so the GUI thread must not change it."""
        job = self._running
        return (job is not None and not job.speculative) or any(not queued.speculative for queued in self._queue)

    @property
    def running_name(self) -> str | None:
        return None if self._running is None else self._running.name

    def is_running(self, name: str) -> bool:
        return self._running is not None and self._running.name == name

    # ------------------------------------------------------------------ control

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (it starts at once when nothing runs). A non-speculative job cancels running and queued
        speculative work first."""
        job.generation = self.generation
        if not job.speculative:
            self.cancel_speculative()
        self._queue.append(job)
        self._start_next()
        self.changed.emit()
        return job

    def cancel_job(self, job: Job) -> None:
        """Stop ``job``: running, after the item it is computing; queued, at once (it never starts)."""
        if job is self._running:
            job.context.cancel()
        elif job in self._queue:
            self._queue.remove(job)
            self._end(job, JobEnd("cancelled", current=self._current(job), started=False))
            self.changed.emit()

    def cancel_speculative(self) -> None:
        """Stop speculative work, running or queued (the user did something)."""
        self._queue = deque(j for j in self._queue if not j.speculative)
        if self._running is not None and self._running.speculative:
            self._running.context.cancel()

    def retire(self) -> None:
        """The target changed: cancel the running job, drop queued ones, and let nothing of theirs reach the GUI."""
        self.generation += 1
        dropped = [job for job in self._queue if not job.survives_retire]
        self._queue = deque(job for job in self._queue if job.survives_retire)
        if self._running is not None and not self._running.survives_retire:
            self._running.context.cancel()
        for job in dropped:
            self._end(job, JobEnd("cancelled", current=False, started=False))
        self.changed.emit()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the GUI thread once no job runs (now, if none does), before queued jobs start."""
        if self._running is None:
            self._call(callback)
        else:
            self._when_idle.append(callback)

    # ------------------------------------------------------------------ internals

    def _start_next(self) -> None:
        if self._running is not None or not self._queue:
            return
        job = self._queue.popleft()
        job.context = JobContext(lambda done, total, job=job: self._progressed.emit(job, done, total))
        self._running = job
        if job.on_start is not None:
            self._call(job.on_start)
        worker = GeneratorWorker(_drive, job, job.context)
        worker.yielded.connect(lambda item, job=job: self._on_item(job, item))
        worker.returned.connect(lambda outcome, job=job: self._on_returned(job, outcome))
        worker.errored.connect(lambda error, job=job: self._on_returned(job, _Outcome("failed", error=error)))
        self._worker = worker
        worker.start()

    def _current(self, job: Job) -> bool:
        return job.survives_retire or job.generation == self.generation

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        """Run a GUI-thread callback; what it raises is reported, and the runner goes on (the queue never stalls)."""
        try:
            callback(*args)
        except Exception as error:  # noqa: BLE001 - reported through callback_failed, never raised into Qt
            self.callback_failed.emit(error)

    def _on_item(self, job: Job, item: Any) -> None:
        if self._current(job) and job.on_item is not None:
            self._call(job.on_item, item)

    def _on_progress(self, job: Job, done: int, total: int) -> None:
        if job is self._running and self._current(job) and job.on_progress is not None:
            self._call(job.on_progress, done, total)

    def _on_returned(self, job: Job, outcome: _Outcome) -> None:
        if job is not self._running:
            return
        current = self._current(job)
        if outcome.status == "done" and current and job.on_result is not None:
            try:
                job.on_result(outcome.value)
            except Exception as error:  # noqa: BLE001 - a failing GUI step ends the job as failed, not Qt
                outcome = _Outcome("failed", error=error)
        self._running = self._worker = None
        self._end(job, JobEnd(outcome.status, outcome.error, current))
        callbacks, self._when_idle = self._when_idle, []
        for callback in callbacks:
            self._call(callback)
        self._start_next()
        self.changed.emit()

    def _end(self, job: Job, end: JobEnd) -> None:
        if job.on_end is not None:
            self._call(job.on_end, end)
