"""Mask prompts as the model takes them: B bool (Y, X) masks of a frame to a (B, 1, S, S) binary batch.

SAM 2 resizes a mask prompt to the S x S model input with antialiased bilinear interpolation and keeps the
pixels >= 0.5. Resizing the whole frame for each mask costs a full (Y, X) float image and its resize per
cell; here only a window around the mask's bounding box is resized where that gives the very same numbers,
and the whole axis elsewhere. Axes are napari's (Y, X); S is the model's ``image_size``.

Why a window is exact: the resize is separable and each output pixel is a weighted sum over the input
pixels under its filter. Along an axis whose size is an integer multiple of S (or S one of the axis size
times a power of two), the output grid of a window that starts on a multiple of that ratio is the frame's
grid shifted by whole pixels: every filter centre, weight and sum is computed from the same exactly
representable numbers, in the same order. A margin of empty pixels around the box keeps every output pixel
that sees the mask's pixels from seeing the window's edge. On any other axis the window spans the axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..model.resize import resize_bilinear
from .compact_mask import CompactMask

Span = tuple[int, int, int, int]  # (first input pixel, end, first output pixel, end) along one axis


def model_masks(masks: Sequence[CompactMask], image_size: int, device: torch.device) -> torch.Tensor:
    """(B, 1, S, S) float32 0 / 1 model-input masks of B masks of one frame shape, on ``device``: what
    ``resize_bilinear(mask, (S, S), antialias=True) >= 0.5`` gives for each full mask (bit for bit)."""
    out = torch.zeros(len(masks), 1, image_size, image_size, device=device)
    for index, mask in enumerate(masks):
        if mask.empty:
            continue
        row0, col0, row1, col1 = mask.bounds
        (in_y0, in_y1, out_y0, out_y1) = axis_span(row0, row1, mask.shape[0], image_size)
        (in_x0, in_x1, out_x0, out_x1) = axis_span(col0, col1, mask.shape[1], image_size)
        window = np.zeros((in_y1 - in_y0, in_x1 - in_x0), dtype=np.float32)
        window[row0 - in_y0:row1 - in_y0, col0 - in_x0:col1 - in_x0] = mask.crop
        resized = torch.from_numpy(window)[None, None].to(device)
        size = (out_y1 - out_y0, out_x1 - out_x0)
        if resized.shape[-2:] != size:
            resized = resize_bilinear(resized, size, antialias=True) >= 0.5
        out[index, 0, out_y0:out_y1, out_x0:out_x1] = resized[0, 0]
    return out


def axis_span(first: int, end: int, length: int, size: int) -> Span:
    """The input pixels [a, b) of an axis of ``length`` pixels to resize so that the output pixels [c, d)
    of the ``size``-pixel resized axis are exactly the whole axis's there, for a mask within [first, end);
    every output pixel outside [c, d) is 0. The whole axis where no window is exact."""
    if length == size:
        return first, end, first, end
    if length % size == 0:  # downscaling by an integer factor: windows start on multiples of it
        factor = length // size
        margin = 2 * factor + 1  # beyond the filter's reach (its support is `factor` pixels each side)
        start = max((first - margin) // factor, 0)
        stop = min(-(-(end + margin) // factor), size)
        return start * factor, stop * factor, start, stop
    if size % length == 0 and _power_of_two(size // length):  # upscaling by 2, 4, ...: every pixel starts one
        factor = size // length
        start, stop = max(first - 2, 0), min(end + 2, length)
        return start, stop, start * factor, stop * factor
    return 0, length, 0, size


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0
