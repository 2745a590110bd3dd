"""Turning SAM 2 mask logits into what users see: small holes filled, overlapping objects resolved."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

HOLE_FILL_LOGIT = 0.1  # the small positive score the reference writes into filled holes
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Set background components (logit <= 0, 8-connected) of at most ``max_area`` pixels to 0.1.

    Works on (..., H, W) logits on any device. The reference does this only with its CUDA extension
    and silently skips it elsewhere; here it runs everywhere, with scipy's labelling on the CPU (the
    masks are the model's low-resolution 256 x 256 logits, so the copy is cheap). CPU float32 / float64
    logits are thresholded and filled in numpy: a torch op on a 256 x 256 plane is split across the
    intra-op threads, and on a busy machine each such split waits for a core (milliseconds per click).
    """
    if max_area <= 0:
        return logits
    on_numpy = logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64) \
        and not logits.requires_grad
    values = logits.numpy() if on_numpy else None
    background = (values <= 0) if on_numpy else (logits <= 0).cpu().numpy()
    holes = _small_components(background.reshape(-1, *logits.shape[-2:]), max_area)
    if holes is None:
        return logits
    holes = holes.reshape(logits.shape)
    if on_numpy:
        filled = values.copy()
        filled[holes] = HOLE_FILL_LOGIT
        return torch.from_numpy(filled)
    is_hole = torch.from_numpy(holes).to(logits.device)
    return torch.where(is_hole, torch.tensor(HOLE_FILL_LOGIT, dtype=logits.dtype, device=logits.device), logits)


def _small_components(background: np.ndarray, max_area: int) -> np.ndarray | None:
    """(N, H, W) bool planes -> where their 8-connected components of at most ``max_area`` pixels are,
    or None where there are none (the usual case, which then costs no full-size mask)."""
    holes = None
    for i, plane in enumerate(background):
        components, count = ndimage.label(plane, structure=_EIGHT_CONNECTED)
        if count == 0:
            continue
        small = np.bincount(components.ravel()) <= max_area
        small[0] = False  # label 0 is the foreground
        if not small.any():
            continue
        if holes is None:
            holes = np.zeros(background.shape, dtype=bool)
        holes[i] = small[components]
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
