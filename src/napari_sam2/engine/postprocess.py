"""Turning SAM 2 mask logits into what users see: small holes filled, overlapping objects resolved."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

HOLE_FILL_LOGIT = 0.1  # the small positive score the reference writes into filled holes
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def fill_holes(logits: torch.Tensor, max_area: int, in_place: bool = False) -> torch.Tensor:
    """Set background components (logit <= 0, 8-connected) of at most ``max_area`` pixels to 0.1.

    Works on (..., H, W) logits on any device, every plane on its own: pass all objects of a frame as one
    (N, 1, H, W) stack, so that a frame costs one call (and on an accelerator one copy to the host and
    back) whatever the object count. The reference does this only with its CUDA extension and silently
    skips it elsewhere; here it runs everywhere, with scipy's labelling on the CPU (the masks are the
    model's low-resolution S/4 x S/4 logits). Each plane is labelled only inside the bounding box of its
    foreground, grown by one pixel (see :func:`_small_components`), so the cost follows the objects' areas.
    CPU float32 / float64 logits are thresholded and filled in numpy: a torch op on a 256 x 256 plane is
    split across the intra-op threads, and on a busy machine each such split waits for a core.

    Returns ``logits`` itself when nothing is filled, else the filled logits: a new tensor (the input is
    not changed) unless ``in_place`` (for a contiguous stack the caller owns: no copy of the whole stack).
    """
    if max_area <= 0 or logits.numel() == 0:
        return logits
    in_place = in_place and logits.is_contiguous() and not logits.requires_grad
    planes = logits.detach().reshape(-1, *logits.shape[-2:])
    on_numpy = logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64) \
        and not logits.requires_grad
    if on_numpy:
        values = planes.numpy()
        holes = _small_components(_LogitPlanes(values), max_area)
        if not holes:
            return logits
        filled = values if in_place else values.copy()
        for i, rows, cols, hole in holes:
            filled[i, rows, cols][hole] = HOLE_FILL_LOGIT
        return logits if in_place else torch.from_numpy(filled.reshape(logits.shape))
    background = (planes <= 0).cpu().numpy()  # one copy to the host for the whole stack
    holes = _small_components(_BackgroundPlanes(background), max_area)
    if not holes:
        return logits
    is_hole = np.zeros(background.shape, dtype=bool)
    for i, rows, cols, hole in holes:
        is_hole[i, rows, cols] = hole
    is_hole = torch.from_numpy(is_hole.reshape(logits.shape)).to(logits.device)
    if in_place:
        return logits.masked_fill_(is_hole, HOLE_FILL_LOGIT)
    return torch.where(is_hole, torch.tensor(HOLE_FILL_LOGIT, dtype=logits.dtype, device=logits.device), logits)


Hole = tuple[int, slice, slice, np.ndarray]  # plane, rows, cols, where the holes are inside that window


class _LogitPlanes:
    """(N, H, W) logits as :func:`_small_components` reads them: background is logit <= 0 (NaN is not)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape = values.shape

    def rows_with_foreground(self) -> np.ndarray:
        return ~(self.values.max(axis=2) <= 0)  # one contiguous reduction, no full-size threshold

    def cols_with_foreground(self, i: int, rows: slice) -> np.ndarray:
        return ~(self.values[i, rows].max(axis=0) <= 0)

    def background(self, i: int, rows: slice, cols: slice) -> np.ndarray:
        return self.values[i, rows, cols] <= 0


class _BackgroundPlanes:
    """(N, H, W) bool background planes as :func:`_small_components` reads them."""

    def __init__(self, background: np.ndarray) -> None:
        self.mask = background
        self.shape = background.shape

    def rows_with_foreground(self) -> np.ndarray:
        return ~self.mask.all(axis=2)

    def cols_with_foreground(self, i: int, rows: slice) -> np.ndarray:
        return ~self.mask[i, rows].all(axis=0)

    def background(self, i: int, rows: slice, cols: slice) -> np.ndarray:
        return self.mask[i, rows, cols]


def _small_components(planes: _LogitPlanes | _BackgroundPlanes, max_area: int) -> list[Hole]:
    """The 8-connected background components of at most ``max_area`` pixels of (N, H, W) ``planes``, as
    windows of bool masks (none, the usual case, costs no full-size mask).

    Only the foreground's bounding box grown by one pixel is labelled, and exactly: every pixel outside the
    box is background, and so are the full rows above and below it and the full columns beside it, so a
    component reaching the one-pixel ring has at least min(H, W) pixels; while that exceeds ``max_area``
    such components are no holes, and a component inside the box has the same pixels in the window as in
    the plane. Otherwise whole planes are labelled.
    """
    n, height, width = planes.shape
    crop = min(height, width) > max_area
    fg_rows = planes.rows_with_foreground()
    holes: list[Hole] = []
    for i in range(n):
        rows_with = np.flatnonzero(fg_rows[i])
        if rows_with.size == 0:  # all background: one component of the whole plane
            if height * width <= max_area:
                holes.append((i, slice(None), slice(None), np.ones((height, width), dtype=bool)))
            continue
        first_row, last_row = int(rows_with[0]), int(rows_with[-1])
        cols_with = np.flatnonzero(planes.cols_with_foreground(i, slice(first_row, last_row + 1)))
        first_col, last_col = int(cols_with[0]), int(cols_with[-1])
        # Which sides of the window are a ring line outside the box (all background, part of the outside).
        ring = (crop and first_row > 0, crop and last_row < height - 1, crop and first_col > 0,
                crop and last_col < width - 1)
        rows = slice(first_row - ring[0], last_row + 1 + ring[1]) if crop else slice(0, height)
        cols = slice(first_col - ring[2], last_col + 1 + ring[3]) if crop else slice(0, width)
        components, count = ndimage.label(planes.background(i, rows, cols), structure=_EIGHT_CONNECTED)
        if count == 0:
            continue
        small = np.bincount(components.ravel(), minlength=count + 1) <= max_area
        small[0] = False  # label 0 is the foreground
        for side, outside in zip((components[0], components[-1], components[:, 0], components[:, -1]), ring):
            if outside:
                small[side] = False
        if small.any():
            holes.append((i, rows, cols, small[components]))
    return holes


def labels_from_logits(obj_ids: Sequence[int], logits: np.ndarray, threshold: float = 0.0,
                       dtype: np.dtype | type | None = None) -> np.ndarray:
    """Label image (Y, X) from per-object logits (n_objects, Y, X): pixel = id of the object with the
    highest logit above ``threshold``, 0 elsewhere. Axis order is napari's (row, col) = (y, x).

    The dtype is the smallest unsigned integer type that holds the largest id unless given.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] != len(obj_ids):
        raise ValueError(f"logits must be (n_objects, Y, X) with n_objects = {len(obj_ids)}, got {logits.shape}")
    ids = np.asarray(list(obj_ids), dtype=np.int64)
    if dtype is None:
        dtype = np.min_scalar_type(max(int(ids.max(initial=0)), 1))
    out = np.zeros(logits.shape[1:], dtype=dtype)
    if len(ids) == 0:
        return out
    best = np.argmax(logits, axis=0)
    best_logit = np.take_along_axis(logits, best[None], axis=0)[0]
    foreground = best_logit > threshold
    out[foreground] = ids[best][foreground]
    return out
