"""Segment everything on one frame: SAM 2's automatic mask generator, on our model.

A grid of single-point prompts is run through the SAM heads in batches; every proposed mask (three per
point with ``multimask_output``) is kept only if its predicted IoU and its stability are high enough and it
is not cut off by a crop's edge; duplicates are removed by box NMS, within each crop and then across crops.
Semantics, defaults and numerics follow the reference's ``SAM2AutomaticMaskGenerator`` with its
``SAM2ImagePredictor`` (sam2 1.1.0): the frame (or crop) is stretched to the S x S model input, features get
the no-memory embedding, and low-resolution logits are upsampled straight to the crop's own resolution.

Coordinates follow napari: frames are (Y, X[, 3]), points (row, col) = (y, x), boxes (y0, x0, y1, x1).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.interrupt import checkpoint
from ..model.sam2 import ImageFeatures, SAM2Model
from .compact_mask import CompactMask
from .frames import square_model_input
from .mask_geometry import (
    Box,
    box_area,
    box_nms,
    crop_boxes,
    fill_small_regions,
    layer_point_grids,
    mask_boxes,
    near_crop_edge,
    remove_small_regions,
    stability_score,
)

PREV_LOGIT_CLAMP = 32.0  # low-resolution logits fed back as a mask prompt (use_m2m) are clamped, as in SAM 2
UPSAMPLE_BYTES = 64 * 2**20  # float32 full-resolution logits made at a time (at least one mask's)
Autocast = Callable[[], contextlib.AbstractContextManager]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AutomaticMaskOptions:
    """Settings of :func:`generate_masks`, with the defaults of the reference's ``SAM2AutomaticMaskGenerator``.

    ``points_per_side``: an n x n grid of point prompts per crop (layer i: ``n / crop_n_points_downscale_factor**i``);
    or explicit ``point_grids``, one (P, 2) array of (row, col) = (y, x) in [0, 1] per crop layer.
    ``points_per_batch``: prompts decoded together. ``pred_iou_thresh`` (strict) and ``stability_score_thresh``
    drop masks the model itself rates low, or whose area changes when the logit cut-off moves by
    ``stability_score_offset`` (0 turns a filter off). ``mask_threshold``: the logit cut-off of the masks.
    ``box_nms_thresh`` / ``crop_nms_thresh``: box-IoU above which a mask duplicates a better one, within a crop /
    across crops (masks of smaller crops win). ``crop_n_layers`` > 0 also segments 2^i x 2^i overlapping
    crops (overlap ``crop_overlap_ratio`` of the short side in layer 1). ``min_mask_region_area`` > 0 fills
    holes and removes islands of at most that many pixels of the low-resolution (S/4) masks, as SAM 2's
    image predictor does. ``use_m2m`` refines each mask once, fed back as a mask prompt.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: Sequence[np.ndarray] | None = None
    min_mask_region_area: int = 0
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if self.points_per_side is not None and self.points_per_side < 1:
            raise ValueError(f"points_per_side must be at least 1, got {self.points_per_side}")
        if self.point_grids is not None and len(self.point_grids) < self.crop_n_layers + 1:
            raise ValueError(f"point_grids has {len(self.point_grids)} grids; crop_n_layers={self.crop_n_layers} "
                             f"needs {self.crop_n_layers + 1} (one per layer, the whole frame first)")
        if self.points_per_batch < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {self.points_per_batch}")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise ValueError("crop_n_layers must be >= 0 and crop_n_points_downscale_factor >= 1")

    def grids(self) -> list[np.ndarray]:
        """The (P, 2) normalised (y, x) point grid of each crop layer."""
        if self.point_grids is not None:
            return [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in self.point_grids]
        return layer_point_grids(self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)


@dataclass(frozen=True)
class AutomaticMask:
    """One mask found on a frame. Coordinates follow napari ((row, col) = (y, x)).

    ``mask`` is the mask at the frame's resolution, kept as the crop of its box (a
    :class:`~napari_sam2.engine.compact_mask.CompactMask`: hundreds of masks on a large frame cost their boxes,
    not masks x pixels); ``segmentation`` rebuilds the bool (Y, X) array. ``area`` is its pixel count; ``bbox``
    (y0, x0, y1, x1) bounds it with exclusive ends (``segmentation[y0:y1, x0:x1]``; (0, 0, 0, 0) when empty);
    ``point`` is the (row, col) prompt that produced it, ``crop_box`` the (y0, x0, y1, x1) crop it was found
    in (exclusive ends). ``predicted_iou`` and ``stability_score`` are the two quality scores it passed.
    """

    mask: CompactMask
    area: int
    bbox: Box
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    crop_box: Box

    @property
    def segmentation(self) -> np.ndarray:
        """The bool (Y, X) mask at the frame's resolution (a new array)."""
        return self.mask.full()

    def as_sam_record(self) -> dict[str, Any]:
        """The reference generator's record of this mask: its keys, (x, y) points and XYWH boxes, where a box's
        width / height is last minus first column / row (one less than the pixel extent, as in SAM)."""
        y0, x0, y1, x1 = self.bbox
        bbox = [float(x0), float(y0), float(x1 - 1 - x0), float(y1 - 1 - y0)] if self.area else [0.0] * 4
        cy0, cx0, cy1, cx1 = self.crop_box
        return {"segmentation": self.segmentation, "area": self.area, "bbox": bbox,
                "predicted_iou": self.predicted_iou, "point_coords": [[self.point[1], self.point[0]]],
                "stability_score": self.stability_score,
                "crop_box": [float(cx0), float(cy0), float(cx1 - cx0), float(cy1 - cy0)]}


@dataclass
class _Candidates:
    """Masks that passed the filters so far, in frame coordinates: scores (N,), (row, col) prompts (N, 2),
    inclusive mask boxes and crop boxes (N, 4), and each mask as the bool piece inside its box."""

    ious: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor
    crops: torch.Tensor
    pieces: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: list[_Candidates]) -> _Candidates:
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in
                     ("ious", "stability", "points", "boxes", "crops")),
                   pieces=[piece for p in parts for piece in p.pieces])

    def take(self, index: torch.Tensor) -> _Candidates:
        rows = index.cpu().tolist()
        return _Candidates(self.ious[index], self.stability[index], self.points[index], self.boxes[index],
                           self.crops[index], [self.pieces[i] for i in rows])

    def masks(self, frame_shape: tuple[int, int]) -> list[AutomaticMask]:
        out = []
        for i, piece in enumerate(self.pieces):
            y0, x0, y1, x1 = (int(v) for v in self.boxes[i])
            mask = CompactMask.cropped(piece, (y0, x0), frame_shape)
            area = int(piece.sum())
            bbox = _exclusive_box((y0, x0, y1, x1), area)
            point = tuple(float(v) for v in self.points[i])
            crop = tuple(int(v) for v in self.crops[i])
            out.append(AutomaticMask(mask, area, bbox, float(self.ious[i]), float(self.stability[i]),
                                     point, crop))
        return out


def _exclusive_box(box: Sequence[int], area: int) -> Box:
    """A mask box with inclusive ends as (y0, x0, y1, x1) with exclusive ends ((0, 0, 0, 0) for an empty mask)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    return (y0, x0, y1 + 1, x1 + 1) if area else (0, 0, 0, 0)


def crop_model_input(frame: np.ndarray, crop_box: Box, image_size: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 3, S, S) model input of the (y0, x0, y1, x1) region of a (Y, X, 3) [0, 1] frame
    (``FrameSource.normalized``): stretched to S x S and ImageNet-normalised as ``FrameSource.model_input``
    prepares whole frames (for the whole frame the two are identical)."""
    y0, x0, y1, x1 = crop_box
    image = torch.from_numpy(np.ascontiguousarray(frame[y0:y1, x0:x1], dtype=np.float32)).to(device)
    return square_model_input(image, image_size)


@torch.no_grad()
def generate_masks(model: SAM2Model, frame: np.ndarray, options: AutomaticMaskOptions | None = None, *,
                   features: ImageFeatures | None = None, autocast: Autocast | None = None,
                   progress: Progress | None = None) -> list[AutomaticMask]:
    """Every object SAM 2 finds on one frame, best first, as :class:`AutomaticMask` records.

    ``frame`` is the (Y, X, 3) float32 [0, 1] frame (``FrameSource.normalized``); crops are cut from it and
    stretched to the model's S x S input. ``features`` are the whole frame's image features if already
    encoded (e.g. the session's cached ones; they must come from ``crop_model_input`` of the whole frame,
    i.e. ``FrameSource.model_input``). ``autocast`` gives the context model calls run in (the session's
    precision). ``progress(done, total)`` is called after each batch of prompts. A stop check installed with
    :func:`napari_sam2.model.interrupt.stop_when` is polled between batches.
    """
    options = options or AutomaticMaskOptions()
    autocast = autocast or contextlib.nullcontext
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (Y, X, 3) [0, 1] intensities (FrameSource.normalized), got {frame.shape}")
    frame_shape = (int(frame.shape[0]), int(frame.shape[1]))
    grids = options.grids()
    crops = crop_boxes(frame_shape, options.crop_n_layers, options.crop_overlap_ratio)
    total = sum(-(-len(grids[layer]) // options.points_per_batch) for _, layer in crops)
    counter = _Counter(total, progress)
    parts = []
    for box, layer in crops:
        crop_features = features if layer == 0 else None  # layer 0 is the whole frame
        if crop_features is None:
            image = crop_model_input(frame, box, model.image_size, model.device)
            with autocast():
                crop_features = model.encode_image(image)
        parts.append(_segment_crop(model, crop_features, box, grids[layer], frame_shape, options, autocast, counter))
    found = _Candidates.concat(parts)
    if len(crops) > 1:
        # Across crops, a mask from a smaller crop (seen at a higher resolution) beats its duplicates.
        keep = box_nms(found.boxes.float(), 1 / box_area(found.crops), options.crop_nms_thresh)
        found = found.take(keep)
    return found.masks(frame_shape)


@dataclass
class _Counter:
    total: int
    progress: Progress | None
    done: int = 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
        checkpoint()


def _segment_crop(model: SAM2Model, features: ImageFeatures, crop_box: Box, grid: np.ndarray,
                  frame_shape: tuple[int, int], options: AutomaticMaskOptions, autocast: Autocast,
                  counter: _Counter) -> _Candidates:
    """The masks of one crop that pass the filters, without duplicates, in frame coordinates."""
    y0, x0, y1, x1 = crop_box
    # Prompts in the crop's pixels, (row, col) = (y, x); float32, as the reference's.
    points = torch.as_tensor(grid * np.array([y1 - y0, x1 - x0]), dtype=torch.float32)
    with autocast():
        feat = model.condition_on_memory(features, [], [], num_frames=1)  # + the no-memory embedding
    parts = []
    for start in range(0, len(points), options.points_per_batch):
        parts.append(_segment_batch(model, feat, features.high_res, points[start:start + options.points_per_batch],
                                    crop_box, frame_shape, options, autocast))
        counter.step()
    found = _Candidates.concat(parts)
    found = found.take(box_nms(found.boxes.float(), found.ious, options.box_nms_thresh))
    offset = torch.tensor([y0, x0, y0, x0])
    return _Candidates(found.ious, found.stability, found.points + offset[:2], found.boxes + offset,
                       offset.new_tensor(crop_box).expand(len(found.pieces), 4), found.pieces)


def _segment_batch(model: SAM2Model, feat: torch.Tensor, high_res: list[torch.Tensor], points: torch.Tensor,
                   crop_box: Box, frame_shape: tuple[int, int], options: AutomaticMaskOptions,
                   autocast: Autocast) -> _Candidates:
    """Decode one batch of (row, col) prompts (crop pixels) and keep the masks that pass the filters."""
    y0, x0, y1, x1 = crop_box
    crop_shape = (y1 - y0, x1 - x0)
    low, ious = _decode(model, feat, high_res, points, crop_shape, options.multimask_output, autocast)
    per_point = low.shape[1]
    low, ious = low.flatten(0, 1), ious.flatten(0, 1)
    points = points.repeat_interleave(per_point, dim=0)
    if options.use_m2m:
        low, ious = _refine(model, feat, high_res, points, low, crop_shape, options.points_per_batch, autocast)
    keep = torch.arange(len(ious), device=ious.device)
    if options.pred_iou_thresh > 0:  # before upsampling: only masks that pass are made at full resolution
        keep = keep[ious[keep] > options.pred_iou_thresh]
    low = fill_small_regions(low[keep], options.min_mask_region_area, options.min_mask_region_area)
    # Full-resolution logits a few masks at a time: memory stays bounded on large frames.
    chunk = max(1, UPSAMPLE_BYTES // (4 * (crop_box[2] - crop_box[0]) * (crop_box[3] - crop_box[1])))
    parts = [_full_resolution(low[i:i + chunk], keep[i:i + chunk], crop_box, frame_shape, options)
             for i in range(0, max(len(keep), 1), chunk)]  # at least one part, if empty
    kept, stability, boxes = (torch.cat([part[k] for part in parts]) for k in range(3))
    pieces = [piece for part in parts for piece in part[3]]
    crops = torch.zeros(len(kept), 4, dtype=torch.int64)  # set by the caller
    return _Candidates(ious.cpu()[kept], stability, points[kept], boxes, crops, pieces)


def _full_resolution(low: torch.Tensor, keep: torch.Tensor, crop_box: Box, frame_shape: tuple[int, int],
                     options: AutomaticMaskOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """Low-resolution logits (n, S/4, S/4) upsampled to the crop, filtered by stability and the crop's edges:
    (kept indices, stability scores, inclusive crop-pixel boxes, each mask's bool piece inside its box), on the CPU."""
    y0, x0, y1, x1 = crop_box
    logits = F.interpolate(low[:, None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[:, 0]
    stability = stability_score(logits, options.mask_threshold, options.stability_score_offset)
    if options.stability_score_thresh > 0:
        stable = stability >= options.stability_score_thresh
        keep, logits, stability = keep[stable], logits[stable], stability[stable]
    masks = logits > options.mask_threshold
    boxes = mask_boxes(masks)
    offset = torch.tensor([y0, x0, y0, x0], device=boxes.device)
    inside = ~near_crop_edge(boxes + offset, crop_box, (0, 0, *frame_shape))
    masks, boxes = masks[inside].cpu().numpy(), boxes[inside].cpu()
    pieces = [m[b[0]:b[2] + 1, b[1]:b[3] + 1].copy() for m, b in zip(masks, boxes.tolist(), strict=True)]
    return keep[inside].cpu(), stability[inside].cpu(), boxes, pieces


def _model_xy(points: torch.Tensor, crop_shape: tuple[int, int], image_size: int) -> torch.Tensor:
    """(B, 2) (row, col) crop pixels -> (B, 1, 2) model-space (x, y) on the S x S input of the stretched crop."""
    height, width = crop_shape
    return (torch.stack([points[:, 1] / width, points[:, 0] / height], dim=-1) * image_size)[:, None]


def _decode(model: SAM2Model, feat: torch.Tensor, high_res: list[torch.Tensor], points: torch.Tensor,
            crop_shape: tuple[int, int], multimask: bool, autocast: Autocast,
            mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution logits (B, M, S/4, S/4) and predicted IoUs (B, M), float32, of single positive clicks."""
    coords = _model_xy(points, crop_shape, model.image_size).to(feat.device)
    labels = torch.ones(len(points), 1, dtype=torch.int32, device=feat.device)
    with autocast():
        low, ious, _ = model.predict_mask_candidates(feat, high_res, coords, labels, mask_input=mask_input,
                                                     multimask=multimask)
    return low.float(), ious.float()


def _refine(model: SAM2Model, feat: torch.Tensor, high_res: list[torch.Tensor], points: torch.Tensor,
            low: torch.Tensor, crop_shape: tuple[int, int], batch: int,
            autocast: Autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """``use_m2m``: decode each (point, mask) pair again with the mask as prompt, one output per pair."""
    refined, ious = [], []
    prompts = low.clamp(-PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)[:, None]
    for start in range(0, len(points), batch):
        part = slice(start, start + batch)
        masks, scores = _decode(model, feat, high_res, points[part], crop_shape, False, autocast, prompts[part])
        refined.append(masks[:, 0])
        ious.append(scores[:, 0])
    return torch.cat(refined), torch.cat(ious)


def postprocess_small_regions(masks: list[AutomaticMask], min_area: int,
                              nms_thresh: float = 0.7) -> list[AutomaticMask]:
    """Masks without holes and islands of fewer than ``min_area`` pixels (8-connected, at frame resolution),
    then without the duplicates this creates: box NMS at ``nms_thresh`` that prefers masks left unchanged.

    SAM's optional post-pass (``SAM2AutomaticMaskGenerator.postprocess_small_regions``, which SAM 2's
    ``generate`` no longer calls: there ``min_mask_region_area`` works on the low-resolution masks, see
    :class:`AutomaticMaskOptions`). Kept masks come unchanged ones first, each group in its given order.
    """
    if not masks:
        return []
    cleaned, unchanged = [], []
    for mask in masks:
        segmentation, holes_filled = remove_small_regions(mask.segmentation, min_area, "holes")
        segmentation, islands_removed = remove_small_regions(segmentation, min_area, "islands")
        cleaned.append(segmentation)
        unchanged.append(not (holes_filled or islands_removed))
    boxes = mask_boxes(torch.from_numpy(np.stack(cleaned)))
    keep = box_nms(boxes.float(), torch.tensor(unchanged, dtype=torch.float32), nms_thresh)
    out = []
    for i in keep.tolist():
        if unchanged[i]:
            out.append(masks[i])
            continue
        area = int(cleaned[i].sum())
        out.append(dataclasses.replace(masks[i], mask=CompactMask.of(cleaned[i]), area=area,
                                       bbox=_exclusive_box(boxes[i].tolist(), area)))
    return out
