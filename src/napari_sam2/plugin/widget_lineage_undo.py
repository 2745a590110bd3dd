"""Undo of the widget's lineage steps (accept, reject, divide, link, unlink): the lineage before the step and its
Labels step together.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`, through
:class:`~napari_sam2.plugin.widget_lineage.LineageActions`. Undo in the Divisions box undoes the step's Labels
step in the layer (unless the user already did) and restores the lineage; objects the step created go, and so do
the daughters drawn for a manual division. Objects whose span the restored lineage bounds again (a parent after an
undone unlink) lose their pixels outside it. napari emits
no undo event, so an undo of that step in the Labels layer itself (Ctrl-Z) is noticed when the layer is redrawn (it
shows the step's pixels as they were before it, :func:`~napari_sam2.plugin.lineage_steps.shows`) and takes the
lineage back too. A redo in the layer does not bring the lineage step back: accept again.
"""

from __future__ import annotations

from typing import Any

from ..engine.lineage import LineageError
from .lineage_steps import LineageStep, frames_holding, shows


class LineageUndo:
    """The stack of lineage steps and their undo."""

    def _push_step(self, step: LineageStep) -> None:
        self._lineage_steps.append(step)
        self._watch(self.labels_layer)
        self.undo_lineage_button.setEnabled(True)

    def undo_lineage(self) -> bool:
        """Undo the last lineage step (accept, reject, divide, link, unlink): its Labels step (undone in the layer,
        unless the user already did) and the lineage before it; objects it created go (and a manual division's
        daughters, as a cancel would). False when nothing was undone (the status says why)."""
        steps, writer = self._lineage_steps, self.controller.writer
        if not steps:
            self._say("No division step to undo.")
            return False
        if self._refuse_while_working("undo"):
            return False
        step = steps[-1]
        if step.session is not self.controller.session:
            steps.clear()
            self.undo_lineage_button.setEnabled(False)
            self._say("The division steps of the previous session cannot be undone in this one.")
            return False
        undo_pixels = bool(step.changes) and writer is not None and not shows(writer.read_frame, step.changes, "before")
        if undo_pixels and not shows(writer.read_frame, step.changes, "after"):
            return self._edited_since(step)
        after = step.session.lineage_state()
        try:  # first the lineage (it may refuse: then nothing has changed), then the pixels
            step.session.restore_lineage(step.lineage)
        except LineageError as error:
            self._fail(f"{step.what} cannot be undone: {error}")
            return False
        if undo_pixels and not self._undo_layer_step(step):
            step.session.restore_lineage(after)  # (the layer's last step was another edit: nothing changes)
            return self._edited_since(step)
        self._revert(step, restored=True)
        return True

    def _edited_since(self, step: LineageStep) -> bool:
        self._fail(f"the Labels layer was edited after {step.what}: undo those edits there first (Ctrl-Z), then "
                   "Undo here")
        return False

    def _undo_layer_step(self, step: LineageStep) -> bool:
        """Undo the layer's last step if that brings back ``step``'s pixels as they were before it (else redo it)."""
        writer = self.controller.writer
        self._reverting = True
        try:
            writer.layer.undo()
            if shows(writer.read_frame, step.changes, "before"):
                return True
            writer.layer.redo()  # the layer's last undo step was another edit: put it back
            return False
        finally:
            self._reverting = False

    def _revert(self, step: LineageStep, restored: bool = False) -> bool:
        """Take ``step`` back in the session (its Labels pixels are already as before; ``restored``: its lineage
        too). A lineage the session refuses to restore (e.g. prompts given since outside its spans) is reported and
        the step dropped. Objects whose span the restored lineage bounds again lose their pixels outside it."""
        self._lineage_steps.remove(step)
        session = step.session
        if not restored:
            try:
                session.restore_lineage(step.lineage)
            except LineageError as error:
                self.refresh_lineage()
                self._fail(f"{step.what} cannot be undone: {error}")
                return False
        for obj_id in step.new_ids:
            self.controller.forget_object(obj_id)
            self.objects.remove_id(obj_id)
        self.controller.frame_labels.clear()
        self._write_outside_spans(session, [i for i in step.obj_ids if i in session.obj_ids])
        parent = step.obj_ids[0] if step.obj_ids else None
        if step.drawn and parent is not None:
            self._remove_daughters(parent, step.frame, list(step.drawn), rewrite=False)
        self.refresh_lineage()
        self._say(f"Undone: {step.what}.")
        return True

    def _write_outside_spans(self, session: Any, obj_ids: list[int]) -> None:
        """Write ``obj_ids`` (as the session has them now: nothing) on the frames where the layer still shows them
        outside their spans, e.g. a parent tracked past its old end after an unlink that is undone (one undo step)."""
        writer = self.controller.writer
        if writer is None or not obj_ids:
            return
        frames = set()
        for obj_id in obj_ids:
            start, end = session.object_span(obj_id)
            if start is not None:
                frames.update(frames_holding(writer.read_frame, [obj_id], 0, start))
            if end is not None:
                frames.update(frames_holding(writer.read_frame, [obj_id], end + 1, writer.n_frames))
        if frames:
            self._reverting = True
            try:
                self._write_all(self.controller.object_writes(session, sorted(frames), obj_ids,
                                                              self.controller.label_dtype))
            finally:
                self._reverting = False

    def _watch(self, layer: Any) -> None:
        """Check ``layer``'s redraws for an undone lineage step (napari emits no undo event)."""
        if layer is self._watched:
            return
        if self._watched is not None:
            self._watched.events.set_data.disconnect(self._on_labels_redrawn)
        self._watched = layer
        if layer is not None:
            layer.events.set_data.connect(self._on_labels_redrawn)

    def _on_labels_redrawn(self, _event: Any = None) -> None:
        writer, steps = self.controller.writer, self._lineage_steps
        if self._reverting or not steps or writer is None or writer.is_writing or self.runner.working:
            return
        step = steps[-1]
        if (not step.changes or step.session is not self.controller.session or writer.layer is not self._watched
                or not shows(writer.read_frame, step.changes, "before")
                or shows(writer.read_frame, step.changes, "after")):
            return
        self._revert(step)  # the user undid the step's pixels in the Labels layer: its lineage goes back too
