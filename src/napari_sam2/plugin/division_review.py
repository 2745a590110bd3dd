"""The list of division proposals in the dock widget: one row per proposal, with Accept and Reject.

A view only (no session, no layers): :mod:`.widget_lineage` fills it with the session's pending
:class:`~napari_sam2.DivisionProposal` s and acts on its signals. Choosing a row (click, arrow keys) emits
``chosen(row)``: the widget then shows that frame and a preview of the two parts. Frames are indices along the
tracked axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QListWidget, QPushButton, QVBoxLayout, QWidget


def describe_proposal(proposal: Any) -> str:
    """One row's text, e.g. "frame 20: object 3 → 8 + 9" (existing daughter objects) or
    "frame 20: object 3 → 2 parts (410 + 385 px)" (parts of its mask, new objects once accepted)."""
    head = f"frame {proposal.frame}: object {proposal.parent} →"
    if proposal.daughters is not None:
        first, second = proposal.daughters
        return f"{head} {first} + {second}"
    areas = " + ".join(str(int(np.count_nonzero(part))) for part in proposal.parts)
    return f"{head} 2 parts ({areas} px)"


class DivisionReview(QWidget):
    """Pending division proposals with Accept / Reject. Emits ``chosen(row)`` when a row becomes the current one,
    ``accept_requested(row)`` / ``reject_requested(row)`` for the buttons (and Enter / Delete are not bound: a
    decision is always a button press)."""

    chosen = Signal(int)
    accept_requested = Signal(int)
    reject_requested = Signal(int)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._proposals: list[Any] = []
        self.rows = QListWidget()
        self.rows.setMaximumHeight(66)  # three rows: the dock stays short
        self.rows.setToolTip("Division proposals of the last propagations. Choose one to see its frame and its two "
                             "parts (a temporary preview layer); then Accept or Reject it.")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("The parent ends the frame before; its two parts (or the two cells named) go on "
                                      "as its daughters. Undo takes it back.")
        self.reject_button = QPushButton("Reject")
        self.reject_button.setToolTip("Not a division: the object goes on as before, and this frame is not "
                                      "proposed again for it.")
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.accept_button)
        buttons.addWidget(self.reject_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.rows)
        layout.addLayout(buttons)
        self.rows.currentRowChanged.connect(self._on_row)
        self.accept_button.clicked.connect(lambda: self._request(self.accept_requested))
        self.reject_button.clicked.connect(lambda: self._request(self.reject_requested))
        self._enable()

    @property
    def proposals(self) -> list[Any]:
        """The listed proposals, in their rows' order."""
        return list(self._proposals)

    @property
    def current_row(self) -> int | None:
        row = self.rows.currentRow()
        return row if 0 <= row < len(self._proposals) else None

    def set_proposals(self, proposals: Sequence[Any]) -> None:
        """List ``proposals`` (sorted by (frame, parent)); the row of the same (frame, parent) stays current, without
        emitting ``chosen`` (nothing new to show)."""
        current = self.current_row
        keep = None if current is None else _key(self._proposals[current])
        self._proposals = list(proposals)
        self.rows.blockSignals(True)
        try:
            self.rows.clear()
            self.rows.addItems([describe_proposal(p) for p in self._proposals])
            keys = [_key(p) for p in self._proposals]
            if keep in keys:
                self.rows.setCurrentRow(keys.index(keep))
        finally:
            self.rows.blockSignals(False)
        self._enable()

    def select_row(self, row: int) -> None:
        """Make ``row`` the current one (emits ``chosen``, also when it already was)."""
        if not 0 <= row < len(self._proposals):
            raise IndexError(f"no division proposal in row {row}: {len(self._proposals)} are listed")
        if self.rows.currentRow() == row:
            self.chosen.emit(row)
        else:
            self.rows.setCurrentRow(row)

    def _on_row(self, row: int) -> None:
        self._enable()
        if 0 <= row < len(self._proposals):
            self.chosen.emit(row)

    def _request(self, signal: Any) -> None:
        row = self.current_row
        if row is not None:
            signal.emit(row)

    def _enable(self) -> None:
        chosen = self.current_row is not None
        self.accept_button.setEnabled(chosen)
        self.reject_button.setEnabled(chosen)


def _key(proposal: Any) -> tuple[int, int]:
    return int(proposal.frame), int(proposal.parent)
