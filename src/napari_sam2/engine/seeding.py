"""Seeding a session from an existing segmentation: every label of a label image becomes a mask prompt.

The labels are read once per frame and each becomes a :class:`~napari_sam2.engine.compact_mask.CompactMask`
(its bounding-box crop), so hundreds of cells cost their boxes, not a full (Y, X) mask each. Label images are
(Y, X), label stacks (T, Y, X) (napari's axes); label value = object id, 0 = background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .compact_mask import CompactMask
from .prompt_checks import FrameShape, check_obj_id

LabelPrompt = tuple[int, int, CompactMask]  # (frame, obj_id, mask)


def label_prompts(labels: Any, frames: list[int], obj_ids: Sequence[int] | None, frame_shape: FrameShape,
                  num_frames: int) -> list[LabelPrompt]:
    """(frame, obj_id, mask) for every label on ``frames`` (checked T indices) of a (T, Y, X) label stack, or
    of a (Y, X) label image of a single frame; only ``obj_ids`` if given. Frame by frame in the given order,
    ids ascending within a frame. Only the given frames of a stack are read; every frame is checked (ValueError)
    before this returns."""
    shape = tuple(getattr(labels, "shape", np.shape(labels)))
    if len(shape) == 2 and len(frames) != 1:
        raise ValueError(f"a (Y, X) label image belongs to one frame, but {len(frames)} frames were given")
    if shape not in (frame_shape, (num_frames, *frame_shape)):
        raise ValueError(f"labels must be (Y, X) = {frame_shape} or (T, Y, X) = "
                         f"{(num_frames, *frame_shape)}, got shape {shape}")
    wanted = None if obj_ids is None else {check_obj_id(i) for i in obj_ids}
    prompts: list[LabelPrompt] = []
    for t in frames:
        image = np.asarray(labels if len(shape) == 2 else labels[t])
        if image.dtype.kind not in "iub" or (image.dtype.kind == "i" and image.min(initial=0) < 0):
            raise ValueError(f"labels must be non-negative integers (0 = background), got dtype {image.dtype}"
                             f"{' with negative values' if image.dtype.kind == 'i' else ''} on frame {t}")
        prompts.extend((t, obj_id, mask) for obj_id, mask in image_masks(image, wanted))
    return prompts


def image_masks(image: np.ndarray, wanted: set[int] | None = None) -> list[tuple[int, CompactMask]]:
    """(label, mask) of every non-zero label of a (Y, X) label image (only ``wanted`` ones if given), labels
    ascending: one pass over the labelled pixels finds every label's bounding box, then each is cropped."""
    flat = image.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return []
    values = flat[where]
    order = np.argsort(values, kind="stable")
    values, where = values[order], where[order]
    firsts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    rows, cols = np.divmod(where, image.shape[1])
    boxes = zip(values[firsts].tolist(), np.minimum.reduceat(rows, firsts), np.minimum.reduceat(cols, firsts),
                np.maximum.reduceat(rows, firsts) + 1, np.maximum.reduceat(cols, firsts) + 1, strict=True)
    masks = []
    for label, row0, col0, row1, col1 in boxes:
        label = int(label)
        if wanted is None or label in wanted:
            crop = image[row0:row1, col0:col1] == label
            masks.append((label, CompactMask.cropped(crop, (int(row0), int(col0)), image.shape)))
    return masks
