"""A small least-recently-used cache of per-frame image features.

Encoding a frame is by far the most expensive step, and the same frame is needed several times in a
row (a click, then the next click, then propagation); a long movie must still never be held in full.
A step that needs more frames at once than the cache holds (a tracked frame whose dropped memories are
re-encoded from their own frames) makes room for them for its duration (:meth:`FeatureCache.holding`).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator

from ..model.sam2 import ImageFeatures


class FeatureCache:
    """Keeps the image features of the ``capacity`` most recently used frames."""

    def __init__(self, encode: Callable[[int], ImageFeatures], capacity: int = 4) -> None:
        if capacity < 1:
            raise ValueError(f"feature cache capacity must be at least 1, got {capacity}")
        self._encode = encode
        self.capacity = capacity
        self._entries: OrderedDict[int, ImageFeatures] = OrderedDict()
        self._extra = 0  # room made by holding() for the step under way
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
        self._trim()

    @contextlib.contextmanager
    def holding(self, extra: int) -> Iterator[None]:
        """Make room for ``extra`` more frames while the block runs (up to ``extra`` frames it encodes push
        out nothing cached); when it ends, the least recently used beyond :attr:`capacity` go.

        For a step that needs more frames than the cache holds (re-encoding dropped memories from their
        frames, then the frame being tracked): without it, the frame looked at before the step could be
        pushed out by the step's first frames and be encoded again at its end."""
        extra = max(0, int(extra))
        self._extra += extra
        try:
            yield
        finally:
            self._extra -= extra
            self._trim()

    def _trim(self) -> None:
        while len(self._entries) > self.capacity + self._extra:
            self._entries.popitem(last=False)

    def __contains__(self, frame: int) -> bool:
        return frame in self._entries

    def clear(self) -> None:
        self._entries.clear()

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self._entries.values())
