"""Applying validated prompts: clicks and boxes through the SAM heads, masks taken as the object's shape.

Prompts arrive in napari coordinates of the frame ((row, col) = (y, x) points, (y0, x0, y1, x1) boxes,
(Y, X) masks; see :mod:`~napari_sam2.engine.prompt_checks`) and become model-space (x, y) on the S x S
input here. A prompt's result is *pending* until the next propagation makes its frame a conditioning frame.
Each function computes everything first and changes the object only at the end, so a failure leaves the
session as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..model.sam2 import HeadOutput
from .compact_mask import CompactMask
from .mask_input import model_masks
from .memory_bank import condition
from .object_state import FramePrompt, FrameResult, TrackedObject
from .precompute import ConditionedCache
from .runtime import ModelRuntime

PREV_LOGIT_CLAMP = 32.0  # previous logits fed back as a mask prompt are clamped to +-32, as in the reference

Objects = dict[int, TrackedObject]
MaskPrompt = tuple[int, int, CompactMask]  # (frame, obj_id, bool (Y, X) mask kept compact)


def click_prompt(objects: Objects, frame: int, obj_id: int, points: np.ndarray, labels: np.ndarray,
                 clear_old_points: bool) -> FramePrompt:
    """The frame's new click prompt: these clicks alone, or added to the clicks (and box) already there."""
    obj = objects.get(obj_id)
    steps = obj.prompt_steps.get(frame) if obj is not None else None
    old = steps[-1] if steps else None
    if not clear_old_points and old is not None and old.compact_mask is None:
        return FramePrompt(np.concatenate([old.points, points]), np.concatenate([old.labels, labels]), old.box)
    return FramePrompt(points, labels)


def apply_click_prompt(runtime: ModelRuntime, objects: Objects, precomputed: ConditionedCache, frame: int,
                       obj_id: int, prompt: FramePrompt) -> None:
    """Run the SAM heads for a click / box prompt and record it as the object's pending result on ``frame``.

    The frame's earlier result (if any) is fed back as a mask prompt, as in SAM 2. On a frame the object
    was tracked on, the features are conditioned on its memories first, unless ``precomputed`` holds that
    conditioning still valid for this object (see :meth:`TrackingSession.precompute`).
    """
    obj = objects.get(obj_id) or TrackedObject(obj_id)
    frame_shape = (runtime.source.height, runtime.source.width)
    coords = to_model_xy(prompt.points, frame_shape, runtime.image_size)
    labels = torch.tensor(prompt.labels.astype(np.int32))[None]
    if prompt.box is not None:
        coords = torch.cat([to_model_xy(prompt.box.reshape(2, 2), frame_shape, runtime.image_size), coords], dim=1)
        labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labels], dim=1)
    features = runtime.features.get(frame)
    previous = obj.latest(frame)
    mask_prompt = None
    if previous is not None:
        mask_prompt = runtime.filled(previous.raw_logits).to(runtime.device)
        mask_prompt = mask_prompt.clamp(-PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)
    initial = frame not in obj.direction
    with runtime.autocast():
        conditioned = precomputed.take(obj, frame)
        if conditioned is None:
            conditioned = condition(runtime, obj, frame, features, obj.direction.get(frame, False), initial=initial)
        heads = runtime.model.predict_masks(conditioned, features.high_res, coords.to(runtime.device),
                                            labels.to(runtime.device), mask_input=mask_prompt,
                                            multimask=labels.shape[1] <= 1)
    prompt.refines_result = previous is not None
    _record(runtime, objects, obj, frame, prompt, heads)


def apply_mask_prompt(runtime: ModelRuntime, objects: Objects, frame: int, obj_id: int,
                      mask: np.ndarray | CompactMask) -> None:
    """Take a bool (Y, X) mask as the object's exact shape on ``frame`` (a mask prompt)."""
    apply_mask_prompts(runtime, objects, [(frame, obj_id, CompactMask.of(mask))], batch_size=1)


def apply_mask_prompts(runtime: ModelRuntime, objects: Objects, prompts: Sequence[MaskPrompt],
                       batch_size: int) -> None:
    """Take each (frame, obj_id, mask) as that object's exact shape on that frame, in order (as many
    :func:`apply_mask_prompt` calls would), with ``batch_size`` masks of a frame per pass of the SAM heads.

    Masks (napari (Y, X) at the frame's resolution) go to the model's S x S input through
    :func:`~napari_sam2.engine.mask_input.model_masks`; a batch holds B of them there (B x S x S float32).
    Every result is computed before the first object changes.
    """
    by_frame: dict[int, list[int]] = {}
    for index, (frame, _, _) in enumerate(prompts):
        by_frame.setdefault(frame, []).append(index)
    results: list[FrameResult | None] = [None] * len(prompts)
    for frame, indices in by_frame.items():
        features = runtime.features.get(frame)
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            masks = model_masks([prompts[i][2] for i in batch], runtime.image_size, runtime.device)
            with runtime.autocast():
                feat = features.feat.expand(len(batch), -1, -1, -1)
                heads = runtime.model.mask_as_output(feat, features.high_res, masks)
            # Stored as computed: should that fail (an fp16 overflow), no object has changed yet.
            stored = runtime.stored_results(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
            for index, result in zip(batch, stored, strict=True):
                results[index] = result
    for (frame, obj_id, mask), result in zip(prompts, results, strict=True):
        obj = objects.get(obj_id) or TrackedObject(obj_id)
        obj.record_prompt(frame, FramePrompt(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), mask=mask))
        obj.pending[frame] = result
        objects.setdefault(obj_id, obj)


def _record(runtime: ModelRuntime, objects: Objects, obj: TrackedObject, frame: int, prompt: FramePrompt,
            heads: HeadOutput) -> None:
    """Keep a computed prompt and its result (pending until the next propagation); a new object joins."""
    # Stored first: should that fail (an fp16 overflow), the object is left as it was.
    result = runtime.stored_result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
    obj.record_prompt(frame, prompt)
    obj.pending[frame] = result
    objects.setdefault(obj.obj_id, obj)


def clear_frame_prompts(obj: TrackedObject, frame: int) -> None:
    """Remove the object's prompts on ``frame``; its last result there stays as an ordinary tracked result."""
    obj.prompt_steps.pop(frame, None)
    obj.pending.pop(frame, None)
    result = obj.cond.pop(frame, None)
    if result is not None:
        obj.tracked[frame] = result
        obj.resident_memories.add(frame)
        obj.direction.pop(frame, None)
    obj.changed()


def to_model_xy(points: np.ndarray, frame_shape: tuple[int, int], image_size: int) -> torch.Tensor:
    """(N, 2) napari (row, col) pixels of a (Y, X) frame to (1, N, 2) model-space (x, y) on the S x S input."""
    height, width = frame_shape
    xy = torch.tensor(points[:, ::-1].copy(), dtype=torch.float32)[None]
    return xy / torch.tensor([width, height]) * image_size
