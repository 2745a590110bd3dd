"""The scripting API: a SAM 2 tracking session over one movie.

Coordinates and axes follow napari everywhere: frames are (T, Y, X[, C]); points are (row, col) =
(y, x) pixel coordinates of a frame (pixel centres are integers); boxes are (y0, x0, y1, x1); masks
and returned logits are (Y, X) at the frame's own resolution.

Semantics are those of the reference ``SAM2VideoPredictor`` (Dec 2024) with
``add_all_frames_to_correct_as_cond=True``: objects are tracked independently, can be added at any
time, and a prompt on any frame (also a correction on a tracked frame) makes it a conditioning frame
that survives re-propagation. Deliberate differences from the reference, each fixing a bug of it:

* fp32 without autocast works when an object is tracked from a frame before its first prompt (the
  reference concatenates bf16 memories without pointers and crashes);
* small holes are filled on every device, not only with the reference's CUDA extension;
* clearing prompts and removing objects work on any object and never touch other objects' results.

Memory stays bounded for long movies: frames are read one at a time, image features live in a small
LRU cache, and per object only the spatial memories that attention can still read are kept (see
:meth:`TrackingSession.memory_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.memory_selection import NUM_MASKMEM, memory_frames, pointer_frames
from ..model.sam2 import NO_OBJECT_SCORE, ImageFeatures, MemoryItem, SAM2Model
from .feature_cache import FeatureCache
from .frames import FrameSource
from .object_state import FrameResult, TrackedObject
from .postprocess import fill_holes

DIRECTIONS = ("forward", "backward", "both")
PREV_LOGIT_CLAMP = 32.0  # previous logits fed back as a mask prompt are clamped to +-32, as in the reference

FrameOutput = tuple[int, list[int], np.ndarray]


class UnknownObjectError(ValueError):
    """An object id that the session does not track."""


class TrackingSession:
    """Track objects through a (T, Y, X[, C]) movie with a SAM 2 model.

    Parameters
    ----------
    model : SAM2Model
        From :func:`napari_sam2.build_model`; it is put in eval mode and moved to ``device``.
    frames : array-like
        (T, Y, X) or (T, Y, X, C) numpy / memmap / dask / zarr array; read one frame at a time.
    contrast_limits, rgb, channel
        Intensity mapping and channel choice, see :class:`~napari_sam2.engine.frames.FrameSource`.
    fill_hole_area : int
        Background holes of at most this many pixels (in the model's S/4 x S/4 mask) are filled; 0 turns
        it off (the reference's behaviour on CPU and MPS).
    device : torch device, optional
        Where the model runs (default: the model's device).
    storage_device : torch device
        Where per-object results and memories are kept between frames (default CPU).
    feature_cache_size : int
        Number of frames whose image features are kept.
    """

    def __init__(self, model: SAM2Model, frames: Any, *, contrast_limits: tuple[float, float] | None = None,
                 rgb: bool | None = None, channel: int | None = None, fill_hole_area: int = 8,
                 device: torch.device | str | None = None, storage_device: torch.device | str = "cpu",
                 feature_cache_size: int = 4) -> None:
        if not isinstance(model, SAM2Model):
            raise TypeError(f"model must be a SAM2Model from napari_sam2.build_model, got {type(model).__name__}")
        if fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
        self.source = FrameSource(frames, contrast_limits=contrast_limits, rgb=rgb, channel=channel)
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.eval().to(self.device)
        self.storage_device = torch.device(storage_device)
        self.fill_hole_area = int(fill_hole_area)
        self.image_size = model.image_size
        self.features = FeatureCache(self._encode_frame, capacity=feature_cache_size)
        self._objects: dict[int, TrackedObject] = {}

    # ------------------------------------------------------------------ properties
    @property
    def num_frames(self) -> int:
        return self.source.num_frames

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(Y, X) of every frame."""
        return self.source.height, self.source.width

    @property
    def obj_ids(self) -> list[int]:
        """Object ids in the order they were added (the order of returned logits)."""
        return list(self._objects)

    def prompted_frames(self, obj_id: int) -> list[int]:
        """Frames holding a prompt for ``obj_id``."""
        return self._existing(obj_id).prompted_frames()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held now: per-object results and memories, and cached image features."""
        return {"objects": sum(o.nbytes for o in self._objects.values()), "features": self.features.nbytes}

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_points(self, frame: int, obj_id: int, points: Any, labels: Any,
                   clear_old_points: bool = True) -> FrameOutput:
        """Click prompts for one object on one frame; returns ``(frame, obj_ids, logits)`` for that frame.

        ``points`` is (N, 2) in napari (row, col) = (y, x) pixel coordinates of the frame; ``labels`` (N,)
        holds 1 for positive and 0 for negative clicks. With ``clear_old_points=False`` the clicks are
        added to the ones already on that frame. A new ``obj_id`` (an integer >= 1, the label value it
        will get) starts a new object. ``logits`` is float32 (n_objects, Y, X), in ``obj_ids`` order.
        """
        frame = self.source.check_index(frame)
        obj_id = _check_obj_id(obj_id)
        coords, point_labels = self._points_to_model(points, labels, allow_empty=False)
        return self._prompt_points(frame, obj_id, coords, point_labels, clear_old_points)

    @torch.inference_mode()
    def add_box(self, frame: int, obj_id: int, box: Sequence[float], points: Any = None,
                labels: Any = None) -> FrameOutput:
        """A box prompt ``(y0, x0, y1, x1)`` in pixels (napari (row, col) order), optionally with clicks.

        Replaces the frame's earlier clicks for this object (the box must come first, as in SAM 2).
        Returns ``(frame, obj_ids, logits)`` like :meth:`add_points`.
        """
        frame = self.source.check_index(frame)
        obj_id = _check_obj_id(obj_id)
        corners = np.asarray(box, dtype=np.float64)
        if corners.shape != (4,) or not np.isfinite(corners).all():
            raise ValueError(f"box must be four finite numbers (y0, x0, y1, x1), got {box!r}")
        y0, y1 = sorted(corners[[0, 2]])
        x0, x1 = sorted(corners[[1, 3]])
        if y0 == y1 or x0 == x1:
            raise ValueError(f"box {tuple(corners)} has zero height or width")
        box_coords, _ = self._points_to_model([[y0, x0], [y1, x1]], [1, 1], allow_empty=False)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int32)
        if points is None and labels is None:
            coords, point_labels = box_coords, box_labels
        else:
            extra, extra_labels = self._points_to_model(points, labels, allow_empty=True)
            coords = torch.cat([box_coords, extra], dim=1)
            point_labels = torch.cat([box_labels, extra_labels], dim=1)
        return self._prompt_points(frame, obj_id, coords, point_labels, clear_old_points=True)

    @torch.inference_mode()
    def add_mask(self, frame: int, obj_id: int, mask: Any) -> FrameOutput:
        """A mask prompt: bool (Y, X) at the frame's resolution, taken as this object's exact shape there.

        Replaces the frame's clicks for this object. Returns ``(frame, obj_ids, logits)``.
        """
        frame = self.source.check_index(frame)
        obj_id = _check_obj_id(obj_id)
        mask_array = np.asarray(mask)
        if mask_array.shape != self.frame_shape:
            raise ValueError(f"mask must have the frame's shape (Y, X) = {self.frame_shape}, got {mask_array.shape}")
        if mask_array.dtype != bool:
            if not np.isin(mask_array, (0, 1)).all():
                raise ValueError("mask must be boolean (or 0/1); for a label image pass (labels == obj_id)")
            mask_array = mask_array.astype(bool)
        model_mask = torch.from_numpy(mask_array)[None, None].float().to(self.device)
        size = (self.image_size, self.image_size)
        if model_mask.shape[-2:] != size:
            model_mask = F.interpolate(model_mask, size=size, mode="bilinear", align_corners=False, antialias=True)
            model_mask = (model_mask >= 0.5).float()
        features = self.features.get(frame)
        heads = self.model.mask_as_output(features.feat, features.high_res, model_mask)
        obj = self._objects.get(obj_id) or TrackedObject(obj_id)
        obj.masks[frame] = (model_mask > 0).to(self.storage_device)
        obj.points.pop(frame, None)
        obj.pending[frame] = self._result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
        self._objects.setdefault(obj_id, obj)
        return frame, self.obj_ids, self._frame_logits(frame)

    @torch.inference_mode()
    def clear_prompts(self, frame: int, obj_id: int) -> FrameOutput:
        """Remove one object's prompts on one frame; its last result there is kept as an ordinary tracked
        result (so the next click there starts afresh). Returns ``(frame, obj_ids, logits)``."""
        frame = self.source.check_index(frame)
        obj = self._existing(obj_id)
        obj.points.pop(frame, None)
        obj.masks.pop(frame, None)
        obj.pending.pop(frame, None)
        result = obj.cond.pop(frame, None)
        if result is not None:
            obj.tracked[frame] = result
            obj.resident_memories.add(frame)
            obj.direction.pop(frame, None)
        return frame, self.obj_ids, self._frame_logits(frame)

    def remove_object(self, obj_id: int) -> None:
        """Forget an object, its prompts and results; other objects are unaffected."""
        self._existing(obj_id)
        del self._objects[obj_id]

    def reset(self) -> None:
        """Forget every object; cached image features are kept."""
        self._objects.clear()

    @torch.inference_mode()
    def frame_logits(self, frame: int) -> tuple[list[int], np.ndarray]:
        """Current ``(obj_ids, logits)`` of a frame without computing anything new; objects without a
        result there get -1024 everywhere."""
        return self.obj_ids, self._frame_logits(self.source.check_index(frame))

    # ------------------------------------------------------------------ propagation
    def propagate(self, start: int | None = None, direction: str = "forward",
                  max_frames: int | None = None) -> Iterator[FrameOutput]:
        """Track every object through the movie, yielding ``(frame, obj_ids, logits)`` frame by frame.

        ``start`` defaults to the earliest prompted frame of any object. ``direction`` is "forward",
        "backward" or "both" (forward, then backward from ``start - 1``). ``max_frames`` limits how far to
        go past ``start``; the range is inclusive (``max_frames=1`` covers 2 frames). As in the reference,
        backward from frame 0 covers nothing. Stopping the generator early (cancel) keeps every frame
        yielded so far; nothing else changes.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 0):
            raise ValueError(f"max_frames must be a non-negative integer or None, got {max_frames!r}")
        if start is not None:
            start = self.source.check_index(start)
        return self._propagate(start, direction, max_frames)

    @torch.inference_mode()  # on a generator function torch enters the mode around each step only
    def _propagate(self, start: int | None, direction: str, max_frames: int | None) -> Iterator[FrameOutput]:
        # A separate generator so that argument errors above are raised at call time, not on first next().
        self._commit_pending_prompts()
        if start is None:
            start = min(t for obj in self._objects.values() for t in obj.cond)
        span = self.num_frames if max_frames is None else int(max_frames)
        last = self.num_frames - 1
        passes: list[tuple[range, bool]] = []
        if direction in ("forward", "both"):
            passes.append((range(start, min(start + span, last) + 1), False))
        if direction == "backward" and start > 0:
            passes.append((range(start, max(start - span, 0) - 1, -1), True))
        if direction == "both" and start > 0:
            passes.append((range(start - 1, max(start - span, 0) - 1, -1), True))
        for order, reverse in passes:
            for frame in order:
                yield self._track_frame(frame, reverse, pass_start=order[0])

    def _track_frame(self, frame: int, reverse: bool, pass_start: int) -> FrameOutput:
        features = self.features.get(frame)
        results = []
        for obj in self._objects.values():
            result = obj.cond.get(frame)
            if result is None:
                result = self._track_object(obj, frame, features, reverse)
                obj.tracked[frame] = result
                obj.resident_memories.add(frame)
                self._drop_old_memories(obj, keep_near=(frame, pass_start))
            obj.direction[frame] = reverse
            results.append(result)
        return frame, self.obj_ids, self._video_logits(results)

    def _track_object(self, obj: TrackedObject, frame: int, features: ImageFeatures, reverse: bool) -> FrameResult:
        conditioned = self._condition(obj, frame, features, reverse)
        heads = self.model.predict_masks(conditioned, features.high_res, multimask=True)
        result = self._result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=False)
        result.maskmem = self._encode_memory(features, heads.high_res_masks, heads.object_score, binarize=False)
        return result

    # ------------------------------------------------------------------ internals
    def _encode_frame(self, frame: int) -> ImageFeatures:
        return self.model.encode_image(self.source.model_input(frame, self.image_size, self.device))

    def _prompt_points(self, frame: int, obj_id: int, coords: torch.Tensor, labels: torch.Tensor,
                       clear_old_points: bool) -> FrameOutput:
        obj = self._objects.get(obj_id) or TrackedObject(obj_id)
        if not clear_old_points and frame in obj.points:
            old_coords, old_labels = obj.points[frame]
            coords = torch.cat([old_coords, coords], dim=1)
            labels = torch.cat([old_labels, labels], dim=1)
        features = self.features.get(frame)
        previous = obj.latest(frame)
        mask_prompt = None
        if previous is not None:
            mask_prompt = self._filled(previous.raw_logits).to(self.device)
            mask_prompt = mask_prompt.clamp(-PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)
        initial = frame not in obj.direction
        conditioned = self._condition(obj, frame, features, obj.direction.get(frame, False), initial=initial)
        heads = self.model.predict_masks(conditioned, features.high_res, coords.to(self.device),
                                         labels.to(self.device), mask_input=mask_prompt,
                                         multimask=labels.shape[1] <= 1)
        # Only now, with everything computed, is the session changed: a failure above leaves it as it was.
        obj.points[frame] = (coords, labels)
        obj.masks.pop(frame, None)
        obj.pending[frame] = self._result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
        self._objects.setdefault(obj_id, obj)
        return frame, self.obj_ids, self._frame_logits(frame)

    def _condition(self, obj: TrackedObject, frame: int, features: ImageFeatures, reverse: bool,
                   initial: bool = False) -> torch.Tensor:
        """Features of ``frame`` fused with this object's memories (or the no-memory embedding)."""
        if initial:
            return self.model.condition_on_memory(features, [], [], self.num_frames)
        memories = [MemoryItem(self._memory_of(obj, t, t_pos == 0), t_pos)
                    for t_pos, t in memory_frames(frame, obj.cond, obj.tracked, reverse)]
        pointers = [(distance, (obj.cond if is_cond else obj.tracked)[t].obj_ptr.to(self.device))
                    for distance, t, is_cond in pointer_frames(frame, obj.cond, obj.tracked, reverse,
                                                               self.num_frames)]
        return self.model.condition_on_memory(features, memories, pointers, self.num_frames)

    def _memory_of(self, obj: TrackedObject, frame: int, is_cond: bool) -> torch.Tensor:
        """Spatial memory of a remembered frame, re-encoded (exactly) if it was dropped."""
        result = (obj.cond if is_cond else obj.tracked)[frame]
        if result.maskmem is None:
            self._encode_result_memory(frame, result)
            if not is_cond:
                obj.resident_memories.add(frame)
        return result.maskmem

    def _encode_result_memory(self, frame: int, result: FrameResult) -> None:
        """Encode a stored result into spatial memory the way the reference does for its origin:
        prompted frames from the hole-filled, binarised mask; tracked frames from the raw logits."""
        logits = result.raw_logits.to(self.device)
        if result.from_prompt:
            logits = self._filled(logits)
        high_res = F.interpolate(logits, size=(self.image_size, self.image_size), mode="bilinear",
                                 align_corners=False)
        result.maskmem = self._encode_memory(self.features.get(frame), high_res,
                                             result.object_score.to(self.device), binarize=result.from_prompt)

    def _encode_memory(self, features: ImageFeatures, high_res_masks: torch.Tensor, object_score: torch.Tensor,
                       binarize: bool) -> torch.Tensor:
        memory = self.model.encode_memory(features.feat, high_res_masks, object_score, binarize=binarize)
        # Stored as bfloat16, as the reference does; this rounding is part of SAM 2's numerics.
        return memory.to(torch.bfloat16).to(self.storage_device)

    def _drop_old_memories(self, obj: TrackedObject, keep_near: tuple[int, ...]) -> None:
        """Drop spatial memories of tracked frames that attention will not read next (they are
        re-encoded on demand if a later run starts there)."""
        # The next frame reads the NUM_MASKMEM - 1 = 6 frames before it, i.e. the current one and the 5 before.
        reach = NUM_MASKMEM - 2
        for t in list(obj.resident_memories):
            if all(abs(t - near) > reach for near in keep_near):
                result = obj.tracked.get(t)
                if result is not None:
                    result.maskmem = None
                obj.resident_memories.discard(t)

    def _commit_pending_prompts(self) -> None:
        """Encode the memory of every new prompt and make those frames conditioning frames."""
        if not self._objects:
            raise ValueError("no objects to track; add points, a box or a mask first")
        without = [o.obj_id for o in self._objects.values() if not o.cond and not o.pending]
        if without:
            raise ValueError(f"object(s) {without} have no prompts left; add a prompt or remove_object() them")
        for obj in self._objects.values():
            for frame, result in obj.pending.items():
                if result.maskmem is None:
                    self._encode_result_memory(frame, result)
                obj.cond[frame] = result
            obj.pending.clear()
            for frame in obj.cond:
                obj.tracked.pop(frame, None)
                obj.resident_memories.discard(frame)

    def _result(self, low_res: torch.Tensor, obj_ptr: torch.Tensor, object_score: torch.Tensor,
                from_prompt: bool) -> FrameResult:
        store = self.storage_device
        return FrameResult(low_res.float().to(store), obj_ptr.float().to(store), object_score.float().to(store),
                           from_prompt)

    def _filled(self, logits: torch.Tensor) -> torch.Tensor:
        return fill_holes(logits, self.fill_hole_area)

    def _frame_logits(self, frame: int) -> np.ndarray:
        return self._video_logits([obj.latest(frame) for obj in self._objects.values()])

    def _video_logits(self, results: list[FrameResult | None]) -> np.ndarray:
        """(n_objects, Y, X) float32 logits at frame resolution; missing results are -1024."""
        height, width = self.frame_shape
        out = np.full((len(results), height, width), NO_OBJECT_SCORE, dtype=np.float32)
        present = [i for i, r in enumerate(results) if r is not None]
        if present:
            low = torch.cat([self._filled(results[i].raw_logits.to(self.device)) for i in present], dim=0)
            if low.shape[-2:] != (height, width):
                low = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
            out[present] = low[:, 0].float().cpu().numpy()
        return out

    def _points_to_model(self, points: Any, labels: Any, allow_empty: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate napari (row, col) clicks and turn them into (1, N, 2) model-space (x, y) + (1, N) labels."""
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
        height, width = self.frame_shape
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] > height - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > width - 0.5)
        if outside.any():
            bad = pts[outside][0].tolist()
            raise ValueError(f"point (row, col) = {tuple(bad)} is outside the frame of shape (Y, X) = {(height, width)}")
        xy = torch.tensor(pts[:, ::-1].copy(), dtype=torch.float32)[None]
        xy = xy / torch.tensor([width, height]) * self.image_size
        return xy, torch.tensor(lab.astype(np.int32))[None]

    def _existing(self, obj_id: int) -> TrackedObject:
        obj = self._objects.get(obj_id)
        if obj is None:
            raise UnknownObjectError(f"unknown object id {obj_id!r}; existing ids: {self.obj_ids}")
        return obj


def _check_obj_id(obj_id: Any) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)) or obj_id < 1:
        raise ValueError(f"obj_id must be an integer >= 1 (the label value of the object), got {obj_id!r}")
    return int(obj_id)
