"""The "SAM 2 tracking" dock widget: click, see, propagate, correct, export.

Axis order and coordinates are napari's: the image layer's leading axes (e.g. (T,), (T, Z), (Z,)), then
(row, col) = (y, x). Model work runs in napari ``thread_worker`` threads, one at a time; the GUI thread only reads
prompt layers and writes results (through :class:`~napari_sam2.plugin.labels_writer.LabelsWriter`, so Undo works).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QWidget,
)

from ..exports import tracks_from_labels, write_ctc, write_label_tiff
from ..weights import describe_model, load_model
from .controller import Correction, FrameWrite, TrackingController
from .labels_writer import next_free_label
from .prompt_layers import (
    add_session_prompts,
    make_points_layer,
    make_shapes_layer,
    read_prompts,
    remove_object_prompts,
    set_prompt_defaults,
)
from .track_target import TargetError, TrackTarget, current_indices, layer_data, leading_axes
from .widget_layout import CUSTOM_CHECKPOINT, FILE_ACTIONS, build_controls

logger = logging.getLogger(__name__)
NEW_LABELS = "(new Labels layer)"

# Shortcut -> (widget method name, what it does); bound on the prompt layers and the output Labels layer.
SHORTCUTS = {
    "T": ("toggle_click_polarity", "switch new clicks between positive (green) and negative (red)"),
    "Shift-N": ("new_object", "new object (next free label)"),
    "Shift-M": ("use_painted_mask", "send the selected object's painted mask on this frame as a prompt"),
    "Shift-F": ("propagate_forward", "propagate forward from this frame"),
    "Shift-B": ("propagate_backward", "propagate backward from this frame"),
    "Shift-A": ("propagate_both", "propagate both ways from this frame"),
    "Shift-C": ("cancel", "cancel the running propagation"),
}


def shortcut_help() -> str:
    return "\n".join(f"{key}: {text}" for key, (_, text) in SHORTCUTS.items())


class SAM2TrackingWidget(QWidget):
    """Dock widget over one :class:`~napari_sam2.TrackingSession` (see the user guide, docs/user-guide.md)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.controller = TrackingController()
        self.points_layer: Points | None = None
        self.shapes_layer: Shapes | None = None
        self._worker: Any = None
        self._prompts_dirty = False
        self._run_state: dict[str, Any] | None = None
        self._old_prompt_layers: list[tuple[Any, Any]] = []  # (image layer, prompt layer) no longer in use
        self._prompt_image: Any = None  # the image layer the current prompt layers belong to
        self._generation = 0  # bumped whenever the target changes: results of older workers are dropped
        build_controls(self)
        self._connect_controls()
        self.setToolTip("Keyboard shortcuts (with a SAM 2 layer selected):\n" + shortcut_help())
        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh_layer_choices)
        layers.events.removed.connect(self._on_layer_removed)
        self._refresh_layer_choices()

    # ================================================================== UI

    def _connect_controls(self) -> None:
        self.load_button.clicked.connect(self._on_load_clicked)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.axis_combo.currentIndexChanged.connect(self._on_axis_changed)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.restart_button.clicked.connect(self.restart_session)
        self.objects.selected_id.connect(self._on_object_selected)
        self.new_object_button.clicked.connect(self.new_object)
        self.remove_object_button.clicked.connect(self.remove_selected_object)
        self.negative_check.toggled.connect(self._on_polarity_toggled)
        self.mask_button.clicked.connect(self.use_painted_mask)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.cancel_button.clicked.connect(self.cancel)
        slots = (self._on_save_session, self._on_load_session, self._on_export_tiff, self._on_export_ctc,
                 self.add_tracks_layer)
        for text, slot in zip(FILE_ACTIONS, slots, strict=True):
            self.file_buttons[text].clicked.connect(slot)

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _fail(self, error: BaseException | str) -> None:
        text = str(error)
        if isinstance(error, BaseException):  # the traceback goes to the log, the message to the user
            logger.error("napari-sam2: %s", text, exc_info=error)
        self._say(f"Error: {text}")
        show_error(text)

    # ================================================================== model

    def _on_load_clicked(self) -> None:
        choice = self.model_combo.currentText()
        if choice == CUSTOM_CHECKPOINT:
            path, _ = QFileDialog.getOpenFileName(self, "SAM 2 checkpoint", "", "PyTorch checkpoint (*.pt *.pth)")
            if not path:
                return
            choice = path
        self.load_model(choice, self.device_combo.currentText())

    def load_model(self, name_or_path: str, device: str = "auto") -> Any:
        """Load a known model (downloaded once, hash-checked) or a checkpoint file in a worker thread."""
        def job() -> Any:
            return load_model(name_or_path, None if device == "auto" else device, verbose=False)

        self._say(f"Loading {name_or_path} (the first time, the weights are downloaded)…")
        return self._start(job, on_return=self.use_model, busy=True)

    def use_model(self, model: Any) -> None:
        """Track with ``model`` (a loaded SAM2Model); a running session is rebuilt with its prompts kept."""
        try:
            self.controller.set_model(model)
        except Exception as error:  # noqa: BLE001 - shown to the user
            self._fail(error)
            return
        self.model_label.setText(describe_model(model))
        self._say("Model ready. Click on an object in the image (SAM 2 clicks layer) to segment it.")
        if self.controller.target is None and self.image_layer is not None:
            self._retarget()  # says why the image cannot be tracked
            return
        self._ensure_layers()
        self._on_prompts_edited()

    # ================================================================== layers

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
        if self.labels_layer is not current:
            self._on_labels_changed()

    @property
    def image_layer(self) -> Image | None:
        return self.image_combo.currentData()

    @property
    def labels_layer(self) -> Labels | None:
        writer = self.controller.writer
        return None if writer is None else writer.layer

    def set_image_layer(self, layer: Image, track_axis: int = 0) -> None:
        """Track ``layer`` along its leading axis ``track_axis`` (0: the first axis, e.g. T of a (T, Z, Y, X) movie)."""
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

    def _retarget(self) -> None:
        """Rebuild the target from the chosen image and axis (the old session ends; layer contents stay)."""
        self._abort_worker()
        layer = self.image_layer
        previous_output = self.labels_layer
        self._generation += 1
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
        self._abort_worker()
        if layer is None:
            layer = self.viewer.add_labels(np.zeros(target.labels_shape, dtype=np.uint16),
                                           name=f"{target.layer.name} SAM 2", scale=target.layer.scale,
                                           translate=target.layer.translate)
            # add_labels re-entered _refresh_labels_choices via the inserted event; select the new layer there.
        try:
            self.controller.set_labels_layer(layer)
        except TargetError as error:
            self._fail(error)
            return None
        index = self.labels_combo.findData(layer)
        if index >= 0 and index != self.labels_combo.currentIndex():
            self.labels_combo.blockSignals(True)
            self.labels_combo.setCurrentIndex(index)
            self.labels_combo.blockSignals(False)
        self.objects.clear()
        self.objects.set_colour_source(layer.get_color)
        if isinstance(layer.data, np.ndarray):
            for obj_id in np.unique(layer.data)[1:].tolist():
                self.objects.add_id(int(obj_id), select=False)
        self._bind_shortcuts(layer)
        if not self.objects.ids:
            self.new_object()
        else:
            self.objects.select_id(self.objects.ids[0])
        return layer

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
            self.viewer.layers.selection.active = self.points_layer
        set_prompt_defaults(self.points_layer, obj_id=obj_id, positive=not self.negative_check.isChecked())
        set_prompt_defaults(self.shapes_layer, obj_id=obj_id)

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

    def _drop_prompt_layers(self) -> None:
        """Stop using the prompt layers (they stay in the viewer, as the user's record of the old session)."""
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None:
                layer.events.data.disconnect(self._on_prompts_edited)
                self._old_prompt_layers.append((self._prompt_image, layer))
        self.points_layer = self.shapes_layer = None

    def restart_session(self) -> Any:
        """Take the image layer's current state: when the viewer now shows another plane of a fixed axis (another Z
        of a 4-D movie, another channel), track that plane (a new session); otherwise rebuild the session with the
        layer's current contrast limits, replaying every prompt (in a worker)."""
        target = self.controller.target
        if self.busy or target is None:
            return None
        here = current_indices(target.layer, self.viewer.dims.point)
        if any(here[axis] != index for axis, index in target.fixed.items()):
            self._retarget()
            return None
        if self.controller.session is None:
            self._say("Nothing to restart yet: the contrast limits are read at the first prompt.")
            return None
        generation = self._generation

        def done(writes: list[FrameWrite]) -> None:
            if generation == self._generation:
                for write in writes:
                    self._write(write)
                low, high = self.controller.target.contrast_limits
                self._say(f"Session restarted with intensities {low:g}..{high:g}; propagate to update other frames.")

        self._say("Restarting the session with the current contrast limits…")
        return self._start(self.controller.restart, on_return=done, busy=True)

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
            self._stale_run()
            self.controller.set_labels_layer(None)
            self._say("The output Labels layer was removed; pick or create another one to go on.")
        self._refresh_layer_choices()
        if target is not None and removed is target.layer:
            self._say("The image layer was removed; its session ended. Pick another image to go on.")

    def _bind_shortcuts(self, layer: Any) -> None:
        """Bind every key of SHORTCUTS on ``layer`` to its widget method."""
        for key, (method, _) in SHORTCUTS.items():
            layer.bind_key(key, self._shortcut(method), overwrite=True)

    def _shortcut(self, method: str) -> Callable[[Any], None]:
        def run(_layer: Any) -> None:
            getattr(self, method)()
        return run

    # ================================================================== objects

    def new_object(self) -> int:
        """Add an object with the next free label and make it the current one (Shift-N)."""
        layer = self.labels_layer
        next_id = max(next_free_label(layer) if layer is not None else 1, max(self.objects.ids, default=0) + 1)
        self.objects.add_id(next_id)
        return next_id

    def remove_selected_object(self) -> None:
        """Remove the current object: its prompts, its results in the session, and its pixels (one undo step)."""
        obj_id = self.objects.current_id
        if obj_id is None or self.busy:
            return
        self.controller.remove_object(obj_id)
        remove_object_prompts(self.points_layer, obj_id)
        remove_object_prompts(self.shapes_layer, obj_id)
        layer = self.labels_layer
        if layer is not None:
            where = np.nonzero(np.asarray(layer.data) == obj_id)
            if where[0].size:
                layer.data_setitem(where, 0)
        self.objects.remove_id(obj_id)
        self._say(f"Removed object {obj_id}.")

    def _on_object_selected(self, obj_id: int) -> None:
        self._ensure_layers()  # brings back a prompt layer the user removed
        set_prompt_defaults(self.points_layer, obj_id=obj_id)
        set_prompt_defaults(self.shapes_layer, obj_id=obj_id)
        if self.labels_layer is not None:
            self.labels_layer.selected_label = obj_id

    def toggle_click_polarity(self) -> None:
        """Switch new clicks between positive and negative (T)."""
        self.negative_check.setChecked(not self.negative_check.isChecked())

    def _on_polarity_toggled(self, negative: bool) -> None:
        set_prompt_defaults(self.points_layer, positive=not negative)

    # ================================================================== prompts

    @property
    def busy(self) -> bool:
        """True while a model job (loading, a prompt, a propagation) runs."""
        return self._worker is not None

    @property
    def idle(self) -> bool:
        """True when no job runs and every prompt given so far has been sent (scripts wait for this)."""
        return self._worker is None and not self._prompts_dirty

    def current_frame(self) -> int:
        """The frame of the tracked axis the viewer shows now."""
        target = self.controller.target
        if target is None:
            raise RuntimeError("no image to track: choose an image layer")
        index = current_indices(target.layer, self.viewer.dims.point)[target.track_axis]
        return min(index, target.num_frames - 1)

    def _on_prompts_edited(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.lower().endswith("ing"):  # adding / removing / changing: wait for the final event
            return
        self._prompts_dirty = True
        QTimer.singleShot(0, self._pump)

    def _pump(self) -> None:
        """Send the next changed (frame, object) prompt to the model, one at a time."""
        if self.busy or not self._prompts_dirty:
            return
        target = self.controller.target
        if target is None or self.controller.model is None or self.labels_layer is None:
            self._prompts_dirty = False  # re-read once a model, an image and an output layer are set
            return
        changes = self.controller.changed_prompts(read_prompts(target, self.points_layer, self.shapes_layer))
        if not changes:
            self._prompts_dirty = False
            return
        key, prompts = changes[0]
        for obj_id in {k[1] for k, _ in changes}:
            self.objects.add_id(obj_id, select=False)
        self._say(f"Computing the mask of object {key[1]} on frame {key[0]}…")
        generation = self._generation

        def done(write: FrameWrite) -> None:
            if generation == self._generation:
                self._write(write)
                self._say(f"Object {key[1]} on frame {key[0]}: mask updated. Add clicks, or propagate.")

        self._start(self.controller.compute_prompt, key, prompts, on_return=done, busy=True)

    def use_painted_mask(self) -> None:
        """Send the current object's painted pixels on this frame as a mask prompt (Shift-M)."""
        obj_id = self.objects.current_id
        if obj_id is None or self.busy:
            return
        try:
            correction = self.controller.painted_mask(self.current_frame(), obj_id)
        except (RuntimeError, ValueError) as error:
            self._fail(error)
            return
        self._send_masks([correction])

    def _send_masks(self, corrections: list[Correction]) -> None:
        generation = self._generation

        def done(writes: list[FrameWrite]) -> None:
            if generation == self._generation:
                for write in writes:
                    self._write(write)
                self._say(f"Mask prompt used for {_describe_corrections(corrections)}.")

        self._start(self.controller.compute_masks, corrections, on_return=done, busy=True)

    def _write(self, write: FrameWrite) -> None:
        try:
            self.controller.apply(write)
        except (RuntimeError, ValueError) as error:
            self._fail(error)

    # ================================================================== propagation

    def propagate_forward(self) -> None:
        self.propagate("forward")

    def propagate_backward(self) -> None:
        self.propagate("backward")

    def propagate_both(self) -> None:
        self.propagate("both")

    def propagate(self, direction: str | None = None, start: int | None = None, first: int | None = None,
                  last: int | None = None) -> Any:
        """Track every object from ``start`` (default: the current frame) over frames ``first..last`` (default: the
        range boxes), writing each frame as it comes; painted corrections become mask prompts first. Returns the
        worker (None when nothing was started)."""
        if self.busy:
            self._say("Busy; wait for the current job or cancel it.")
            return None
        direction = direction or self.direction_combo.currentText()
        try:
            if self.labels_layer is None:
                raise RuntimeError("no output Labels layer; pick or create one")
            start = self.current_frame() if start is None else int(start)
            first = self.first_spin.value() if first is None else int(first)
            last = self.last_spin.value() if last is None else int(last)
            if not first <= start <= last:
                raise ValueError(f"the start frame {start} is outside the chosen range {first}..{last}")
            session = self.controller.ensure_session()
        except (RuntimeError, ValueError) as error:
            self._fail(error)
            return None
        corrections = self.controller.collect_corrections(self.objects.ids)
        prompted = [i for i in session.obj_ids if session.prompted_frames(i)]
        if not prompted and not corrections:
            self._fail("nothing to track yet: click on an object, draw a box or paint a mask first")
            return None
        if corrections:
            note = f"Painted corrections used as prompts: {_describe_corrections(corrections)}."
            show_info(note)
        else:
            note = ""
        total = len(corrections) + self.controller.frames_in_run(start, direction, first, last)
        controller = self.controller

        def job() -> Iterator[tuple[str, Any]]:
            for write in controller.compute_masks(corrections):
                yield "mask", write
            for write in controller.propagation(start, direction, first, last):
                yield "frame", write

        span = range(start, last + 1) if direction == "forward" else range(first, start + 1)
        if direction == "both":
            span = range(first, last + 1)
        self._run_state = {"done": 0, "total": total, "t0": time.perf_counter(), "note": note, "frames": set(),
                           "range_frames": len(span),
                           "generation": self._generation}
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.labels_layer.mode = "pan_zoom"  # keep the brush away while frames are written (see LabelsWriter)
        self.controller.writer.begin_undo_group()
        self.cancel_button.setEnabled(True)
        self._say(f"{note} Propagating {direction} from frame {start}…".strip())
        return self._start(job, on_yield=self._on_run_frame, busy=False, then=self._end_run)

    def _on_run_frame(self, item: tuple[str, FrameWrite]) -> None:
        state = self._run_state
        if state is None or state["generation"] != self._generation:
            return
        _, write = item
        self._write(write)
        state["done"] += 1
        if item[0] == "frame":
            state["frames"].add(write.frame)
        done, total = state["done"], state["total"]
        elapsed = time.perf_counter() - state["t0"]
        eta = elapsed / done * (total - done)
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total} steps, ETA {eta:.0f} s")
        if self.follow_check.isChecked():
            target = self.controller.target
            world_axis = self.viewer.dims.ndim - target.layer.ndim + target.track_axis
            self.viewer.dims.set_current_step(world_axis, write.frame)

    def _end_run(self) -> None:
        state, self._run_state = self._run_state, None
        self.cancel_button.setEnabled(False)
        writer = self.controller.writer
        if writer is not None and writer.in_undo_group:
            writer.end_undo_group()
        if state is not None and state["generation"] == self._generation and not self.status.text().startswith("Error"):
            word = "Cancelled" if state.get("cancelled") else "Done"
            self._say(f"{state['note']} {word}: {len(state['frames'])} of {state['range_frames']} frames written "
                      f"in {time.perf_counter() - state['t0']:.1f} s.".strip())

    def cancel(self) -> None:
        """Stop the running propagation after the frame being computed; frames written so far stay (Shift-C)."""
        if self._run_state is not None and self._worker is not None:
            self._run_state["cancelled"] = True
            self._worker.quit()
            self._say("Cancelling after the current frame…")

    # ================================================================== workers

    def _start(self, func: Callable, *args: Any, on_return: Callable | None = None,
               on_yield: Callable | None = None, busy: bool = False, then: Callable | None = None) -> Any:
        """Run ``func`` in a napari worker thread (one at a time); ``then`` runs in the GUI thread afterwards."""
        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)  # errors go to _fail
        self._worker = worker
        if busy:
            self.progress.setRange(0, 0)  # an indeterminate bar is the busy indicator
        self.propagate_button.setEnabled(False)
        if on_return is not None:
            worker.returned.connect(on_return)
        if on_yield is not None:
            worker.yielded.connect(on_yield)
        worker.errored.connect(self._fail)

        def finished() -> None:
            if self._worker is worker:
                self._worker = None
            if busy:
                self.progress.setRange(0, 1)
                self.progress.setValue(1)
                self.progress.setFormat("%p%")
            self.propagate_button.setEnabled(True)
            if then is not None:
                then()
            QTimer.singleShot(0, self._pump)  # prompts the user gave meanwhile

        worker.finished.connect(finished)
        worker.start()
        return worker

    def _abort_worker(self) -> None:
        """Stop a running job whose target is going away (its results will be dropped)."""
        if self._worker is not None:
            self._worker.quit()
            self._stale_run()

    def _stale_run(self) -> None:
        """Stop a running propagation and drop the frames still on their way (their layer or target is gone)."""
        if self._run_state is not None:
            self._run_state["cancelled"] = True
            self._run_state["generation"] = None
            if self._worker is not None:
                self._worker.quit()

    # ================================================================== files

    def save_session(self, path: str | Path) -> Path:
        """Save every object's prompts to a session file (JSON)."""
        if self.controller.session is None:
            raise RuntimeError("nothing to save yet: give a prompt first")
        return self.controller.session.save(path)

    def load_session(self, path: str | Path) -> Any:
        """Re-create a saved session on the current image (same shape) and write its prompted frames."""
        controller = self.controller
        if controller.model is None or controller.target is None or self.labels_layer is None:
            raise RuntimeError("load a model and pick the image (and output layer) before loading a session")
        generation = self._generation

        def done(writes: list[FrameWrite]) -> None:
            if generation != self._generation:
                return
            session = controller.session
            for write in writes:
                self._write(write)
            for obj_id in session.obj_ids:
                self.objects.add_id(obj_id, select=False)
            current = self.objects.current_id or 1
            add_session_prompts(session, self.controller.target, self.points_layer, self.shapes_layer)
            set_prompt_defaults(self.points_layer, obj_id=current, positive=not self.negative_check.isChecked())
            set_prompt_defaults(self.shapes_layer, obj_id=current)
            self.controller.mark_prompts_sent(read_prompts(self.controller.target, self.points_layer,
                                                           self.shapes_layer))
            self._prompts_dirty = False
            low, high = session.source.mapping.low, session.source.mapping.high
            self._say(f"Session loaded: objects {session.obj_ids}, intensities {low:g}..{high:g} as saved. "
                      "Propagate to track them.")

        return self._start(controller.load_session, path, on_return=done, busy=True)

    def _label_stack(self) -> Any:
        writer = self.controller.writer
        if writer is None:
            raise RuntimeError("no output Labels layer to export")
        return writer.tracked_planes()

    def export_tiff(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the output Labels layer's tracked plane, (T, Y, X), as an OME-TIFF."""
        return write_label_tiff(path, self._label_stack(), overwrite=overwrite)

    def export_ctc(self, directory: str | Path, overwrite: bool = False) -> list:
        """Write the output Labels layer's tracked plane as a Cell Tracking Challenge result folder."""
        return write_ctc(directory, self._label_stack(), overwrite=overwrite)

    def add_tracks_layer(self) -> Any:
        """Add a napari Tracks layer with each object's centroid (row, col) per frame."""
        try:
            data = tracks_from_labels(self._label_stack())
        except RuntimeError as error:
            self._fail(error)
            return None
        target = self.controller.target
        if not len(data):
            self._fail("the output Labels layer is empty: nothing to track")
            return None
        scale = np.asarray(target.layer.scale)
        keep = [target.track_axis, target.layer.ndim - 2, target.layer.ndim - 1]
        return self.viewer.add_tracks(data, name=f"{self.labels_layer.name} tracks", scale=scale[keep])

    def _on_save_session(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", "session.json", "Session (*.json)")
        if path:
            self._guarded(lambda: self._say(f"Session saved to {self.save_session(path)}."))

    def _on_load_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load session", "", "Session (*.json)")
        if path:
            self._guarded(lambda: self.load_session(path))

    def _on_export_tiff(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export labels as TIFF", "labels.ome.tif", "TIFF (*.tif *.tiff)")
        if path:
            self._guarded(lambda: self._say(f"Labels written to {self.export_tiff(path, overwrite=True)}."))

    def _on_export_ctc(self) -> None:
        directory = QFileDialog.getExistingDirectory(self, "Export a Cell Tracking Challenge result folder")
        if directory:
            self._guarded(lambda: self._say(f"{len(self.export_ctc(directory, overwrite=True))} tracks written "
                                            f"to {directory}."))

    def _guarded(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as error:  # noqa: BLE001 - file errors are shown, not raised into Qt
            self._fail(error)

    def closeEvent(self, event: Any) -> None:
        self._abort_worker()
        self.controller.set_labels_layer(None)
        super().closeEvent(event)


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


def _describe_corrections(corrections: list[Correction]) -> str:
    per_object: dict[int, list[int]] = {}
    for c in corrections:
        per_object.setdefault(c.obj_id, []).append(c.frame)
    return "; ".join(f"object {obj_id} on frame{'s' if len(frames) > 1 else ''} {', '.join(map(str, frames))}"
                     for obj_id, frames in sorted(per_object.items()))
