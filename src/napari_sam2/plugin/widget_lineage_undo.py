"""Undo of the widget's lineage steps (accept, reject, divide, link, unlink): the lineage before the step and its
Labels step together.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`, through
:class:`~napari_sam2.plugin.widget_lineage.LineageActions`. Undo in the Divisions box undoes the step's Labels
step in the layer (unless the user already did) and restores the lineage; objects the step created go. napari emits
no undo event, so an undo of that step in the Labels layer itself (Ctrl-Z) is noticed when the layer is redrawn (it
shows the step's pixels as they were before it, :func:`~napari_sam2.plugin.lineage_steps.shows`) and takes the
lineage back too. A redo in the layer does not bring the lineage step back: accept again.
"""

from __future__ import annotations

from typing import Any

from .lineage_steps import LineageStep, shows


class LineageUndo:
    """The stack of lineage steps and their undo."""

    def _push_step(self, step: LineageStep) -> None:
        self._lineage_steps.append(step)
        self._watch(self.labels_layer)
        self.undo_lineage_button.setEnabled(True)

    def undo_lineage(self) -> bool:
        """Undo the last lineage step (accept, reject, divide, link, unlink): its Labels step (undone in the layer,
        unless the user already did) and the lineage before it; objects it created go. False when nothing was
        undone (the status says why)."""
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
        if step.changes and writer is not None and not shows(writer.read_frame, step.changes, "before"):
            undone = False
            if shows(writer.read_frame, step.changes, "after"):
                self._reverting = True
                try:
                    writer.layer.undo()
                    undone = shows(writer.read_frame, step.changes, "before")
                    if not undone:
                        writer.layer.redo()  # the layer's last undo step was another edit: put it back
                finally:
                    self._reverting = False
            if not undone:
                self._fail(f"the Labels layer was edited after {step.what}: undo those edits there first "
                           "(Ctrl-Z), then Undo here")
                return False
        self._revert(step)
        return True

    def _revert(self, step: LineageStep) -> None:
        """Take ``step`` back in the session (its Labels pixels are already as before)."""
        self._lineage_steps.remove(step)
        for obj_id in step.new_ids:
            self.controller.forget_object(obj_id)
            self.objects.remove_id(obj_id)
        step.session.restore_lineage(step.lineage)
        self.controller.frame_labels.clear()
        self.refresh_lineage()
        self._say(f"Undone: {step.what}.")

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
