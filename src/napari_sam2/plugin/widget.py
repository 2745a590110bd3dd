"""The "SAM 2 tracking" dock widget: click, see, propagate, correct, export.

Axis order and coordinates are napari's: the image layer's leading axes (e.g. (T,), (T, Z), (Z,)), then
(row, col) = (y, x). All model work goes through one :class:`~napari_sam2.plugin.job_runner.JobRunner`: one job at a
time, in a napari worker thread, on the session; only the GUI thread writes layers (through the
:class:`~napari_sam2.plugin.labels_writer.LabelsWriter`, so Undo works and the user's edits are kept), and only for a
job that is still current. The pieces: :mod:`.widget_layers` (which layers), :mod:`.widget_objects` (the object list:
find, jump, show / hide), :mod:`.widget_run` (propagation), :mod:`.widget_population` (segment all, seed from labels),
:mod:`.widget_files` (sessions, exports, the Tracks layer), :mod:`.widget_lineage` (division proposals, manual
division, link / unlink), :mod:`.dwell` (encoding ahead while the viewer rests on a frame).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.layers import Points, Shapes
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import QFileDialog, QSizePolicy, QWidget

from ..device import mps_fallback_status
from ..weights import describe_model, load_model, needs_download
from .controller import Correction, FrameWrite, TrackingController
from .dwell import DwellPrecompute
from .job_runner import Job, JobEnd, JobRunner
from .messages import log_error
from .prompt_layers import read_prompts, set_prompt_defaults
from .track_target import current_indices
from .widget_files import FileActions
from .widget_layers import LayerBinding
from .widget_layout import CUSTOM_CHECKPOINT, FILE_ACTIONS, build_controls
from .widget_lineage import LineageActions
from .widget_objects import ObjectActions
from .widget_population import PopulationActions
from .widget_run import RunActions, describe_frames

# Shortcut -> (widget method name, what it does); bound on the prompt layers and the output Labels layer, except
# those of LAYER_KEYS_KEPT (napari's own there).
SHORTCUTS = {
    "T": ("toggle_click_polarity", "switch new clicks between positive (green) and negative (red)"),
    "Shift-N": ("new_object", "new object (next free label)"),
    "Shift-M": ("use_painted_mask", "send the selected object's painted mask on this frame as a prompt"),
    "Shift-F": ("propagate_forward", "propagate forward from this frame"),
    "Shift-B": ("propagate_backward", "propagate backward from this frame"),
    "Shift-A": ("propagate_both", "propagate both ways from this frame"),
    "Shift-C": ("cancel", "cancel the running propagation"),
    "Escape": ("cancel_division", "cancel the division under way (Divide here)"),
}
# Keys napari binds itself on some layers (Escape: finish a shape, reset a Labels polygon): bound only on the clicks
# (Points) layer, where the daughters of a manual division are clicked, and on the widget itself.
LAYER_KEYS_KEPT = ("Escape",)
WIDGET_WIDTH = 330  # pixels: narrow enough to leave the canvas its right side on a laptop screen


def shortcut_help() -> str:
    return "\n".join(f"{key}: {text}" for key, (_, text) in SHORTCUTS.items())


class SAM2TrackingWidget(LayerBinding, ObjectActions, RunActions, PopulationActions, FileActions, LineageActions,
                         QWidget):
    """Dock widget over one :class:`~napari_sam2.TrackingSession` (see the user guide, docs/user-guide.md)."""

    frame_written = Signal(int)  # a propagation wrote this frame (index along the tracked axis)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.controller = TrackingController()
        self.runner = JobRunner(self)
        self.points_layer: Points | None = None
        self.shapes_layer: Shapes | None = None
        self._prompts_dirty = False
        self._retarget_pending = False
        self._run = None
        self._old_prompt_layers: list[tuple[Any, Any]] = []  # (image layer, prompt layer) no longer in use
        self._prompt_image: Any = None  # the image layer the current prompt layers belong to
        self.visibility: Any = None  # the output layer's LabelVisibility (which objects are hidden)
        self._seeding: Any = None  # the running segment-all / seed-from-labels job's state (widget_population)
        self.segment_options: Any = None  # AutomaticMaskOptions of "Segment all" (None: the engine's defaults)
        self.division_options: Any = None  # DivisionOptions of propagations (None: the engine's defaults)
        self._init_lineage()
        build_controls(self)
        self.setMaximumWidth(WIDGET_WIDTH)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Preferred)
        self._connect_controls()
        self._bind_widget_shortcuts()
        self.setToolTip("Keyboard shortcuts (with a SAM 2 layer selected):\n" + shortcut_help())
        self.dwell = DwellPrecompute(self)
        self.runner.changed.connect(self._on_runner_changed)
        self.runner.callback_failed.connect(self._fail)
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
        self._connect_object_controls()
        self._connect_lineage_controls()
        self.segment_all_button.clicked.connect(lambda: self.segment_all())
        self.seed_labels_button.clicked.connect(lambda: self.seed_from_labels())
        self.negative_check.toggled.connect(self._on_polarity_toggled)
        self.mask_button.clicked.connect(self.use_painted_mask)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.cancel_button.clicked.connect(self.cancel)
        slots = (self._on_save_session, self._on_load_session, self._on_export_tiff, self._on_export_ctc,
                 self._on_export_geff, self.add_tracks_layer)
        for text, slot in zip(FILE_ACTIONS, slots, strict=True):
            self.file_buttons[text].clicked.connect(slot)

    def _say(self, text: str, details: str = "") -> None:
        self.status.setText(text)
        self.status.setToolTip(details)

    def _fail(self, error: BaseException | str) -> None:
        """Tell the user: one line in the status (details in its tooltip) and a notification; the log gets one
        line for a user's mistake, the traceback for a bug."""
        message = log_error(error)
        self._say(f"Error: {message.short}", message.details)
        show_error(message.short)

    def _submit(self, job: Job, busy: bool = False) -> Job:
        """Hand ``job`` to the runner; ``busy`` shows the indeterminate bar while it runs."""
        if busy:
            self.progress.setRange(0, 0)
        return self.runner.submit(job)

    def _reset_progress(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")

    def _end_busy_job(self, end: JobEnd) -> None:
        """End of a job that showed the busy bar: the bar goes back to empty (unless a job it started goes on); a
        failure is reported."""
        if not self.runner.working:
            self._reset_progress()
        self._end_prompt_job(end)

    def _refuse_while_working(self, what: str) -> bool:
        """True (and the status says why) while a job uses the session or the target is being switched."""
        if self.runner.working or self._retarget_pending:
            self._say(f"Busy ({self.runner.running_name or 'switching the image'}); {what} once it has finished.")
            return True
        return False

    def _write_all(self, writes: list[FrameWrite]) -> None:
        """Write several frames as one undo step."""
        writer = self.controller.writer
        if writer is None:
            return
        with writer.one_undo_step():
            for write in writes:
                self._write(write)

    def _on_runner_changed(self) -> None:
        for button in (self.propagate_button, self.segment_all_button, self.seed_labels_button):
            button.setEnabled(not self.runner.busy)
        if not self.runner.busy and self._prompts_dirty:
            QTimer.singleShot(0, self._pump)  # prompts the user gave meanwhile

    # ================================================================== model

    def _on_load_clicked(self) -> None:
        choice = self.model_combo.currentText()
        if choice == CUSTOM_CHECKPOINT:
            path, _ = QFileDialog.getOpenFileName(self, "SAM 2 checkpoint", "", "PyTorch checkpoint (*.pt *.pth)")
            if not path:
                return
            choice = path
        self.load_model(choice, self.device_combo.currentText())

    def load_model(self, name_or_path: str, device: str = "auto") -> Job:
        """Load a known model (downloaded once, hash-checked) or a checkpoint file in a worker thread; a running job
        is stopped first. The session, if any, is then rebuilt on the new model with every prompt (see use_model)."""
        self._say(f"Loading {name_or_path}…")

        def work(_context: Any):
            if needs_download(name_or_path):  # (hashes a cached file once: in the worker, not the GUI thread)
                yield f"Loading {name_or_path} (first time: downloading the weights, hash-checked)…"
            return load_model(name_or_path, None if device == "auto" else device, verbose=False)

        # The load does not use the session: it waits for a running job and survives a change of image or output.
        return self._submit(Job("model load", work, on_item=self._say, on_result=self.use_model,
                                on_end=self._end_busy_job, survives_retire=True), busy=True)

    def use_model(self, model: Any) -> None:
        """Track with ``model`` (a loaded SAM2Model). A running session is rebuilt on it in a worker, every prompt
        replayed; until that has finished the old model and session stay (``idle`` tells when)."""
        controller = self.controller
        if controller.session is None:
            controller.model = model
            self._model_ready()
            return
        self.runner.retire()
        old, dtype = controller.session, controller.label_dtype
        self._say("Replaying every prompt on the new model…")

        def done(result: Any) -> None:
            controller.model, (controller.session, writes) = model, result
            self._write_all(writes)
            self.refresh_lineage()
            self._model_ready()

        def end(result: JobEnd) -> None:
            if result.status == "cancelled" and controller.session is not old:  # the target changed meanwhile:
                controller.model = model  # its new session is made with the new model
                self._model_ready()
            self._end_busy_job(result)

        self._submit(Job("model replay", lambda _: controller.replayed(old, model, dtype), on_result=done, on_end=end),
                     busy=True)

    def _model_ready(self) -> None:
        self.model_label.setText(describe_model(self.controller.model))
        warning = ""
        if getattr(self.controller.model, "source", "") is None:
            warning = " It has RANDOM weights: its masks are meaningless shapes (load a known model for real ones)."
        mps = mps_fallback_status(self.controller.model.device)
        if mps:
            warning += f" {mps}."
        self._say(f"Model ready. Click on an object in the image (SAM 2 clicks layer) to segment it.{warning}")
        if self.controller.target is None and self.image_layer is not None:
            self._retarget()  # says why the image cannot be tracked
            return
        self._ensure_layers()
        self._on_prompts_edited()

    def restart_session(self) -> Job | None:
        """Take the image layer's current state: when the viewer now shows another plane of a fixed axis (another Z
        of a 4-D movie, another channel), track that plane (a new session); otherwise rebuild the session with the
        layer's current contrast limits, replaying every prompt (in a worker)."""
        target = self.controller.target
        if target is None or self._refuse_while_working("restart"):
            return None
        here = current_indices(target.layer, self.viewer.dims.point)
        if any(here[axis] != index for axis, index in target.fixed.items()):
            self._retarget()
            return None
        controller = self.controller
        if controller.session is None:
            self._say("Nothing to restart yet: the contrast limits are read at the first prompt.")
            return None
        self.runner.retire()
        target.refresh_contrast()
        old, model, dtype = controller.session, controller.model, controller.label_dtype

        def done(result: Any) -> None:
            controller.session, writes = result
            self._write_all(writes)
            self.refresh_lineage()
            low, high = target.contrast_limits
            self._say(f"Session restarted with intensities {low:g}..{high:g}; propagate to update other frames.")

        self._say("Restarting the session with the current contrast limits…")
        return self._submit(Job("restart", lambda _: controller.replayed(old, model, dtype), on_result=done,
                                on_end=self._end_busy_job), busy=True)

    # ================================================================== objects

    def toggle_click_polarity(self) -> None:
        """Switch new clicks between positive and negative (T)."""
        self.negative_check.setChecked(not self.negative_check.isChecked())

    def _on_polarity_toggled(self, negative: bool) -> None:
        set_prompt_defaults(self.points_layer, positive=not negative)

    def _bind_shortcuts(self, layer: Any) -> None:
        """Bind the keys of SHORTCUTS on ``layer`` to their widget methods (those of LAYER_KEYS_KEPT on the clicks
        layer only: napari's own stay on the Shapes and Labels layers)."""
        for key, (method, _) in SHORTCUTS.items():
            if key not in LAYER_KEYS_KEPT or isinstance(layer, Points):
                layer.bind_key(key, self._shortcut(method), overwrite=True)

    def _bind_widget_shortcuts(self) -> None:
        """Keys of LAYER_KEYS_KEPT also act while the dock widget has the focus."""
        for key in LAYER_KEYS_KEPT:
            method = SHORTCUTS[key][0]
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(getattr(self, method))

    def _shortcut(self, method: str) -> Callable[[Any], None]:
        def run(_layer: Any) -> None:
            getattr(self, method)()
        return run

    # ================================================================== prompts

    @property
    def busy(self) -> bool:
        """True while a model job (loading, a prompt, a propagation, a replay) runs or waits."""
        return self.runner.busy

    @property
    def idle(self) -> bool:
        """True when no job runs or waits (encoding ahead included), every prompt given so far has been sent, no
        re-targeting is pending and the viewer has not just moved to a frame that will be encoded ahead (scripts and
        tests wait for this)."""
        return (self.runner.idle and not self._prompts_dirty and not self._retarget_pending
                and not self.dwell.pending)

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
        self.runner.cancel_speculative()
        QTimer.singleShot(0, self._pump)

    def _pump(self) -> None:
        """Send the next changed (frame, object) prompt to the model, one job at a time."""
        if self.runner.busy or self._retarget_pending or not self._prompts_dirty:
            return
        controller = self.controller
        target = controller.target
        if target is None or controller.model is None or self.labels_layer is None:
            self._prompts_dirty = False  # re-read once a model, an image and an output layer are set
            return
        changes = controller.changed_prompts(read_prompts(target, self.points_layer, self.shapes_layer))
        if not changes:
            self._prompts_dirty = False
            return
        key, prompts = changes[0]
        for obj_id in {k[1] for k, _ in changes}:
            self.objects.add_id(obj_id, select=False)
        try:
            session = controller.ensure_session()
        except RuntimeError as error:
            self._prompts_dirty = False
            self._fail(error)
            return
        previous = controller.note_sent(key, prompts)
        dtype = controller.label_dtype
        frame, obj_id = key
        self._say(f"Computing the mask of object {obj_id} on frame {frame}…")

        def done(write: FrameWrite) -> None:
            writer = controller.writer
            painted = writer is not None and bool(writer.edited_ids(frame, [obj_id]))
            self._write(write)
            note = (" It replaced your painting of that object there (Undo in the Labels layer brings it back)."
                    if painted else " Add clicks, or propagate.")
            self._say(f"Object {obj_id} on frame {frame}: mask updated.{note}")
            self._after_prompt(frame, obj_id)  # (a manual division waits for its daughters' masks)

        def end(result: JobEnd) -> None:
            if not result.started:  # dropped before it ran: the prompt is still to be sent (to the next session)
                controller.restore_sent(key, previous)
                self._prompts_dirty = True
            self._end_prompt_job(result)

        self._submit(Job("click", lambda _: controller.compute_prompt(session, key, prompts, dtype),
                         on_result=done, on_end=end))

    def _end_prompt_job(self, end: JobEnd) -> None:
        """End of a job: a failure of a still current job is reported."""
        if end.status == "failed" and end.current:
            self._fail(end.error)

    def use_painted_mask(self) -> Job | None:
        """Send the current object's painted pixels on this frame as a mask prompt (Shift-M); the painting stays
        pending until the model has taken it."""
        obj_id = self.objects.current_id
        if obj_id is None or self._refuse_while_working("send the painted mask"):
            return None
        try:
            correction = self.controller.painted_mask(self.current_frame(), obj_id)
            session = self.controller.ensure_session()
        except (RuntimeError, ValueError) as error:
            self._fail(error)
            return None
        return self._send_masks(session, [correction])

    def _send_masks(self, session: Any, corrections: list[Correction]) -> Job:
        controller, dtype = self.controller, self.controller.label_dtype

        def done(writes: list[FrameWrite]) -> None:
            self._write_all(writes)
            self._say(f"Mask prompt used for {describe_frames({c.obj_id: {c.frame} for c in corrections})}.")
            for correction in corrections:
                self._after_prompt(correction.frame, correction.obj_id)

        return self._submit(Job("painted mask", lambda _: list(controller.mask_writes(session, corrections, dtype)),
                                on_result=done, on_end=self._end_prompt_job))

    def _write(self, write: FrameWrite) -> list[int]:
        """Write a result (GUI thread); the objects left as the user edited them."""
        try:
            return self.controller.apply(write)
        except (RuntimeError, ValueError) as error:
            self._fail(error)
            return []

    def closeEvent(self, event: Any) -> None:
        self.runner.retire()
        self.dwell.close()
        self.viewer.layers.events.inserted.disconnect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self.controller.set_labels_layer(None)
        if self.visibility is not None:
            self.visibility.close()
        super().closeEvent(event)
