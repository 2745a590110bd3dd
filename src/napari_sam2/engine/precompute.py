"""Speculative precompute: the work of the next click on a frame, done while the user looks at it.

A click costs an image encode (seconds on a CPU) unless the frame's features are cached, and a correction
on a tracked frame also costs memory attention (the object's memories fused into the frame's features)
before the prompt encoder and mask decoder run. Both depend only on the frame and on the object's stored
state, not on where the user clicks, so they can be computed ahead of the click. The plugin does this in
a background worker when the viewer rests on a frame; :meth:`TrackingSession.precompute` is the entry
point, this module holds what it keeps.

The precomputed conditioning is kept for one (frame, object) at a time and used by that object's next
click or box there only if nothing it was computed from has changed since (:attr:`TrackedObject.revision`
and the object's identity, so a removed and re-added object id never reuses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .object_state import TrackedObject


@dataclass
class _Entry:
    obj: TrackedObject
    revision: int
    frame: int
    conditioned: torch.Tensor


class ConditionedCache:
    """The memory-conditioned features (1, 256, h, w) the next click of one object on one frame would
    compute; at most one entry (the frame the user is looking at)."""

    def __init__(self) -> None:
        self._entry: _Entry | None = None

    def store(self, obj: TrackedObject, frame: int, conditioned: torch.Tensor) -> None:
        """Keep ``conditioned`` for ``obj`` on ``frame`` as of the object's current revision."""
        self._entry = _Entry(obj, obj.revision, frame, conditioned)

    def valid_for(self, obj: TrackedObject, frame: int) -> bool:
        """Whether a stored conditioning for ``obj`` on ``frame`` is still what a click would compute."""
        entry = self._entry
        return entry is not None and entry.obj is obj and entry.frame == frame and entry.revision == obj.revision

    def take(self, obj: TrackedObject, frame: int) -> torch.Tensor | None:
        """The stored conditioning if still valid for ``obj`` on ``frame`` (and forget it: the click that
        uses it changes the object), else None."""
        if not self.valid_for(obj, frame):
            return None
        conditioned = self._entry.conditioned
        self._entry = None
        return conditioned

    def clear(self) -> None:
        self._entry = None

    @property
    def nbytes(self) -> int:
        entry = self._entry
        return 0 if entry is None else entry.conditioned.numel() * entry.conditioned.element_size()
