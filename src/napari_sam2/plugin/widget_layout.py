"""The dock widget's controls and their layout (no behaviour: :mod:`.widget` connects them)."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..weights import DEFAULT_MODEL, KNOWN_MODELS
from .object_list import ObjectList

CUSTOM_CHECKPOINT = "custom checkpoint…"
DIRECTIONS = ("forward", "backward", "both")
FILE_ACTIONS = ("Save session", "Load session", "TIFF", "CTC", "Tracks layer")


def build_controls(widget: Any) -> None:
    """Create every control as an attribute of ``widget`` (model_combo, image_combo, objects, progress, status, ...)
    and lay them out in group boxes; ``widget.file_buttons`` maps each of FILE_ACTIONS to its button."""
    layout = QVBoxLayout(widget)

    model_box = QGroupBox("Model")
    form = QFormLayout(model_box)
    widget.model_combo = QComboBox()
    widget.model_combo.addItems(list(KNOWN_MODELS) + [CUSTOM_CHECKPOINT])
    widget.model_combo.setCurrentText(DEFAULT_MODEL)
    widget.device_combo = QComboBox()
    widget.device_combo.addItems(available_devices())
    widget.load_button = QPushButton("Load model")
    widget.model_label = QLabel("no model loaded")
    widget.model_label.setWordWrap(True)
    form.addRow("Model", widget.model_combo)
    form.addRow("Device", widget.device_combo)
    form.addRow(widget.load_button)
    form.addRow(widget.model_label)
    layout.addWidget(model_box)

    data_box = QGroupBox("Data")
    form = QFormLayout(data_box)
    widget.image_combo = QComboBox()
    widget.axis_combo = QComboBox()
    widget.labels_combo = QComboBox()
    widget.target_label = QLabel("")
    widget.target_label.setWordWrap(True)
    form.addRow("Image", widget.image_combo)
    form.addRow("Track along", widget.axis_combo)
    form.addRow("Output", widget.labels_combo)
    widget.restart_button = QPushButton("Restart session (current contrast / plane)")
    widget.restart_button.setToolTip("Take the image layer as it is now: its contrast limits (every prompt is "
                                     "recomputed), or the plane the viewer shows of a 4-D or multichannel image.")
    form.addRow(widget.target_label)
    form.addRow(widget.restart_button)
    layout.addWidget(data_box)

    obj_box = QGroupBox("Objects and prompts")
    box_layout = QVBoxLayout(obj_box)
    widget.objects = ObjectList()
    row = QHBoxLayout()
    widget.new_object_button = QPushButton("New object")
    widget.remove_object_button = QPushButton("Remove object")
    row.addWidget(widget.new_object_button)
    row.addWidget(widget.remove_object_button)
    widget.negative_check = QCheckBox("Negative clicks (T)")
    widget.mask_button = QPushButton("Use painted mask on this frame")
    widget.mask_button.setToolTip("Send what you painted for the selected object on the current frame as a "
                                  "mask prompt (Shift-M). Painted corrections are also picked up before propagating.")
    box_layout.addWidget(widget.objects)
    box_layout.addLayout(row)
    box_layout.addWidget(widget.negative_check)
    box_layout.addWidget(widget.mask_button)
    layout.addWidget(obj_box)

    run_box = QGroupBox("Propagate")
    form = QFormLayout(run_box)
    widget.direction_combo = QComboBox()
    widget.direction_combo.addItems(DIRECTIONS)
    widget.first_spin = QSpinBox()
    widget.last_spin = QSpinBox()
    range_row = QHBoxLayout()
    range_row.addWidget(widget.first_spin)
    range_row.addWidget(QLabel("to"))
    range_row.addWidget(widget.last_spin)
    widget.follow_check = QCheckBox("Follow the frames")
    widget.follow_check.setChecked(True)
    widget.propagate_button = QPushButton("Propagate from this frame")
    widget.cancel_button = QPushButton("Cancel")
    widget.cancel_button.setEnabled(False)
    widget.progress = QProgressBar()
    widget.progress.setTextVisible(True)
    widget.progress.setRange(0, 1)
    widget.progress.setValue(0)
    form.addRow("Direction", widget.direction_combo)
    form.addRow("Frames", range_row)
    form.addRow(widget.follow_check)
    buttons = QHBoxLayout()
    buttons.addWidget(widget.propagate_button)
    buttons.addWidget(widget.cancel_button)
    form.addRow(buttons)
    form.addRow(widget.progress)
    layout.addWidget(run_box)

    file_box = QGroupBox("Session and export")
    grid = QHBoxLayout(file_box)
    widget.file_buttons = {}
    for text in FILE_ACTIONS:
        widget.file_buttons[text] = QPushButton(text)
        grid.addWidget(widget.file_buttons[text])
    layout.addWidget(file_box)

    widget.status = QLabel("Load a model, pick an image, then click on a cell.")
    widget.status.setWordWrap(True)
    layout.addWidget(widget.status)
    layout.addStretch(1)

def available_devices() -> list[str]:
    """Device choices: auto (CUDA, then MPS, then CPU), cpu, and cuda / mps where present."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices
