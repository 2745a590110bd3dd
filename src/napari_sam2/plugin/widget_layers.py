"""Which layers the dock widget works on: the image and its tracked axis, the output Labels layer, the prompt layers.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget` (it uses the widget's controls, controller and job
runner). Changing the image or the axis, or removing the image, retires the running job and builds the new target
only once that job has finished (see :mod:`.job_runner`). Changing or removing the output layer retires the job too
(nothing of it reaches any layer any more) and takes the new layer at once: the job only computes on the session.
Axis order is napari's: the image layer's leading axes, then (row, col) = (y, x).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from .prompt_layers import make_points_layer, make_shapes_layer, read_prompts, set_prompt_defaults
from .track_target import TargetError, TrackTarget, layer_data, leading_axes

NEW_LABELS = "(new Labels layer)"


class LayerBinding:
    """Image / axis / output choices and the prompt layers of the widget."""

    # ------------------------------------------------------------------ choices

    def _layers_of(self, kind: type) -> list[Any]:
        return [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layer_choices(self, event: Any = None) -> None:
        current = self.image_layer
        _refill(self.image_combo, [(layer.name, layer) for layer in self._layers_of(Image)], current)
        if self.image_layer is not current:
            self._on_image_changed()
        else:
            self._refresh_labels_choices()

    def _refresh_labels_choices(self, keep: Labels | None = None) -> None:
        target = self.controller.target
        current = keep or self.labels_layer
        fitting = [(layer.name, layer) for layer in self._layers_of(Labels)
                   if target is not None and tuple(layer.data.shape) == target.labels_shape]
        _refill(self.labels_combo, [(NEW_LABELS, None), *fitting], current)
        if self.labels_layer is not current and not self._retarget_pending:
            self._on_labels_changed()

    @property
    def image_layer(self) -> Image | None:
        return self.image_combo.currentData()

    @property
    def labels_layer(self) -> Labels | None:
        writer = self.controller.writer
        return None if writer is None else writer.layer

    def set_image_layer(self, layer: Image, track_axis: int = 0) -> None:
        """Track ``layer`` along its leading axis ``track_axis`` (0: the first axis, e.g. T of a (T, Z, Y, X) movie).

        A running job is stopped first; the new target is built once it has finished (``idle`` tells when)."""
        index = self.image_combo.findData(layer)
        if index < 0:
            raise ValueError(f"layer {layer.name!r} is not an Image layer of this viewer")
        if leading_axes(layer) < 1:
            TrackTarget.from_layer(layer, track_axis)  # raises TargetError saying why a 2-D image cannot be tracked
        if not 0 <= track_axis < leading_axes(layer):
            raise ValueError(f"layer {layer.name!r} has leading axes 0..{leading_axes(layer) - 1}, not {track_axis}")
        if index != self.image_combo.currentIndex():
            self.image_combo.setCurrentIndex(index)  # re-targets, along axis 0
        if track_axis != self.axis_combo.currentIndex():
            self.axis_combo.setCurrentIndex(track_axis)  # re-targets

    def _on_image_changed(self, _index: int = 0) -> None:
        layer = self.image_layer
        self.axis_combo.blockSignals(True)
        self.axis_combo.clear()
        if layer is not None:
            names = self._axis_names(layer)
            shape = layer_data(layer).shape
            for axis in range(max(leading_axes(layer), 0)):
                self.axis_combo.addItem(f"{names[axis]} (size {shape[axis]})")
        self.axis_combo.blockSignals(False)
        self._on_axis_changed()

    def _axis_names(self, layer: Image) -> list[str]:
        """Names of the layer's axes: the viewer's axis labels, or "axis i" where those are just numbers."""
        labels = list(self.viewer.dims.axis_labels)[-layer.ndim:]
        return [f"axis {i}" if label.lstrip("-").isdigit() else label for i, label in enumerate(labels)]

    def _on_axis_changed(self, _index: int = 0) -> None:
        self._retarget()

    # ------------------------------------------------------------------ re-targeting

    def _retarget(self) -> None:
        """Rebuild the target from the chosen image and axis once the running job has finished (the old session
        ends; layer contents stay)."""
        self.runner.retire()
        if not self._retarget_pending:
            self._retarget_pending = True
            self.runner.when_idle(self._build_target)

    def _build_target(self) -> None:
        self._retarget_pending = False
        layer = self.image_layer
        previous_output = self.labels_layer
        try:
            target = None if layer is None else TrackTarget.from_layer(layer, max(self.axis_combo.currentIndex(), 0),
                                                                       self.viewer.dims.point)
        except TargetError as error:
            target = None
            self._fail(error)
        self.controller.set_target(target)
        self.controller.set_labels_layer(None)
        self._drop_prompt_layers()
        if target is not None:
            self.target_label.setText(f"Tracking {target.describe(self._axis_names(layer))}.")
            self.target_label.setToolTip("The model sees the layer's contrast limits as they are at the first prompt.")
            for spin in (self.first_spin, self.last_spin):
                spin.setRange(0, target.num_frames - 1)
            self.first_spin.setValue(0)
            self.last_spin.setValue(target.num_frames - 1)
        else:
            self.target_label.setText("")
        self._refresh_labels_choices(keep=previous_output)
        self._ensure_layers()
        self.refresh_lineage()  # the old session's proposals, steps and a division under way end with it
        self._on_prompts_edited()  # prompts already in the layers go to the new session

    def _on_labels_changed(self, _index: int = 0) -> None:
        layer = self.labels_combo.currentData()
        if (layer is self.labels_layer and layer is not None) or (layer is None and self.controller.model is None):
            return
        self.set_labels_layer(layer)

    def set_labels_layer(self, layer: Labels | None) -> Labels | None:
        """Write into ``layer`` (None: create a new, empty Labels layer over the image). Its labels join the list."""
        target = self.controller.target
        if target is None:
            self.controller.set_labels_layer(None)
            return None
        self.runner.retire()  # nothing of a running job may reach the new output layer
        if layer is None:
            layer = self.viewer.add_labels(np.zeros(target.labels_shape, dtype=np.uint16),
                                           name=f"{target.layer.name} SAM 2", scale=target.layer.scale,
                                           translate=target.layer.translate)
            # add_labels re-entered _refresh_labels_choices via the inserted event; select the new layer there.
        try:
            self.controller.set_labels_layer(layer)
        except ValueError as error:  # wrong shape (TargetError), multiscale, ...: said, not raised
            self._fail(error)
            return None
        index = self.labels_combo.findData(layer)
        if index >= 0 and index != self.labels_combo.currentIndex():
            self.labels_combo.blockSignals(True)
            self.labels_combo.setCurrentIndex(index)
            self.labels_combo.blockSignals(False)
        present = np.unique(layer.data) if isinstance(layer.data, np.ndarray) else np.zeros(0, dtype=int)
        self._object_list_for(layer, present[present > 0].tolist())
        self._bind_shortcuts(layer)
        if not self.objects.ids:
            self.new_object()
        else:
            self.objects.select_id(self.objects.ids[0])
        return layer

    # ------------------------------------------------------------------ prompt layers

    def _ensure_layers(self) -> None:
        """Once a model and an image are set: the output Labels layer (a new one unless the user picked one) and
        the clicks (Points) and boxes (Shapes) prompt layers over the image (kept across re-targeting when they fit)."""
        target = self.controller.target
        if target is None or self.controller.model is None:
            return
        if self.labels_layer is None:
            self.set_labels_layer(self.labels_combo.currentData())
        obj_id = self.objects.current_id or 1
        if self.shapes_layer is None:
            self.shapes_layer = self._adopt(self._find_prompt_layer(Shapes) or make_shapes_layer(target.layer, obj_id))
        if self.points_layer is None:
            self.points_layer = self._adopt(self._find_prompt_layer(Points) or make_points_layer(target.layer, obj_id))
            self._activate(self.points_layer)
        set_prompt_defaults(self.points_layer, obj_id=obj_id, positive=not self.negative_check.isChecked())
        set_prompt_defaults(self.shapes_layer, obj_id=obj_id)

    def _activate(self, layer: Any) -> None:
        """Make ``layer`` the active layer, in its own mode (the layer controls then show that mode checked)."""
        mode = layer.mode
        self.viewer.layers.selection.active = layer
        layer.mode = "pan_zoom"  # the controls' buttons follow mode *changes*: set it again so they show it
        layer.mode = mode

    def _find_prompt_layer(self, kind: type) -> Any:
        """This widget's earlier prompt layer over the current image (prompts belong to the image they were made on)."""
        image = self.controller.target.layer
        for owner, layer in self._old_prompt_layers:
            if owner is image and isinstance(layer, kind) and layer in self.viewer.layers:
                self._old_prompt_layers.remove((owner, layer))
                return layer
        return None

    def _adopt(self, layer: Any) -> Any:
        self._prompt_image = self.controller.target.layer
        if layer not in self.viewer.layers:
            self.viewer.add_layer(layer)
        layer.events.data.connect(self._on_prompts_edited)
        self._bind_shortcuts(layer)
        return layer

    def _drop_prompt_layers(self, keep_for_later: bool = True) -> None:
        """Stop using the prompt layers (they stay in the viewer, as the user's record of the old session); with
        ``keep_for_later`` they are taken up again when the same image is tracked again."""
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None:
                layer.events.data.disconnect(self._on_prompts_edited)
                if keep_for_later:
                    self._old_prompt_layers.append((self._prompt_image, layer))
        self.points_layer = self.shapes_layer = None

    def _on_layer_removed(self, event: Any) -> None:
        removed = event.value
        target = self.controller.target
        self._old_prompt_layers = [(i, p) for i, p in self._old_prompt_layers if removed is not i and removed is not p]
        if removed is self.points_layer or removed is self.shapes_layer:
            removed.events.data.disconnect(self._on_prompts_edited)
            if removed is self.points_layer:
                self.points_layer = None
            else:
                self.shapes_layer = None
            # What the removed layer held stays in the session: it is not a deletion of those prompts.
            self.controller.mark_prompts_sent(read_prompts(target, self.points_layer, self.shapes_layer))
            self._say("A prompt layer was removed; its prompts stay in the session. Select an object to get a new one.")
        if removed is self.labels_layer:
            self.runner.retire()
            self.controller.set_labels_layer(None)
            self._say("The output Labels layer was removed; pick or create another one to go on.")
        self._refresh_layer_choices()
        if target is not None and removed is target.layer:
            self._say("The image layer was removed; its session ended. Pick another image to go on.")


def _refill(combo: Any, entries: list[tuple[str, Any]], current: Any) -> None:
    """Replace a combo box's (text, data) entries without emitting signals; ``current`` stays selected if listed."""
    combo.blockSignals(True)
    combo.clear()
    for text, data in entries:
        combo.addItem(text, data)
    datas = [data for _, data in entries]
    if current is not None and current in datas:
        combo.setCurrentIndex(datas.index(current))
    combo.blockSignals(False)
