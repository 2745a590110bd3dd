"""Geometry for segmenting a whole frame: point grids, crop boxes, mask boxes, stability, box NMS, small regions.

Plain torch / numpy / scipy (no torchvision), with the numerics of SAM 2's automatic mask generator
(``sam2/utils/amg.py`` and torchvision's NMS) so that the same masks survive. Coordinates follow napari:
points are (row, col) = (y, x); boxes are (y0, x0, y1, x1). Two box conventions occur, as in the reference:
*crop boxes* have exclusive ends (``frame[y0:y1, x0:x1]``), *mask boxes* hold the first and last row / column
of the mask (inclusive ends; an empty mask has the box (0, 0, 0, 0)).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch
from scipy import ndimage

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1)
EDGE_TOLERANCE = 20.0  # pixels: a mask box this close to a crop's inner edge was cut by the crop
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------- prompts and crops
def point_grid(points_per_side: int) -> np.ndarray:
    """(n², 2) cell centres of an n x n grid over the unit square, (y, x), row by row."""
    offset = 1 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    rows, cols = np.meshgrid(side, side, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=-1)


def layer_point_grids(points_per_side: int, crop_n_layers: int, downscale_factor: int) -> list[np.ndarray]:
    """One grid per crop layer: layer i has ``int(points_per_side / downscale_factor**i)`` points a side."""
    return [point_grid(int(points_per_side / downscale_factor ** i)) for i in range(crop_n_layers + 1)]


def crop_boxes(frame_shape: tuple[int, int], crop_n_layers: int, overlap_ratio: float) -> list[tuple[Box, int]]:
    """(crop box, layer) of the whole frame (layer 0) and of each crop layer: layer i >= 1 tiles the frame
    with 2^i x 2^i overlapping crops, listed column by column as the reference lists them.

    ``overlap_ratio`` is the overlap of neighbouring first-layer crops as a fraction of the frame's short
    side (halved with each further layer). Boxes are (y0, x0, y1, x1) with exclusive ends.
    """
    height, width = frame_shape
    boxes: list[tuple[Box, int]] = [((0, 0, height, width), 0)]
    for layer in range(1, crop_n_layers + 1):
        per_side = 2 ** layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_h = _crop_length(height, per_side, overlap)
        crop_w = _crop_length(width, per_side, overlap)
        starts_y = [int((crop_h - overlap) * i) for i in range(per_side)]
        starts_x = [int((crop_w - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(starts_x, starts_y):
            boxes.append(((y0, x0, min(y0 + crop_h, height), min(x0 + crop_w, width)), layer))
    return boxes


def _crop_length(length: int, count: int, overlap: int) -> int:
    return math.ceil((overlap * (count - 1) + length) / count)


# ---------------------------------------------------------------------- mask scores and boxes
def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(N,) IoU of each (N, H, W) logit map thresholded at ``threshold + offset`` and ``threshold - offset``.

    The first mask lies inside the second, so the IoU is a ratio of pixel counts; it is NaN where both are
    empty (the reference keeps that NaN, which fails any positive stability threshold).
    """
    inner = (logits > threshold + offset).sum(dim=(-2, -1))
    outer = (logits > threshold - offset).sum(dim=(-2, -1))
    return inner / outer


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 boxes (y0, x0, y1, x1) of (N, H, W) bool masks: first and last row / column that hold
    the mask (inclusive); (0, 0, 0, 0) for an empty mask."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    return torch.cat([_extent(masks.any(dim=-1)), _extent(masks.any(dim=-2))], dim=1)[:, [0, 2, 1, 3]]


def _extent(occupied: torch.Tensor) -> torch.Tensor:
    """(N, 2) first and last True index along the last axis of (N, L) bools; (0, 0) where none is True."""
    length = occupied.shape[-1]
    index = torch.arange(length, device=occupied.device)
    first = torch.where(occupied, index, length).amin(dim=-1)
    last = torch.where(occupied, index, -1).amax(dim=-1)
    empty = last < 0
    return torch.stack([first.masked_fill(empty, 0), last.masked_fill(empty, 0)], dim=1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N,) (y1 - y0) * (x1 - x0) of (N, 4) boxes, in their dtype (a one-pixel-wide mask box has area 0,
    as in the reference)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """(N, N) IoU of (N, 4) float boxes, computed as torchvision's NMS kernel does (same operation order)."""
    area = box_area(boxes)
    low = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    high = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    size = (high - low).clamp(min=0)
    inter = size[..., 0] * size[..., 1]
    return inter / (area[:, None] + area[None, :] - inter)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Boxes are visited by decreasing score (equal scores in their given order); a box is dropped when its
    IoU with a kept box exceeds ``iou_threshold``. Same result as torchvision's ``nms`` on the CPU.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order].float()
    overlaps = (box_iou_matrix(boxes) > _float32_below(iou_threshold)).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= overlaps[i]
    return order[torch.as_tensor(kept, device=order.device)]


def _float32_below(value: float) -> float:
    """The largest float32 at most ``value``: a float32 exceeds it exactly when it exceeds ``value`` itself
    (torchvision compares its float IoUs with a double threshold)."""
    below = np.float32(value)
    if float(below) > value:  # compared as Python floats: numpy would round ``value`` to float32 first
        below = np.nextafter(below, np.float32(-np.inf))
    return float(below)


def near_crop_edge(boxes: torch.Tensor, crop_box: Box, frame_box: Box, atol: float = EDGE_TOLERANCE) -> torch.Tensor:
    """(N,) whether mask boxes (frame coordinates) come within ``atol`` of an edge of ``crop_box`` that is
    not also an edge of the frame: such a mask was cut off by the crop."""
    boxes = boxes.float()
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    frame = torch.tensor(frame_box, dtype=torch.float32, device=boxes.device)
    at_crop_edge = (boxes - crop).abs() <= atol
    at_frame_edge = (boxes - frame).abs() <= atol
    return (at_crop_edge & ~at_frame_edge).any(dim=1)


# ---------------------------------------------------------------------- small regions
def small_components(planes: np.ndarray, max_area: int) -> np.ndarray:
    """Where the 8-connected components of at most ``max_area`` pixels of (N, H, W) bool planes are."""
    out = np.zeros(planes.shape, dtype=bool)
    for plane, small_out in zip(planes, out, strict=True):
        components, count = ndimage.label(plane, structure=_EIGHT_CONNECTED)
        if count:
            small = np.bincount(components.ravel()) <= max_area
            small[0] = False  # label 0 is outside the plane's True pixels
            small_out[...] = small[components]
    return out


def fill_small_regions(logits: torch.Tensor, max_hole_area: int, max_sprinkle_area: int,
                       threshold: float = 0.0, fill: float = 10.0) -> torch.Tensor:
    """(..., H, W) logits with small holes set to ``threshold + fill`` and small islands to ``threshold - fill``.

    Holes are background components (logit <= threshold), islands foreground ones, both 8-connected and of
    at most the given area, both found on the logits as given. This is what SAM 2's image predictor does
    to its low-resolution masks when the automatic generator has a ``min_mask_region_area``.
    """
    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return logits
    planes = logits.detach().float().reshape(-1, *logits.shape[-2:]).cpu().numpy()
    out = logits
    for max_area, region, value in ((max_hole_area, planes <= threshold, threshold + fill),
                                    (max_sprinkle_area, planes > threshold, threshold - fill)):
        if max_area > 0:
            small = torch.from_numpy(small_components(region, max_area)).to(logits.device).reshape(logits.shape)
            out = torch.where(small, torch.tensor(value, dtype=logits.dtype, device=logits.device), out)
    return out


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """(mask, changed): a (Y, X) bool mask without its holes (``mode="holes"``) or islands (``"islands"``)
    of fewer than ``min_area`` pixels (8-connected). Of islands that are all small, the largest stays.

    SAM 1's automatic post-pass (``remove_small_regions`` in ``amg.py``, with OpenCV there).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    region = ~mask if holes else mask
    components, count = ndimage.label(region, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    small = sizes < min_area
    if not small.any():
        return mask, False
    if holes:
        return mask | np.isin(components, np.flatnonzero(small) + 1), True
    keep = np.flatnonzero(~small) + 1
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(components, keep), True
