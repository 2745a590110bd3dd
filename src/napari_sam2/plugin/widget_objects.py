"""The dock widget's objects: new, remove, select, find by id, jump to an object's frames, show or hide it.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`. Hiding is the Labels layer's colormap
(:mod:`.label_visibility`); "Only this one" is napari's ``show_selected_label``. Frames are indices along the tracked
axis; a jump finds the next frame where the Labels layer holds the object or where it has a prompt
(:mod:`.object_frames`).
"""

from __future__ import annotations

from typing import Any

from .label_visibility import LabelVisibility
from .labels_writer import next_free_label
from .lineage_steps import step_names
from .object_frames import next_frame
from .prompt_layers import read_prompts, remove_object_prompts, set_prompt_defaults


class ObjectActions:
    """Object list actions of the widget."""

    def _connect_object_controls(self) -> None:
        self.objects.selected_id.connect(self._on_object_selected)
        self.objects.visibility_changed.connect(self.set_object_shown)
        self.find_edit.textChanged.connect(self.objects.filter_ids)
        self.find_edit.returnPressed.connect(lambda: self.find_object(self.find_edit.text()))
        self.previous_frame_button.clicked.connect(lambda: self.jump_to_object_frame(-1))
        self.next_frame_button.clicked.connect(lambda: self.jump_to_object_frame(1))
        self.solo_check.toggled.connect(self._on_solo_toggled)
        self.new_object_button.clicked.connect(self.new_object)
        self.remove_object_button.clicked.connect(self.remove_selected_object)

    # ------------------------------------------------------------------ objects

    def new_object(self) -> int:
        """Add an object with the next free label and make it the current one (Shift-N)."""
        layer = self.labels_layer
        next_id = max(next_free_label(layer) if layer is not None else 1, max(self.objects.ids, default=0) + 1)
        self.objects.add_id(next_id)
        return next_id

    def remove_selected_object(self) -> None:
        """Remove the current object: its prompts, its results in the session, its links to a parent or daughters,
        and its pixels on the tracked plane (one undo step)."""
        obj_id = self.objects.current_id
        if obj_id is not None:
            self.remove_object(obj_id)

    def remove_object(self, obj_id: int, quiet: bool = False) -> bool:
        """Remove ``obj_id`` (see :meth:`remove_selected_object`); ``quiet`` leaves the status line alone. The
        lineage follows (the session drops the object's links) and the division steps naming it can no longer be
        undone (the others still can). False when refused (a job is running)."""
        if self._refuse_while_working("remove the object"):
            return False
        self.runner.cancel_speculative()
        frames = self.controller.remove_object(obj_id)
        for layer in (self.points_layer, self.shapes_layer):
            remove_object_prompts(layer, obj_id)
        if self.visibility is not None:
            self.visibility.set_hidden([obj_id], hidden=False)
        self.objects.remove_id(obj_id)
        # Steps naming the removed object can no longer be undone (the session refuses their snapshots); others can.
        self._lineage_steps[:] = [step for step in self._lineage_steps if not step_names(step, obj_id)]
        self.refresh_lineage()
        if not quiet:
            self._say(f"Removed object {obj_id} ({len(frames)} frame{'s' if len(frames) != 1 else ''} changed; "
                      "Undo in the Labels layer brings its pixels back).")
        return True

    def _on_object_selected(self, obj_id: int) -> None:
        self._ensure_layers()  # brings back a prompt layer the user removed
        set_prompt_defaults(self.points_layer, obj_id=obj_id)
        set_prompt_defaults(self.shapes_layer, obj_id=obj_id)
        if self.labels_layer is not None:
            self.labels_layer.selected_label = obj_id

    # ------------------------------------------------------------------ find, jump, show

    def find_object(self, text: str) -> int | None:
        """Select the object whose id is ``text`` (or, failing that, the first listed id starting with it)."""
        digits = "".join(ch for ch in text if ch.isdigit())
        if not digits:
            return None
        wanted = int(digits)
        ids = self.objects.ids
        if wanted not in ids:
            starting = [i for i in ids if str(i).startswith(digits)]
            if not starting:
                self._say(f"No object {wanted} in the list.")
                return None
            wanted = starting[0]
        self.objects.select_id(wanted)
        return wanted

    def jump_to_object_frame(self, step: int, obj_id: int | None = None) -> int | None:
        """Show the next (``step`` = 1) or previous (-1) frame where the object (default: the selected one) has a mask
        in the Labels layer or a prompt; returns that frame (None, and the status says so, when there is none)."""
        obj_id = self.objects.current_id if obj_id is None else obj_id
        writer, target = self.controller.writer, self.controller.target
        if obj_id is None or writer is None or target is None:
            self._say("Select an object (and an output Labels layer) first.")
            return None
        frame = next_frame(writer.read_frame, writer.n_frames, obj_id, self.current_frame(), step,
                           self._prompted_frames(obj_id))
        if frame is None:
            where = "after" if step > 0 else "before"
            self._say(f"Object {obj_id} has no mask or prompt {where} frame {self.current_frame()}.")
            return None
        self.show_frame(frame)
        self._say(f"Object {obj_id} on frame {frame}.")
        return frame

    def _prompted_frames(self, obj_id: int) -> set[int]:
        """Frames where ``obj_id`` has a prompt: in the session, or in the prompt layers (not sent yet)."""
        session, target = self.controller.session, self.controller.target
        frames = set(session.prompted_frames(obj_id)) if session is not None and obj_id in session.obj_ids else set()
        prompts = read_prompts(target, self.points_layer, self.shapes_layer)
        return frames | {frame for frame, i in prompts if i == obj_id}

    def show_frame(self, frame: int) -> None:
        """Move the viewer's slider of the tracked axis to ``frame``."""
        target = self.controller.target
        world_axis = self.viewer.dims.ndim - target.layer.ndim + target.track_axis
        self.viewer.dims.set_current_step(world_axis, frame)

    def set_object_shown(self, obj_id: int, shown: bool) -> None:
        """Show or hide one object in the output Labels layer (its pixels and prompts stay as they are)."""
        if self.visibility is None:
            return
        try:
            self.visibility.set_hidden([obj_id], hidden=not shown)
        except ValueError as error:
            self._fail(error)
            shown = True
        self.objects.set_shown(obj_id, shown)

    def _on_solo_toggled(self, only_selected: bool) -> None:
        if self.labels_layer is not None:
            self.labels_layer.show_selected_label = only_selected

    def _object_list_for(self, layer: Any, ids: list[int]) -> None:
        """Fill the list for a new output layer: its labels ``ids``, swatches from its colours, hidden ones none."""
        if self.visibility is not None:
            self.visibility.close()
        self.visibility = LabelVisibility(layer)
        self.objects.clear()
        self.objects.set_colour_source(self.visibility.colour_of)
        self.objects.add_ids(ids)
        self.solo_check.setChecked(bool(layer.show_selected_label))
