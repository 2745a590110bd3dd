"""The list of tracked objects in the dock widget: one row per object id, in the Labels layer's colour, with a check box
that shows or hides the object, the object's parent when it has one ("object 8 (from 3)"), and a filter by id. Made
for populations: 500 rows are listed in a few milliseconds
(ids are kept in a sorted list and a dict of rows; many new ids rebuild the list in one pass)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QListWidget, QListWidgetItem

_REBUILD_AT = 16  # new ids from which add_ids rebuilds the list instead of inserting rows one by one


class ObjectList(QListWidget):
    """Object ids (label values) with their colour swatch and a shown/hidden check box. Emits ``selected_id`` when an
    object becomes the current one and ``visibility_changed(id, shown)`` when the user ticks or unticks one."""

    selected_id = Signal(int)
    visibility_changed = Signal(int, bool)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setMaximumHeight(160)
        self.setUniformItemSizes(True)  # (rows of one height: Qt lays out long lists without measuring each)
        self._colour_of: Callable[[int], Any] | None = None
        self._ids: list[int] = []  # sorted
        self._items: dict[int, QListWidgetItem] = {}
        self._hidden: set[int] = set()
        self._parents: dict[int, int] = {}  # child -> parent, shown in the rows' text
        self._filter = ""
        self.currentItemChanged.connect(self._on_current)
        self.itemChanged.connect(self._on_item_changed)

    # ------------------------------------------------------------------ contents

    @property
    def ids(self) -> list[int]:
        """Every listed id, ascending (also those the filter hides)."""
        return list(self._ids)

    @property
    def current_id(self) -> int | None:
        item = self.currentItem()
        return None if item is None else int(item.data(Qt.UserRole))

    @property
    def hidden_ids(self) -> set[int]:
        """Objects whose check box is unticked (hidden in the Labels layer)."""
        return set(self._hidden)

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._items

    def set_colour_source(self, colour_of: Callable[[int], Any] | None) -> None:
        """``colour_of(id)`` gives an RGBA colour in 0..1 (napari's ``Labels.get_color``); swatches are redrawn."""
        self._colour_of = colour_of
        for item in self._items.values():
            self._paint(item)

    def add_id(self, obj_id: int, select: bool = True) -> None:
        """Add ``obj_id`` (kept sorted) unless it is listed already; optionally make it the current object."""
        self.add_ids([obj_id])
        if select:
            self.select_id(obj_id)

    def add_ids(self, obj_ids: Iterable[int]) -> list[int]:
        """Add every id of ``obj_ids`` not listed yet (the current object stays); returns those added."""
        new = sorted({int(i) for i in obj_ids} - self._items.keys())
        if len(new) >= _REBUILD_AT:
            self._rebuild(new)
            return new
        for obj_id in new:
            row = bisect.bisect_left(self._ids, obj_id)
            self._ids.insert(row, obj_id)
            self.insertItem(row, self._make_item(obj_id))
        return new

    def remove_id(self, obj_id: int) -> None:
        item = self._items.pop(obj_id, None)
        if item is None:
            return
        self._ids.remove(obj_id)
        self._hidden.discard(obj_id)
        self.takeItem(self.row(item))

    def clear(self) -> None:
        """Remove every row (and forget which were hidden)."""
        self._ids.clear()
        self._items.clear()
        self._hidden.clear()
        super().clear()

    def select_id(self, obj_id: int) -> bool:
        """Make ``obj_id`` the current object (also when the filter hides it); False when it is not listed."""
        item = self._items.get(obj_id)
        if item is None:
            return False
        if item.isHidden():
            item.setHidden(False)
        self.setCurrentItem(item)
        self.scrollToItem(item)
        return True

    def set_parents(self, parents: dict[int, int]) -> None:
        """Show each object's parent (``parents``: child id -> parent id, the session's lineage); only rows whose
        parent changed are touched."""
        parents = {int(child): int(parent) for child, parent in parents.items()}
        changed = {i for i in set(parents) | set(self._parents) if parents.get(i) != self._parents.get(i)}
        self._parents = parents
        self.blockSignals(True)  # (a text change is no visibility change)
        try:
            for obj_id in changed & self._items.keys():
                self._items[obj_id].setText(self._text(obj_id))
        finally:
            self.blockSignals(False)

    def parent_of(self, obj_id: int) -> int | None:
        """The parent shown for ``obj_id`` (None: it has none)."""
        return self._parents.get(obj_id)

    def row_text(self, obj_id: int) -> str:
        """The text of ``obj_id``'s row."""
        return self._items[obj_id].text()

    # ------------------------------------------------------------------ filter and visibility

    def filter_ids(self, text: str) -> list[int]:
        """Show only the ids whose digits start with the digits of ``text`` (all for none); returns those shown."""
        self._filter = "".join(ch for ch in text if ch.isdigit())
        shown = []
        self.setUpdatesEnabled(False)
        try:
            for obj_id, item in self._items.items():
                match = self._matches(obj_id)
                item.setHidden(not match)
                if match:
                    shown.append(obj_id)
        finally:
            self.setUpdatesEnabled(True)
        return sorted(shown)

    def set_shown(self, obj_id: int, shown: bool) -> None:
        """Tick or untick ``obj_id``'s check box (without emitting ``visibility_changed``)."""
        item = self._items.get(obj_id)
        if item is None:
            return
        if shown:
            self._hidden.discard(obj_id)
        else:
            self._hidden.add(obj_id)
        self.blockSignals(True)
        try:
            item.setCheckState(Qt.Checked if shown else Qt.Unchecked)
        finally:
            self.blockSignals(False)

    # ------------------------------------------------------------------ internals

    def _matches(self, obj_id: int) -> bool:
        return not self._filter or str(obj_id).startswith(self._filter)

    def _make_item(self, obj_id: int) -> QListWidgetItem:
        item = QListWidgetItem(self._text(obj_id))
        item.setData(Qt.UserRole, int(obj_id))
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(Qt.Unchecked if obj_id in self._hidden else Qt.Checked)
        item.setHidden(not self._matches(obj_id))
        self._paint(item)
        self._items[obj_id] = item
        return item

    def _text(self, obj_id: int) -> str:
        parent = self._parents.get(obj_id)
        return f"object {obj_id}" if parent is None else f"object {obj_id} (from {parent})"

    def _rebuild(self, new: list[int]) -> None:
        """Add many ids at once: every row is made again in order (the current object stays current)."""
        current = self.current_id
        self._ids = sorted([*self._ids, *new])
        self.setUpdatesEnabled(False)
        self.blockSignals(True)
        try:
            super().clear()
            self._items.clear()
            for obj_id in self._ids:
                self.addItem(self._make_item(obj_id))
            if current is not None:
                self.setCurrentItem(self._items[current])
        finally:
            self.blockSignals(False)
            self.setUpdatesEnabled(True)

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

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        obj_id = int(item.data(Qt.UserRole))
        shown = item.checkState() == Qt.Checked
        if shown == (obj_id not in self._hidden):
            return  # (another change of the row: its icon, its text)
        if shown:
            self._hidden.discard(obj_id)
        else:
            self._hidden.add(obj_id)
        self.visibility_changed.emit(obj_id, shown)
