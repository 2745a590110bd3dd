"""A small least-recently-used cache of per-frame image features.

Encoding a frame is by far the most expensive step, and the same frame is needed several times in a
row (a click, then the next click, then propagation); a long movie must still never be held in full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ..model.sam2 import ImageFeatures


class FeatureCache:
    """Keeps the image features of the ``capacity`` most recently used frames."""

    def __init__(self, encode: Callable[[int], ImageFeatures], capacity: int = 4) -> None:
        if capacity < 1:
            raise ValueError(f"feature cache capacity must be at least 1, got {capacity}")
        self._encode = encode
        self.capacity = capacity
        self._entries: OrderedDict[int, ImageFeatures] = OrderedDict()
        self.encodes = 0  # how many frames were encoded (diagnostics and tests)

    def get(self, frame: int) -> ImageFeatures:
        """Features of ``frame``, encoding it if it is not cached."""
        if frame in self._entries:
            self._entries.move_to_end(frame)
            return self._entries[frame]
        features = self._encode(frame)
        self.put(frame, features)
        return features

    def peek(self, frame: int) -> ImageFeatures | None:
        """Features of ``frame`` if cached, without encoding or counting it as recently used."""
        return self._entries.get(frame)

    def put(self, frame: int, features: ImageFeatures) -> None:
        """Add the freshly encoded features of ``frame`` (dropping the least recently used beyond capacity)."""
        self.encodes += 1
        self._entries[frame] = features
        self._entries.move_to_end(frame)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __contains__(self, frame: int) -> bool:
        return frame in self._entries

    def clear(self) -> None:
        self._entries.clear()

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self._entries.values())
