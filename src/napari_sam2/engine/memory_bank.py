"""Each object's memory bank: which remembered frames memory attention reads, and keeping it bounded.

An object's conditioning frames (its prompts) and tracked frames each hold a result; memory attention on a
frame reads the spatial memories of all conditioning frames and of the 6 frames before it in the tracking
direction, plus object pointers (see :mod:`napari_sam2.model.memory_selection`). Spatial memories of tracked
frames that the next frames will not read are dropped and re-encoded exactly when a later run needs them:
before a frame is tracked, all its objects' dropped memories are re-encoded frame by frame, each frame's
features fetched once and its objects' memories encoded in batches (:func:`restore_memories`), so that a run
that starts among dropped memories encodes each of their frames once, however many objects it tracks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..model.memory_selection import NUM_MASKMEM, memory_frames, pointer_frames
from ..model.sam2 import ImageFeatures, MemoryItem
from .object_state import FrameResult, TrackedObject
from .runtime import ModelRuntime

# Memories encoded together when prompts are committed: on an accelerator the batch saves a launch sequence per
# object; a CPU cuts it into passes of runtime.CPU_MEMORY_PASS.
COMMIT_BATCH = 16

MemoryOf = Callable[[TrackedObject, int, bool], torch.Tensor]  # (object, frame, is conditioning) -> memory
Layout = tuple[list[MemoryItem], list[tuple[int, torch.Tensor]]]
# (remembered frame, from a prompt) -> (object, is conditioning, result) of each dropped memory there
Dropped = dict[tuple[int, bool], list[tuple[TrackedObject, bool, FrameResult]]]


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


def dropped_memories(objects: Iterable[TrackedObject], frame: int, reverse: bool) -> Dropped:
    """The dropped spatial memories that memory attention on ``frame`` reads for ``objects``, by remembered
    frame and origin (frames in the order the objects read them, objects in their order)."""
    dropped: Dropped = {}
    for obj in objects:
        for t_pos, t in memory_frames(frame, obj.cond, obj.tracked, reverse):
            is_cond = t_pos == 0
            result = obj.remembered(t, is_cond)
            if result.maskmem is None:
                dropped.setdefault((t, result.from_prompt), []).append((obj, is_cond, result))
    return dropped


def restore_memories(runtime: ModelRuntime, dropped: Dropped, batch_size: int) -> None:
    """Re-encode and keep the memories of :func:`dropped_memories`, as :func:`kept_memory` would one by one:
    each frame's features are fetched once, and its results go through the memory encoder ``batch_size`` at a
    time per origin (prompted frames binarised, tracked ones not: :meth:`ModelRuntime.result_memories`).

    Given the batch size the objects were tracked with, the batches are usually of the size the memories
    were first encoded in, and the memories come back bit for bit: the CPU's memory encoder rounds a batch
    of one or two differently from a larger one (re-encoded one by one, as before, memories of a frame
    tracked with several objects did not always come back bit for bit)."""
    by_frame: dict[int, list[list[tuple[TrackedObject, bool, FrameResult]]]] = {}
    for (t, _), entries in dropped.items():
        by_frame.setdefault(t, []).append(entries)
    for t, groups in by_frame.items():
        features = runtime.features.get(t)
        for entries in groups:
            for start in range(0, len(entries), batch_size):
                batch = entries[start:start + batch_size]
                memories = runtime.result_memories([result for _, _, result in batch], features)
                for (obj, is_cond, result), memory in zip(batch, memories, strict=True):
                    result.maskmem = memory
                    if not is_cond:
                        obj.resident_memories.add(t)


def features_with_memories(runtime: ModelRuntime, objects: Iterable[TrackedObject], frame: int, reverse: bool,
                           batch_size: int) -> ImageFeatures:
    """The image features of ``frame``, after re-encoding every dropped memory that attention there reads for
    ``objects`` (:func:`restore_memories`). The feature cache makes room for the frames of those memories
    for the step, so that each is encoded once and ``frame``, if it was cached, stays cached."""
    dropped = dropped_memories(objects, frame, reverse)
    with runtime.features.holding(len({t for t, _ in dropped})):
        restore_memories(runtime, dropped, batch_size)
        return runtime.features.get(frame)


def condition(runtime: ModelRuntime, obj: TrackedObject, frame: int, features: ImageFeatures, reverse: bool,
              initial: bool = False, memory_of: MemoryOf | None = None) -> torch.Tensor:
    """Features of ``frame`` fused with this object's memories, or with the no-memory embedding on an
    ``initial`` frame (the object's first prompt there). Runs under the caller's autocast. Without
    ``memory_of``, dropped memories are re-encoded and kept first (:func:`features_with_memories`)."""
    if initial:
        return runtime.model.condition_on_memory(features, [], [], runtime.num_frames)
    if memory_of is None:
        features_with_memories(runtime, [obj], frame, reverse, batch_size=1)
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


def commit_pending_prompts(runtime: ModelRuntime, objects: Iterable[TrackedObject],
                           batch_size: int | None = None) -> None:
    """Encode the memory of every new prompt and make those frames conditioning frames (at the start of a
    propagation). Raises ValueError, before changing anything, when there is nothing to track.

    The memories of prompts on one frame are encoded ``batch_size`` objects at a time (default
    :data:`COMMIT_BATCH`; a CPU cuts them into passes of ``runtime.CPU_MEMORY_PASS``): the same computation as
    encoding them one by one (:meth:`ModelRuntime.result_memory`), equal up to float rounding (a GPU library
    may pick another convolution algorithm for another batch size; on the CPU the tests find them equal
    within one bf16 step)."""
    objects = list(objects)
    if not objects:
        raise ValueError("no objects to track; add points, a box or a mask first")
    without = [o.obj_id for o in objects if not o.cond and not o.pending]
    if without:
        raise ValueError(f"object(s) {without} have no prompts left; add a prompt or remove_object() them")
    runtime.plan_storage(objects)
    encode_pending_memories(runtime, objects, batch_size)
    for obj in objects:
        for frame, result in obj.pending.items():
            obj.cond[frame] = result
            obj.changed()
        obj.pending.clear()
        for frame in obj.cond:
            obj.tracked.pop(frame, None)
            obj.resident_memories.discard(frame)


def encode_pending_memories(runtime: ModelRuntime, objects: Iterable[TrackedObject],
                            batch_size: int | None = None) -> None:
    """Encode the spatial memory of every pending prompt result of ``objects`` that has none yet, frame by
    frame and origin by origin, ``batch_size`` results per memory-encoder call (default :data:`COMMIT_BATCH`).
    Storage must be planned first (``runtime.plan_storage``)."""
    if batch_size is None:
        batch_size = COMMIT_BATCH
    to_encode: dict[tuple[int, bool], list[FrameResult]] = {}  # (frame, from a prompt) -> results
    for obj in objects:
        for frame, result in obj.pending.items():
            if result.maskmem is None:
                to_encode.setdefault((frame, result.from_prompt), []).append(result)
    for (frame, _), results in to_encode.items():
        features = runtime.features.get(frame)
        for start in range(0, len(results), batch_size):
            batch = results[start:start + batch_size]
            for result, memory in zip(batch, runtime.result_memories(batch, features), strict=True):
                result.maskmem = memory
