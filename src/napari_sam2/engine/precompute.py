"""Speculative precompute: the work of the next click on a frame, done while the user looks at it.

A click costs an image encode (seconds on a CPU) unless the frame's features are cached, and a correction
on a tracked frame also costs memory attention (the object's memories fused into the frame's features)
before the prompt encoder and mask decoder run. Both depend only on the frame and on the object's stored
state, not on where the user clicks, so they can be computed ahead of the click. The plugin does this in
a background worker when the viewer rests on a frame; :meth:`TrackingSession.precompute` is the entry
point, this module does the work and holds what it keeps.

The precomputed conditioning is kept for one (frame, object) at a time and used by that object's next
click or box there only if nothing it was computed from has changed since (:attr:`TrackedObject.revision`
and the object's identity, so a removed and re-added object id never reuses it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.interrupt import Interrupted, checkpoint, stop_when
from ..model.sam2 import ImageFeatures
from .memory_bank import condition
from .object_state import TrackedObject
from .runtime import ModelRuntime


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


def precompute(runtime: ModelRuntime, cache: ConditionedCache, frame: int, obj: TrackedObject | None,
               should_stop: Callable[[], bool] | None) -> bool:
    """Encode ``frame`` into the feature cache and, if ``obj`` would refine a result there through memory
    attention, store its conditioning in ``cache``. Stops (returning False, changing nothing) when
    ``should_stop`` returns True at one of the model's checkpoints (model/interrupt.py)."""
    needs_conditioning = obj is not None and frame in obj.direction and not cache.valid_for(obj, frame)
    try:
        with stop_when(should_stop):
            checkpoint()
            features = runtime.features.peek(frame)
            encoded = features is None
            if encoded:
                features = runtime.encode_image(runtime.model_input(frame))
            conditioned = _condition_without_keeping(runtime, obj, frame, features) if needs_conditioning else None
            checkpoint()
    except Interrupted:
        return False
    # Everything is computed: only now does the session change.
    if encoded:
        runtime.features.put(frame, features)
    else:
        runtime.features.get(frame)  # the frame being looked at is the most recently used
    if conditioned is not None:
        cache.store(obj, frame, conditioned)
    return True


def _condition_without_keeping(runtime: ModelRuntime, obj: TrackedObject, frame: int,
                               features: ImageFeatures) -> torch.Tensor:
    """The conditioning a click of ``obj`` on ``frame`` computes, without changing the session: spatial
    memories that were dropped are re-encoded (exactly) but not kept, their frames' features not cached."""

    def memory_of(obj: TrackedObject, t: int, is_cond: bool) -> torch.Tensor:
        result = obj.remembered(t, is_cond)
        if result.maskmem is not None:
            return result.maskmem
        checkpoint()
        features_t = runtime.features.peek(t)
        if features_t is None:
            features_t = runtime.encode_image(runtime.model_input(t))
        return runtime.result_memory(result, features_t)

    with runtime.autocast():
        return condition(runtime, obj, frame, features, obj.direction[frame], memory_of=memory_of)
