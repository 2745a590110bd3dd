"""Segment everything on the current frame, or seed from the labels already there, from the dock widget.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`. Each is one job of the widget's runner: the engine
works in a worker thread (:mod:`.population`) with progress in the bar and Cancel; the GUI thread then writes the
frame (one undo step) and lists the new objects. A job that is cancelled, fails or is retired leaves no new object
behind (:meth:`~napari_sam2.plugin.population.Seeding.discard`); labels, prompts and corrections stay as they were.
Frames are indices along the tracked axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .controller import FrameWrite
from .job_runner import Job, JobContext, JobEnd
from .labels_writer import next_free_label
from .population import Seeding, new_labels, seed_labels, segment_frame


class PopulationActions:
    """Segment all and seed from labels."""

    def segment_all(self, options: Any = None) -> Job | None:
        """Find every object on the current frame (SAM 2's automatic masks; ``options``: an engine
        ``AutomaticMaskOptions``, default the widget's ``segment_options``, None for the engine's defaults) and add
        each as a new object with the next free labels. Returns the job (None when nothing was started; the status
        says why)."""
        options = options if options is not None else self.segment_options
        ready = self._seeding_start("segment all")
        if ready is None:
            return None
        session, frame = ready
        controller, dtype = self.controller, self.controller.label_dtype
        first_id = max(next_free_label(self.labels_layer), max(session.obj_ids, default=0) + 1,
                       max(self.objects.ids, default=0) + 1)

        def work(seeding: Seeding, context: JobContext) -> FrameWrite | None:
            return segment_frame(controller, seeding, first_id, dtype, context.report, context.should_stop, options)

        self._say(f"Segmenting everything on frame {frame}…")
        return self._run_seeding("segment all", session, frame, work, on_progress=self._segment_progress)

    def seed_from_labels(self) -> Job | None:
        """Take every label of the output Labels layer on the current frame that is not an object yet as a new
        object's mask prompt (label = object id). Returns the job (None when nothing was started)."""
        ready = self._seeding_start("seed from labels")
        if ready is None:
            return None
        session, frame = ready
        controller, dtype = self.controller, self.controller.label_dtype
        image = np.array(controller.writer.read_frame(frame))  # a copy: the layer may change while the job runs
        labels = new_labels(image, session)
        if not labels:
            self._fail(f"frame {frame} of the Labels layer has no label that is not an object yet")
            return None

        def work(seeding: Seeding, context: JobContext) -> FrameWrite | None:
            return seed_labels(controller, seeding, image, labels, dtype, context.report, context.should_stop)

        self._say(f"Seeding {len(labels)} labels of frame {frame} as objects…")
        return self._run_seeding("seed from labels", session, frame, work, on_progress=self._seed_progress)

    def cancel_seeding(self) -> bool:
        """Cancel a running segment-all / seed-from-labels job; False when none runs."""
        seeding_job = self._seeding
        if seeding_job is None:
            return False
        self.runner.cancel_job(seeding_job[1])
        self._say("Cancelling…")
        return True

    # ------------------------------------------------------------------ internals

    def _seeding_start(self, what: str) -> tuple[Any, int] | None:
        """(session, frame) to seed on, or None (the status says why)."""
        if self._refuse_while_working(what):
            return None
        if self._prompts_dirty:
            self._say(f"Clicks are still being sent; {what} once they are done.")
            return None
        try:
            if self.labels_layer is None:
                raise RuntimeError("no output Labels layer; pick or create one")
            frame = self.current_frame()
            session = self.controller.ensure_session()
        except (RuntimeError, ValueError) as error:
            self._fail(error)
            return None
        return session, frame

    def _run_seeding(self, name: str, session: Any, frame: int,
                     work: Callable[[Seeding, JobContext], FrameWrite | None],
                     on_progress: Callable[[int, int], None]) -> Job:
        seeding = Seeding(session, frame)

        def done(write: FrameWrite | None) -> None:
            if write is None:
                return
            self.controller.writer.check_ids_fit(seeding.new_ids)  # (raises: the job fails, the objects go)
            self._write_all([write])
            self.objects.add_ids(seeding.new_ids)
            seeding.taken = True

        def end(result: JobEnd) -> None:
            if self._seeding is not None and self._seeding[0] is seeding:
                self._seeding = None
                if self._run is None:
                    self.cancel_button.setEnabled(False)
            gone = [] if seeding.taken else seeding.discard(self.controller)
            if not self.runner.working:
                self._reset_progress()
            if not result.current:
                return
            if result.status == "failed":
                self._fail(result.error)
            elif result.status == "cancelled" or not seeding.taken:
                left = f" ({len(gone)} objects found were taken out again)" if gone else ""
                self._say(f"Cancelled {name} on frame {frame}: no object was added{left}.")
            else:
                self._say(_describe_added(name, frame, seeding.new_ids))

        self.progress.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        job = Job(name, lambda context: work(seeding, context), on_result=done, on_end=end, on_progress=on_progress)
        self._seeding = (seeding, job)
        return self._submit(job)

    def _segment_progress(self, done: int, total: int) -> None:
        if done >= total:  # the masks are found: they are being seeded (the engine cannot stop there)
            self.progress.setRange(0, 0)
            self._say("Masks found; adding them as objects (Cancel takes them out again)…")
            return
        self._show_steps(done, total, "point batches")

    def _seed_progress(self, done: int, total: int) -> None:
        self._show_steps(done, total, "labels")

    def _show_steps(self, done: int, total: int, unit: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total} {unit}")


def _describe_added(name: str, frame: int, ids: list[int]) -> str:
    if not ids:
        return f"{name.capitalize()} on frame {frame}: nothing found."
    span = f"{ids[0]}" if len(ids) == 1 else f"{min(ids)}-{max(ids)}"
    return (f"{name.capitalize()} on frame {frame}: {len(ids)} new object{'s' if len(ids) != 1 else ''} "
            f"(ids {span}). Propagate to track them; Undo in the Labels layer takes their pixels back.")
