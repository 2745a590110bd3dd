"""Propagation from the dock widget: painted corrections become mask prompts, then every frame is tracked and written
as it comes, with progress, time left and Cancel.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`. The run is one job of the widget's runner: the
model works in a worker thread on the session; each frame is written in the GUI thread, leaving alone every object the
user has edited on that frame meanwhile (those edits are listed at the end and become prompts at the next run). Frames
written so far stay on Cancel or failure; the whole run is one undo step. Division proposals (the "Divisions" choice:
propose, auto or off) are listed as their frames come (:mod:`.widget_lineage`). Frames are indices along the tracked
axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .controller import Correction, FrameWrite
from .job_runner import Job, JobEnd
from .run_progress import RunProgress
from .widget_layout import DIVISION_CHOICES
from .widget_lineage import describe_proposals, division_writes


@dataclass
class _Run:
    """What one propagation run has done so far (GUI thread)."""

    progress: RunProgress
    note: str
    range_frames: int
    writer: Any = None  # the Labels writer whose undo group the run holds (from its start)
    job: Job | None = None
    frames: set[int] = field(default_factory=set)
    kept: dict[int, set[int]] = field(default_factory=dict)  # object -> frames left as the user edited them
    divisions: str = "propose"
    proposals: list[Any] = field(default_factory=list)  # the division proposals made by the run, as they came


class RunActions:
    """Propagate, cancel, and the run's progress."""

    def propagate_forward(self) -> None:
        self.propagate("forward")

    def propagate_backward(self) -> None:
        self.propagate("backward")

    def propagate_both(self) -> None:
        self.propagate("both")

    def propagate(self, direction: str | None = None, start: int | None = None, first: int | None = None,
                  last: int | None = None, divisions: str | None = None) -> Job | None:
        """Track every object from ``start`` (default: the current frame) over frames ``first..last`` (default: the
        range boxes), writing each frame as it comes; painted corrections become mask prompts first. ``divisions``
        (default: the Divisions choice, "propose") is "propose" (proposals listed for review), "auto" (accepted at
        once) or "off", with the thresholds of :attr:`division_options` (a DivisionOptions; None: the defaults). Returns the job (None when nothing was started, and the status line says why)."""
        if self.runner.busy or self._retarget_pending:
            self._say(f"Busy ({self.runner.running_name or 'switching the image'}); wait for it or press Cancel.")
            return None
        direction = direction or self.direction_combo.currentText()
        divisions = divisions or self.division_combo.currentText()
        controller = self.controller
        try:
            if divisions not in DIVISION_CHOICES:
                raise ValueError(f"divisions must be one of {', '.join(DIVISION_CHOICES)}, not {divisions!r}")
            if self.labels_layer is None:
                raise RuntimeError("no output Labels layer; pick or create one")
            start = self.current_frame() if start is None else int(start)
            first = self.first_spin.value() if first is None else int(first)
            last = self.last_spin.value() if last is None else int(last)
            if not first <= start <= last:
                raise ValueError(f"the start frame {start} is outside the chosen range {first}..{last}")
            session = controller.ensure_session()
        except (RuntimeError, ValueError) as error:
            self._fail(error)
            return None
        corrections = controller.collect_corrections(self.objects.ids)
        if not any(session.prompted_frames(i) for i in session.obj_ids) and not corrections:
            self._fail("nothing to track yet: click on an object, draw a box or paint a mask first")
            return None
        note = (f"Painted corrections used as prompts: {describe_frames(_by_object(corrections))}." if corrections
                else "")
        dtype, options = controller.label_dtype, self.division_options

        def work(_context: Any):
            for write in controller.mask_writes(session, corrections, dtype):
                yield "mask", write
            made, written = [], {}
            for write in controller.propagation(session, start, direction, first, last, dtype, divisions, options):
                made.extend(write.divisions)
                if divisions == "auto":  # (the ids on each frame: one pass over its labels, only in "auto")
                    written[write.frame] = set(np.unique(write.labels).tolist()) - {0}
                yield "frame", write
            if made and divisions == "auto":  # accepted at once: the parents end, the daughters begin there
                for write in division_writes(controller, session, made, written, dtype):
                    yield "lineage", write

        span = {"forward": last - start + 1, "backward": start - first + 1, "both": last - first + 1}[direction]
        total = len({c.frame for c in corrections}) + controller.frames_in_run(start, direction, first, last)
        run = self._run = _Run(RunProgress(total), note, span, divisions=divisions)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.progress.setFormat(run.progress.text())
        self.cancel_button.setEnabled(True)
        self._say(f"{note} Propagating {direction} from frame {start}…".strip())

        def begin() -> None:  # when the run leaves the queue (a cancelled run may still be finishing before it)
            run.writer = controller.writer
            self._seed_new_ids(session)  # (daughters and re-seeded cells: above every label of the layer)
            if run.writer is not None:
                run.writer.layer.mode = "pan_zoom"  # keep the brush away while frames are written (see LabelsWriter)
                run.writer.begin_undo_group()

        run.job = Job("propagation", work, on_start=begin, on_item=lambda item: self._on_run_item(run, item),
                      on_end=lambda end: self._end_run(run, end))
        return self._submit(run.job)

    def _on_run_item(self, run: _Run, item: tuple[str, FrameWrite]) -> None:
        kind, write = item
        for obj_id in self._write(write):
            run.kept.setdefault(obj_id, set()).add(write.frame)
        if kind == "lineage":
            return
        run.progress.step(tracked=kind == "frame")
        if kind != "frame":
            return
        run.frames.add(write.frame)
        if write.divisions:
            run.proposals.extend(write.divisions)
            if run.divisions == "propose" and self._run is run:
                self._list_new_proposals(write.divisions)  # listed as they come
        if self._run is run:  # (a cancelled run may still deliver its last frame after a new one has started)
            self.progress.setValue(run.progress.done)
            self.progress.setFormat(run.progress.text())
            if self.follow_check.isChecked():
                self.show_frame(write.frame)
        self.frame_written.emit(write.frame)

    def _end_run(self, run: _Run, end: JobEnd) -> None:
        latest = self._run is run
        if latest:
            self._run = None
            self.cancel_button.setEnabled(False)
        if run.divisions == "auto" and run.proposals and end.current and end.started:
            # (in the run's undo step) parents it divided also leave the frames it did not visit
            self._end_auto_divisions(self.controller.session, run.proposals)
        if run.writer is not None and run.writer.in_undo_group:
            run.writer.end_undo_group()
        if not latest:  # a newer run has started: it owns the status line and the bar
            return
        if not end.current:
            self._reset_progress()
            return
        self.lineage_after_run(run.divisions, run.proposals)
        written = f"{len(run.frames)} of {run.range_frames} frames written in {run.progress.elapsed:.1f} s"
        kept = ""
        pending = _still_pending(run.writer, run.kept)  # (a later write of the run may have taken an edit)
        if pending:
            kept = (f" Your edits of {describe_frames(pending)} were left as you made them; they become prompts "
                    "at the next run.")
        if end.status == "failed":
            self._fail(end.error)
            self._say(f"{self.status.text()} ({written} before the error; painted corrections not used yet stay "
                      f"pending.){kept}")
            return
        word = "Cancelled" if end.status == "cancelled" else "Done"
        self.progress.setFormat(f"{word}: {run.progress.done}/{run.progress.total} steps")
        self._say(f"{run.note} {word}: {written}.{kept}{describe_proposals(run.divisions, run.proposals)}".strip())

    def cancel(self) -> None:
        """Stop the running propagation after the frame being computed; frames written so far stay (Shift-C). Also
        stops a running segment all / seed from labels (no object of it stays)."""
        if self.cancel_seeding():
            return
        run = self._run
        if run is not None and run.job is not None:
            self.runner.cancel_job(run.job)
            self._say("Cancelling after the current frame…")


def _still_pending(writer: Any, kept: dict[int, set[int]]) -> dict[int, set[int]]:
    """Of the edits a run left alone, those the writer still reports as the user's (not yet given to the model)."""
    if writer is None:
        return {}
    pending = {obj_id: {t for t in frames if writer.edited_ids(t, [obj_id])} for obj_id, frames in kept.items()}
    return {obj_id: frames for obj_id, frames in pending.items() if frames}


def _by_object(corrections: list[Correction]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for c in corrections:
        out.setdefault(c.obj_id, set()).add(c.frame)
    return out


def describe_frames(frames_of: dict[int, set[int]]) -> str:
    """E.g. "object 1 on frames 3, 4; object 2 on frame 7"."""
    return "; ".join(f"object {obj_id} on frame{'s' if len(frames) > 1 else ''} {', '.join(map(str, sorted(frames)))}"
                     for obj_id, frames in sorted(frames_of.items()))
