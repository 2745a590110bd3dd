"""The dock widget's controls and their layout (no behaviour: :mod:`.widget` connects them)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine.divisions import DIVISION_MODES
from ..weights import DEFAULT_MODEL, KNOWN_MODELS
from .division_review import DivisionReview
from .object_list import ObjectList

CUSTOM_CHECKPOINT = "custom checkpoint…"
DIRECTIONS = ("forward", "backward", "both")
DIVISION_CHOICES = DIVISION_MODES  # the engine's divisions= modes (propose: listed for review)
FILE_ACTIONS = ("Save session", "Load session", "TIFF", "CTC", "GEFF", "Tracks layer")


def build_controls(widget: Any) -> None:
    """Create every control as an attribute of ``widget`` (model_combo, image_combo, objects, progress, status, ...)
    and lay them out in group boxes, in a vertical scroll area (``widget.scroll``: the dock fits a short screen) with
    the status line below it, always in view; ``widget.file_buttons`` maps each of FILE_ACTIONS to its button."""
    w = widget
    w.model_combo = _combo(list(KNOWN_MODELS) + [CUSTOM_CHECKPOINT], DEFAULT_MODEL)
    w.device_combo = _combo(available_devices())
    w.load_button = QPushButton("Load model")
    w.model_label = _text("no model loaded")

    w.image_combo, w.axis_combo, w.labels_combo = _narrow_combo(), _narrow_combo(), _narrow_combo()
    w.target_label = _text("")
    w.restart_button = QPushButton("Restart session (current contrast / plane)")
    w.restart_button.setToolTip("Take the image layer as it is now: its contrast limits (every prompt is "
                                "recomputed), or the plane the viewer shows of a 4-D or multichannel image.")

    w.objects = ObjectList()
    w.objects.setToolTip("Tick or untick an object to show or hide it in the output Labels layer.")
    w.find_edit = QLineEdit()
    w.find_edit.setPlaceholderText("Find object id…")
    w.find_edit.setClearButtonEnabled(True)
    w.find_edit.setToolTip("Lists only the ids starting with these digits; Enter selects that object.")
    w.previous_frame_button = QPushButton("◀ Frame")
    w.previous_frame_button.setToolTip("Go to the previous frame where the selected object has a mask or a prompt.")
    w.next_frame_button = QPushButton("Frame ▶")
    w.next_frame_button.setToolTip("Go to the next frame where the selected object has a mask or a prompt.")
    w.solo_check = QCheckBox("Only this one")
    w.solo_check.setToolTip("Show only the selected object in the output Labels layer.")
    w.segment_all_button = QPushButton("Segment all on this frame")
    w.segment_all_button.setToolTip("Find every object on the current frame (SAM 2's automatic masks) and add each as "
                                    "a new object (in the background, with progress and Cancel).")
    w.seed_labels_button = QPushButton("Seed from labels")
    w.seed_labels_button.setToolTip("Take every label of the output Labels layer on the current frame that is not an "
                                    "object yet as a new object's mask prompt (e.g. a segmentation you opened).")
    w.new_object_button = QPushButton("New object")
    w.remove_object_button = QPushButton("Remove object")
    w.negative_check = QCheckBox("Negative clicks (T)")
    w.mask_button = QPushButton("Use painted mask on this frame")
    w.mask_button.setToolTip("Send what you painted for the selected object on the current frame as a mask prompt "
                             "(Shift-M). Painted corrections are also picked up before propagating.")

    w.direction_combo = _combo(list(DIRECTIONS))
    w.first_spin, w.last_spin = QSpinBox(), QSpinBox()
    w.division_combo = _combo(list(DIVISION_CHOICES), "propose")
    w.division_combo.setToolTip("Divisions found while propagating (an object whose mask splits in two, or two "
                                "cells under one mask): propose them for review, accept them at once, or look for "
                                "none.")
    w.follow_check = QCheckBox("Follow the frames")
    w.follow_check.setChecked(True)
    w.propagate_button = QPushButton("Propagate from this frame")
    w.cancel_button = QPushButton("Cancel")
    w.cancel_button.setEnabled(False)
    w.progress = QProgressBar()
    w.progress.setTextVisible(True)
    w.progress.setRange(0, 1)
    w.progress.setValue(0)
    w.progress.setFormat("")  # empty until something runs

    w.divisions = DivisionReview()
    w.divide_button = QPushButton("Divide here")
    w.divide_button.setToolTip("Divide the selected object on this frame: then click (or paint) each of its two "
                               "daughters; it ends the frame before. Esc or a second press cancels.")
    w.unlink_button = QPushButton("Unlink")
    w.unlink_button.setToolTip("Remove the selected object's link to its parent.")
    w.link_parent_spin = QSpinBox()
    w.link_parent_spin.setRange(1, 2**31 - 1)
    w.link_parent_spin.setPrefix("parent ")
    w.link_parent_spin.setToolTip("The object the selected one is a daughter of (its id).")
    w.link_button = QPushButton("Link")
    w.link_button.setToolTip("Make the selected object a daughter of the parent id beside: the parent ends the frame "
                             "before the selected object's first prompt.")
    w.undo_lineage_button = QPushButton("Undo")
    w.undo_lineage_button.setToolTip("Undo the last accept, reject, division, link or unlink: the lineage and the "
                                     "Labels layer's pixels together.")
    w.undo_lineage_button.setEnabled(False)

    w.file_buttons = {text: QPushButton(text) for text in FILE_ACTIONS}
    w.status = _text("Load a model, pick an image, then click on a cell.")

    content = QWidget()
    layout = QVBoxLayout(content)
    for title, rows in (
        ("Model", [("Model", w.model_combo), ("Device", w.device_combo), w.load_button, w.model_label]),
        ("Data", [("Image", w.image_combo), ("Track along", w.axis_combo), ("Output", w.labels_combo),
                  w.target_label, w.restart_button]),
        ("Objects and prompts", [w.find_edit, w.objects,
                                 _row(w.previous_frame_button, w.next_frame_button, w.solo_check),
                                 _row(w.new_object_button, w.remove_object_button), w.negative_check, w.mask_button,
                                 _row(w.segment_all_button, w.seed_labels_button)]),
        ("Propagate", [("Direction", w.direction_combo), ("Frames", _row(w.first_spin, QLabel("to"), w.last_spin)),
                       ("Divisions", w.division_combo), w.follow_check, _row(w.propagate_button, w.cancel_button),
                       w.progress]),
        ("Divisions", [w.divisions, _row(w.divide_button, w.unlink_button, w.undo_lineage_button),
                       _row(w.link_parent_spin, w.link_button)]),
        ("Session and export", [_row(*(w.file_buttons[t] for t in FILE_ACTIONS[:2])),
                                _row(*(w.file_buttons[t] for t in FILE_ACTIONS[2:5])),
                                _row(w.file_buttons[FILE_ACTIONS[5]])]),
    ):
        box = QGroupBox(title)
        form = QFormLayout(box)
        for row in rows:
            if isinstance(row, tuple):
                form.addRow(*row)  # (label, control)
            else:
                form.addRow(row)
        layout.addWidget(box)
    layout.addStretch(1)
    w.scroll = QScrollArea()
    w.scroll.setWidget(content)
    w.scroll.setWidgetResizable(True)
    w.scroll.setFrameShape(QFrame.Shape.NoFrame)
    w.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(w.scroll, 1)
    outer.addWidget(w.status)


def _combo(items: list[str] | None = None, current: str | None = None) -> QComboBox:
    combo = _narrow_combo()
    combo.addItems(items or [])
    if current is not None:
        combo.setCurrentText(current)
    return combo


def _narrow_combo() -> QComboBox:
    """A combo box that shrinks to the widget's width (long layer names are cut, the full name is in the list)."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)
    return combo


def _text(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def _row(*widgets: Any) -> QWidget:
    """Widgets side by side in one form row."""
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    for item in widgets:
        box.addWidget(item)
    return row


def available_devices() -> list[str]:
    """Device choices: auto (CUDA, then MPS, then CPU), cpu, and cuda / mps where present."""
    from ..device import accelerators  # imports torch: only when the widget is built

    return ["auto", "cpu", *accelerators()]
