"""Propagation: which frames a run visits, and tracking every object on one frame in batches.

Frames are T indices of the (T, Y, X[, C]) movie. A run goes forward and/or backward from a start frame;
on each frame every object that has no prompt there is tracked from its memory bank, in batches that may
mix memory layouts.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.memory_padding import condition_on_mixed_memories
from ..model.sam2 import ImageFeatures, MemoryItem
from .heap import release_free_heap
from .memory_bank import Layout, drop_old_memories, features_with_memories, memory_layout
from .object_state import FrameResult, TrackedObject
from .runtime import ModelRuntime

DIRECTIONS = ("forward", "backward", "both")

VisitPlan = list[tuple[int, bool, int]]  # (frame, reverse, first frame of its pass) per step


def check_run(direction: str, max_frames: int | None) -> None:
    """Validate propagation arguments (the start frame is checked by the frame source)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                   or max_frames < 0):
        raise ValueError(f"max_frames must be a non-negative integer or None, got {max_frames!r}")


def visit_plan(start: int, direction: str, max_frames: int | None, num_frames: int) -> VisitPlan:
    """(frame, reverse, pass start) for every step of a propagation from ``start`` (see ``propagate``)."""
    span = num_frames if max_frames is None else int(max_frames)
    last = num_frames - 1
    passes: list[tuple[range, bool]] = []
    if direction in ("forward", "both"):
        passes.append((range(start, min(start + span, last) + 1), False))
    if direction == "backward" and start > 0:
        passes.append((range(start, max(start - span, 0) - 1, -1), True))
    if direction == "both" and start > 0:
        passes.append((range(start - 1, max(start - span, 0) - 1, -1), True))
    return [(frame, reverse, order[0]) for order, reverse in passes for frame in order]


def track_frame(runtime: ModelRuntime, objects: list[TrackedObject], frame: int, reverse: bool,
                pass_start: int, batch_size: int) -> list[FrameResult]:
    """Track every object without a prompt on ``frame`` and record the results; returns each object's
    result there (its prompt's or the tracked one), in the order of ``objects``. Memories that were dropped
    are re-encoded first, frame by frame, ``batch_size`` objects at a time."""
    to_track = [obj for obj in objects if frame not in obj.cond]
    _release_on_cpu(runtime)  # what the previous step (and its label image) freed
    features = features_with_memories(runtime, to_track, frame, reverse, batch_size)
    for obj, result in zip(to_track, _track_objects(runtime, to_track, frame, features, reverse, batch_size),
                           strict=True):
        obj.tracked[frame] = result
        obj.resident_memories.add(frame)
        drop_old_memories(obj, keep_near=(frame, pass_start))
    results = []
    for obj in objects:
        obj.direction[frame] = reverse
        obj.changed()
        results.append(obj.cond[frame] if frame in obj.cond else obj.tracked[frame])
    return results


_Member = tuple[int, tuple, Layout]  # (index in objects, layout key, layout)


def _track_objects(runtime: ModelRuntime, objects: list[TrackedObject], frame: int, features: ImageFeatures,
                   reverse: bool, batch_size: int) -> list[FrameResult]:
    """Track several objects on one frame, ``batch_size`` at a time, whatever their memory layouts.

    Objects prompted on the same frames share a layout (which memory slots are filled, how far away their
    object pointers are) and go through memory attention, the mask decoder and the memory encoder
    together as they are. Objects of other layouts join the same batch with their memories padded to the
    batch's slots and masked (:func:`~napari_sam2.model.memory_padding.condition_on_mixed_memories`), which
    leaves each object's conditioning as its own pass gives it. Objects of one layout stay next to each
    other, so that a batch holds as few layouts as it can.
    """
    groups: dict[tuple, list[_Member]] = {}
    for index, obj in enumerate(objects):
        memories, pointers = memory_layout(runtime, obj, frame, reverse)
        key = (tuple(m.t_pos for m in memories), tuple(d for d, _ in pointers))
        groups.setdefault(key, []).append((index, key, (memories, pointers)))
    # Objects without memories (none while tracking: each has a prompt somewhere) take the no-memory path.
    queues = [[m for key, members in groups.items() if key[0] for m in members],
              [m for key, members in groups.items() if not key[0] for m in members]]
    results: list[FrameResult | None] = [None] * len(objects)
    for queue in queues:
        for start in range(0, len(queue), batch_size):
            batch = queue[start:start + batch_size]
            for (index, _, _), result in zip(batch, _track_batch(runtime, batch, features), strict=True):
                results[index] = result
            _release_on_cpu(runtime)
    return results


def _release_on_cpu(runtime: ModelRuntime) -> None:
    """On a CPU, give the heap's free pages back between batches (engine/heap.py: 10-30 ms against seconds
    per batch); on an accelerator the transient buffers are the device's and the call would only cost time."""
    if runtime.device.type == "cpu":
        release_free_heap()


def _track_batch(runtime: ModelRuntime, batch: list[_Member], features: ImageFeatures) -> list[FrameResult]:
    """One batched pass for objects on one frame (members of :func:`_track_objects`)."""
    model = runtime.model
    uniform = len({key for _, key, _ in batch}) == 1
    if uniform:  # joined outside autocast: CPU autocast refuses to concatenate bf16 memories under fp16
        memories, pointers = _stacked(runtime, [layout for _, _, layout in batch])
    with runtime.autocast():
        if uniform:
            conditioned = model.condition_on_memory(features, memories, pointers, runtime.num_frames)
            conditioned = conditioned.expand(len(batch), -1, -1, -1)  # no memories: one no-memory frame for all
        else:
            conditioned = condition_on_mixed_memories(model, features, [layout for _, _, layout in batch],
                                                      runtime.num_frames)
        heads = model.predict_masks(conditioned, features.high_res, multimask=True)
    new_memories = runtime.encode_memories(features, heads.high_res_masks, heads.object_score, binarize=False)
    results = runtime.stored_results(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=False)
    for result, memory in zip(results, new_memories, strict=True):
        result.maskmem = memory  # each object's own copy (it can be dropped on its own)
    return results


def _stacked(runtime: ModelRuntime, layouts: list[Layout]) -> Layout:
    """The memories and pointers of objects with one layout, joined on the batch dimension on the device."""
    device = runtime.device

    def on_device(tensors: list[torch.Tensor]) -> torch.Tensor:
        # Each to the device first (asynchronously where it is pinned host memory), then joined there.
        return torch.cat([t.to(device, non_blocking=True) for t in tensors])

    first_memories, first_pointers = layouts[0]
    memories = [MemoryItem(on_device([memories[i].features for memories, _ in layouts]), item.t_pos)
                for i, item in enumerate(first_memories)]
    pointers = [(distance, on_device([pointers[i][1] for _, pointers in layouts]))
                for i, (distance, _) in enumerate(first_pointers)]
    return memories, pointers
