"""Showing and hiding single objects of a napari Labels layer: a hidden label gets a transparent colour.

napari (0.5 and later) has no per-label visibility; its cyclic label colormap maps a label v > 0 to colour
``colors[(v - 1) % (n - 1) + 1]``. While some labels are hidden the layer gets a cyclic colormap whose table holds
every label up to the largest listed one in its own slot, with the layer's own colours (a table length that is a whole
number of the old cycles, so labels above it keep their colours too), and the hidden labels' slots transparent. With
nothing hidden the layer's own colormap comes back. A colormap the user sets meanwhile (e.g. new random colours) becomes
the new base. Labels are object ids (label values); at most 65535 of them fit the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from napari.utils.colormaps import CyclicLabelColormap

MAX_LABEL = 2**16 - 2  # the cyclic colormap's table holds at most 2**16 colours (background included)


class LabelVisibility:
    """Which labels of ``layer`` are hidden; the layer's colormap follows (see the module docstring)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._base = layer.colormap
        self._hidden: set[int] = set()
        self._setting = False  # True while this class sets the layer's colormap
        layer.events.colormap.connect(self._on_colormap)

    @property
    def hidden(self) -> frozenset[int]:
        return frozenset(self._hidden)

    def colour_of(self, label: int) -> np.ndarray:
        """RGBA (0..1) of ``label`` in the layer's own colormap (also while it is hidden)."""
        return np.asarray(self._base.map(np.asarray([label], dtype=np.int64)), dtype=float)[0]

    def set_hidden(self, labels: Iterable[int], hidden: bool = True) -> None:
        """Hide (or show again) ``labels``; ValueError for a label above :data:`MAX_LABEL`."""
        labels = {int(label) for label in labels}
        if hidden and labels and max(labels) > MAX_LABEL:
            raise ValueError(f"object {max(labels)} cannot be hidden: only labels up to {MAX_LABEL} can be")
        changed = self._hidden | labels if hidden else self._hidden - labels
        if changed != self._hidden:
            self._hidden = changed
            self._apply()

    def show_all(self) -> None:
        self.set_hidden(set(self._hidden), hidden=False)

    def close(self) -> None:
        """Give the layer its own colormap back and stop listening to it."""
        self.show_all()
        try:
            self.layer.events.colormap.disconnect(self._on_colormap)
        except (TypeError, ValueError, RuntimeError):
            pass

    def _apply(self) -> None:
        colormap = self._base
        if self._hidden:
            colours = self._table(max(self._hidden))
            colours[sorted(self._hidden)] = 0.0
            colormap = CyclicLabelColormap(colors=colours, background_value=self._base.background_value,
                                           name="SAM 2 objects, some hidden")
        self._setting = True
        try:
            self.layer.colormap = colormap
        finally:
            self._setting = False

    def _table(self, top: int) -> np.ndarray:
        """(n, 4) colours of labels 0..n-1 in the base colormap, n - 1 >= ``top`` a whole number of its cycles."""
        cycle = len(self._base.colors) - 1 if isinstance(self._base, CyclicLabelColormap) else 1
        cycle = max(cycle, 1)
        slots = min(cycle * -(-(top + 1) // cycle), MAX_LABEL + 1)
        values = np.arange(slots + 1, dtype=np.int64)
        return np.array(self._base.map(values), dtype=np.float32)

    def _on_colormap(self, _event: Any = None) -> None:
        if self._setting:
            return
        self._base = self.layer.colormap  # the user's new colours: kept, with the hidden labels still hidden
        if self._hidden:
            self._apply()
