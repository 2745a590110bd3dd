"""Validation of prompts as users give them, before anything in a session changes.

Coordinates are napari's: points are (row, col) = (y, x) pixels of a frame (pixel centres at integers),
boxes (y0, x0, y1, x1), masks and label images (Y, X) at the frame's resolution, label stacks (T, Y, X).
Every check raises ValueError with a message saying what is wrong and returns the value in the form the
session stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .object_state import FramePrompt

FrameShape = tuple[int, int]  # (Y, X)


def check_obj_id(obj_id: Any) -> int:
    """An object id: an integer >= 1 (the label value the object gets)."""
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)) or obj_id < 1:
        raise ValueError(f"obj_id must be an integer >= 1 (the label value of the object), got {obj_id!r}")
    return int(obj_id)


def check_points(points: Any, labels: Any, frame_shape: FrameShape,
                 allow_empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validated (row, col) clicks inside the frame: (N, 2) float64 coordinates and (N,) int64 labels
    (1 positive, 0 negative)."""
    pts = np.asarray(points if points is not None else np.zeros((0, 2)), dtype=np.float64)
    if pts.ndim == 1 and pts.size == 2:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be an (N, 2) array of (row, col) = (y, x) coordinates, got shape {pts.shape}")
    if len(pts) == 0 and not allow_empty:
        raise ValueError("points is empty; give at least one (row, col) click")
    lab = np.asarray(labels if labels is not None else np.zeros(0)).reshape(-1)
    if lab.shape[0] != len(pts):
        raise ValueError(f"labels must have one entry per point: {len(pts)} points, {lab.shape[0]} labels")
    if lab.size and not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {np.unique(lab).tolist()}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or infinite coordinates")
    height, width = frame_shape
    outside = (pts[:, 0] < -0.5) | (pts[:, 0] > height - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > width - 0.5)
    if outside.any():
        bad = pts[outside][0].tolist()
        raise ValueError(f"point (row, col) = {tuple(bad)} is outside the frame of shape (Y, X) = {(height, width)}")
    return pts.copy(), lab.astype(np.int64)


def check_box(box: Sequence[float], frame_shape: FrameShape) -> np.ndarray:
    """A box (y0, x0, y1, x1) inside the frame, corners sorted so that y0 < y1 and x0 < x1."""
    corners = np.asarray(box, dtype=np.float64)
    if corners.shape != (4,) or not np.isfinite(corners).all():
        raise ValueError(f"box must be four finite numbers (y0, x0, y1, x1), got {box!r}")
    y0, y1 = sorted(corners[[0, 2]])
    x0, x1 = sorted(corners[[1, 3]])
    if y0 == y1 or x0 == x1:
        raise ValueError(f"box {tuple(corners)} has zero height or width")
    sorted_corners = np.array([y0, x0, y1, x1])
    check_points(sorted_corners.reshape(2, 2), [1, 1], frame_shape, allow_empty=False)
    return sorted_corners


def check_mask(mask: Any, frame_shape: FrameShape) -> np.ndarray:
    """A bool (Y, X) mask of the frame's shape (0/1 integers are accepted)."""
    mask_array = np.asarray(mask)
    if mask_array.shape != frame_shape:
        raise ValueError(f"mask must have the frame's shape (Y, X) = {frame_shape}, got {mask_array.shape}")
    if mask_array.dtype != bool:
        if not np.isin(mask_array, (0, 1)).all():
            raise ValueError("mask must be boolean (or 0/1); for a label image pass (labels == obj_id)")
        mask_array = mask_array.astype(bool)
    return mask_array


def check_saved_prompt(prompt: FramePrompt, frame: int, obj_id: int, frame_shape: FrameShape) -> None:
    """A recorded prompt (e.g. from a session file) that can be applied to frames of ``frame_shape``."""
    if prompt.compact_mask is not None:  # its shape, without rebuilding the full mask
        if tuple(prompt.compact_mask.shape) != tuple(frame_shape):
            raise ValueError(f"mask prompt for object {obj_id} on frame {frame} has shape "
                             f"{prompt.compact_mask.shape}, the frames are {frame_shape}")
        return
    check_points(prompt.points, prompt.labels, frame_shape, allow_empty=prompt.box is not None)
    if prompt.box is not None:
        check_points(prompt.box.reshape(2, 2), [1, 1], frame_shape, allow_empty=False)
