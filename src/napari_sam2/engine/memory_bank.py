"""Each object's memory bank: which remembered frames memory attention reads, and keeping it bounded.

An object's conditioning frames (its prompts) and tracked frames each hold a result; memory attention on a
frame reads the spatial memories of all conditioning frames and of the 6 frames before it in the tracking
direction, plus object pointers (see :mod:`napari_sam2.model.memory_selection`). Spatial memories of tracked
frames that the next frames will not read are dropped and re-encoded exactly when a later run needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..model.memory_selection import NUM_MASKMEM, memory_frames, pointer_frames
from ..model.sam2 import ImageFeatures, MemoryItem
from .object_state import TrackedObject
from .runtime import ModelRuntime

MemoryOf = Callable[[TrackedObject, int, bool], torch.Tensor]  # (object, frame, is conditioning) -> memory
Layout = tuple[list[MemoryItem], list[tuple[int, torch.Tensor]]]


def memory_layout(runtime: ModelRuntime, obj: TrackedObject, frame: int, reverse: bool,
                  memory_of: MemoryOf | None = None) -> Layout:
    """The spatial memories and (distance, pointer) pairs that memory attention reads for ``obj`` on
    ``frame``; ``memory_of(obj, t, is_cond)`` gives frame t's spatial memory (default: :func:`kept_memory`)."""
    if memory_of is None:
        def memory_of(obj: TrackedObject, t: int, is_cond: bool) -> torch.Tensor:
            return kept_memory(runtime, obj, t, is_cond)
    memories = [MemoryItem(memory_of(obj, t, t_pos == 0), t_pos)
                for t_pos, t in memory_frames(frame, obj.cond, obj.tracked, reverse)]
    pointers = [(distance, obj.remembered(t, is_cond).obj_ptr.to(runtime.device, non_blocking=True))
                for distance, t, is_cond in pointer_frames(frame, obj.cond, obj.tracked, reverse,
                                                           runtime.num_frames)]
    return memories, pointers


def kept_memory(runtime: ModelRuntime, obj: TrackedObject, frame: int, is_cond: bool) -> torch.Tensor:
    """Spatial memory of a remembered frame, re-encoded (exactly) and kept if it was dropped."""
    result = obj.remembered(frame, is_cond)
    if result.maskmem is None:
        result.maskmem = runtime.result_memory(result, runtime.features.get(frame))
        if not is_cond:
            obj.resident_memories.add(frame)
    return result.maskmem


def condition(runtime: ModelRuntime, obj: TrackedObject, frame: int, features: ImageFeatures, reverse: bool,
              initial: bool = False, memory_of: MemoryOf | None = None) -> torch.Tensor:
    """Features of ``frame`` fused with this object's memories, or with the no-memory embedding on an
    ``initial`` frame (the object's first prompt there). Runs under the caller's autocast."""
    if initial:
        return runtime.model.condition_on_memory(features, [], [], runtime.num_frames)
    memories, pointers = memory_layout(runtime, obj, frame, reverse, memory_of)
    return runtime.model.condition_on_memory(features, memories, pointers, runtime.num_frames)


def drop_old_memories(obj: TrackedObject, keep_near: tuple[int, ...]) -> None:
    """Drop spatial memories of tracked frames that attention will not read next (they are re-encoded on
    demand if a later run starts there)."""
    # The next frame reads the NUM_MASKMEM - 1 = 6 frames before it, i.e. the current one and the 5 before.
    reach = NUM_MASKMEM - 2
    for t in list(obj.resident_memories):
        if all(abs(t - near) > reach for near in keep_near):
            result = obj.tracked.get(t)
            if result is not None:
                result.maskmem = None
            obj.resident_memories.discard(t)


def commit_pending_prompts(runtime: ModelRuntime, objects: Iterable[TrackedObject]) -> None:
    """Encode the memory of every new prompt and make those frames conditioning frames (at the start of a
    propagation). Raises ValueError, before changing anything, when there is nothing to track."""
    objects = list(objects)
    if not objects:
        raise ValueError("no objects to track; add points, a box or a mask first")
    without = [o.obj_id for o in objects if not o.cond and not o.pending]
    if without:
        raise ValueError(f"object(s) {without} have no prompts left; add a prompt or remove_object() them")
    runtime.plan_storage(objects)
    for obj in objects:
        for frame, result in obj.pending.items():
            if result.maskmem is None:
                result.maskmem = runtime.result_memory(result, runtime.features.get(frame))
            obj.cond[frame] = result
            obj.changed()
        obj.pending.clear()
        for frame in obj.cond:
            obj.tracked.pop(frame, None)
            obj.resident_memories.discard(frame)
