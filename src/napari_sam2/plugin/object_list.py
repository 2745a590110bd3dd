"""The list of tracked objects in the dock widget: one row per object id, in the Labels layer's colour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QListWidget, QListWidgetItem


class ObjectList(QListWidget):
    """Object ids (label values) with their colour swatch; emits ``selected_id`` when the user picks one."""

    selected_id = Signal(int)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setMaximumHeight(120)
        self._colour_of: Callable[[int], Any] | None = None
        self.currentItemChanged.connect(self._on_current)

    def set_colour_source(self, colour_of: Callable[[int], Any] | None) -> None:
        """``colour_of(id)`` gives an RGBA colour in 0..1 (napari's ``Labels.get_color``); swatches are redrawn."""
        self._colour_of = colour_of
        for row in range(self.count()):
            self._paint(self.item(row))

    @property
    def ids(self) -> list[int]:
        return [int(self.item(row).data(Qt.UserRole)) for row in range(self.count())]

    @property
    def current_id(self) -> int | None:
        item = self.currentItem()
        return None if item is None else int(item.data(Qt.UserRole))

    def add_id(self, obj_id: int, select: bool = True) -> None:
        """Add ``obj_id`` (kept sorted) unless it is listed already; optionally make it the current object."""
        if obj_id not in self.ids:
            item = QListWidgetItem(f"object {obj_id}")
            item.setData(Qt.UserRole, int(obj_id))
            row = sum(1 for i in self.ids if i < obj_id)
            self.insertItem(row, item)
            self._paint(item)
        if select:
            self.select_id(obj_id)

    def remove_id(self, obj_id: int) -> None:
        for row in range(self.count()):
            if int(self.item(row).data(Qt.UserRole)) == obj_id:
                self.takeItem(row)
                return

    def select_id(self, obj_id: int) -> None:
        for row in range(self.count()):
            if int(self.item(row).data(Qt.UserRole)) == obj_id:
                self.setCurrentRow(row)
                return

    def _paint(self, item: QListWidgetItem) -> None:
        if self._colour_of is None:
            return
        rgba = np.clip(np.asarray(self._colour_of(int(item.data(Qt.UserRole))), dtype=float).ravel(), 0, 1)
        if rgba.size < 3:
            return
        pixmap = QPixmap(14, 14)
        pixmap.fill(QColor.fromRgbF(*rgba[:3]))
        item.setIcon(QIcon(pixmap))

    def _on_current(self, current: QListWidgetItem | None, _previous: Any) -> None:
        if current is not None:
            self.selected_id.emit(int(current.data(Qt.UserRole)))
