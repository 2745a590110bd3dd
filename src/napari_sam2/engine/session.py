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

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.interrupt import Interrupted, checkpoint, stop_when
from ..model.memory_selection import NUM_MASKMEM, memory_frames, pointer_frames
from ..model.sam2 import NO_OBJECT_SCORE, ImageFeatures, MemoryItem, SAM2Model
from .acceleration import autocast, resolve_precision
from .feature_cache import FeatureCache
from .frames import FrameSource
from .label_stack import SessionLabels
from .object_state import FramePrompt, FrameResult, TrackedObject
from .outputs import FrameOutput
from .postprocess import fill_holes, labels_from_logits
from .precompute import ConditionedCache
from .prefetch import FramePrefetcher
from .session_file import load_session, save_session

DIRECTIONS = ("forward", "backward", "both")
PREV_LOGIT_CLAMP = 32.0  # previous logits fed back as a mask prompt are clamped to +-32, as in the reference


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
    object_batch_size : int
        How many objects go through memory attention, the mask decoder and the memory encoder in one
        batched pass while propagating (default 16); the results do not depend on it. On the CPU the
        memory attention shares its first step between the batch's objects, then takes them one by one.
    prefetch_frames : int
        While propagating, how many of the next frames a background thread reads and preprocesses ahead
        (0: none).
    precision : {"fp32", "bf16"}, optional
        "fp32" reproduces the reference's numbers; "bf16" runs under bf16 autocast (faster on GPUs).
        Default: bf16 on CUDA, fp32 elsewhere (see :mod:`napari_sam2.engine.acceleration`).
    compile_model : bool
        Run the image encoder and memory attention through ``torch.compile`` (changes the model passed
        in; falls back to eager execution with a warning if compiling fails).
    """

    def __init__(self, model: SAM2Model, frames: Any, *, contrast_limits: tuple[float, float] | None = None,
                 rgb: bool | None = None, channel: int | None = None, fill_hole_area: int = 8,
                 device: torch.device | str | None = None, storage_device: torch.device | str = "cpu",
                 feature_cache_size: int = 4, object_batch_size: int = 16, prefetch_frames: int = 2,
                 precision: str | None = None, compile_model: bool = False) -> None:
        if not isinstance(model, SAM2Model):
            raise TypeError(f"model must be a SAM2Model from napari_sam2.build_model, got {type(model).__name__}")
        if (isinstance(object_batch_size, bool) or not isinstance(object_batch_size, (int, np.integer))
                or object_batch_size < 1):
            raise ValueError(f"object_batch_size must be an integer >= 1, got {object_batch_size!r}")
        if fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
        self.source = FrameSource(frames, contrast_limits=contrast_limits, rgb=rgb, channel=channel)
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.eval().to(self.device)
        self.storage_device = torch.device(storage_device)
        self.fill_hole_area = int(fill_hole_area)
        self.object_batch_size = int(object_batch_size)
        self.image_size = model.image_size
        self.precision = resolve_precision(precision, self.device)
        if compile_model:
            self.model.use_compiled()
        self.features = FeatureCache(self._encode_frame, capacity=feature_cache_size)
        self._prefetcher = FramePrefetcher(self._model_input, depth=prefetch_frames)
        self._objects: dict[int, TrackedObject] = {}
        self._precomputed = ConditionedCache()
        self._rgb, self._channel = rgb, channel

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | os.PathLike) -> Path:
        """Save every object's prompts, the object ids, the settings and the model name to one JSON file
        (see :mod:`napari_sam2.engine.session_file`). Results are recomputed on load."""
        return save_session(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, frames: Any, model: SAM2Model, **options: Any) -> TrackingSession:
        """Re-create a saved session on ``frames`` (T, Y, X[, C]), which must have the saved movie's shape.

        Every prompt is re-applied (prompted frames show their masks at once); call :meth:`propagate`
        for the rest. ``options`` override saved settings or set device, storage_device, feature_cache_size.
        """
        return load_session(path, frames, model, cls, **options)

    def settings(self) -> dict[str, Any]:
        """The constructor settings that shape the results (contrast limits as resolved), JSON-friendly."""
        return {"contrast_limits": [self.source.mapping.low, self.source.mapping.high], "rgb": self._rgb,
                "channel": self._channel, "fill_hole_area": self.fill_hole_area}

    @torch.inference_mode()
    def restore_prompts(self, prompts: Sequence[tuple[int, int, FramePrompt]]) -> None:
        """Apply ``(frame, obj_id, prompt)`` records in order (e.g. a saved session's prompt history).

        A prompt whose ``refines_result`` is set is applied on top of the frame's current result, as when
        it was first given; everything is validated before the session changes.
        """
        checked = []
        for frame, obj_id, prompt in prompts:
            frame, obj_id = self.source.check_index(frame), _check_obj_id(obj_id)
            if prompt.mask is not None:
                if prompt.mask.shape != self.frame_shape:
                    raise ValueError(f"mask prompt for object {obj_id} on frame {frame} has shape "
                                     f"{prompt.mask.shape}, the frames are {self.frame_shape}")
            else:
                self._check_points(prompt.points, prompt.labels, allow_empty=prompt.box is not None)
                if prompt.box is not None:
                    self._check_points(prompt.box.reshape(2, 2), [1, 1], allow_empty=False)
            checked.append((frame, obj_id, prompt))
        for frame, obj_id, prompt in checked:
            if prompt.mask is not None:
                self._apply_mask_prompt(frame, obj_id, prompt.mask)
            else:
                self._apply_click_prompt(frame, obj_id, FramePrompt(prompt.points, prompt.labels, prompt.box))

    # ------------------------------------------------------------------ properties
    @property
    def num_frames(self) -> int:
        return self.source.num_frames

    @property
    def movie_shape(self) -> tuple[int, ...]:
        """Shape of the movie as given, (T, Y, X) or (T, Y, X, C)."""
        return tuple(int(n) for n in self.source.frames.shape)

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
        """Bytes held now: per-object results and memories, cached image features, and the conditioning
        kept by :meth:`precompute`."""
        return {"objects": sum(o.nbytes for o in self._objects.values()), "features": self.features.nbytes,
                "precomputed": self._precomputed.nbytes}

    # ------------------------------------------------------------------ speculative precompute
    @torch.inference_mode()
    def precompute(self, frame: int, obj_id: int | None = None,
                   should_stop: Callable[[], bool] | None = None) -> bool:
        """Do ahead of time the work of the next click on ``frame`` (T index), so that the click is instant.

        Encodes the frame into the feature cache; then the next click or box there costs only the prompt
        encoder and mask decoder. With ``obj_id``, if that object already has a result on ``frame`` that a
        click would refine through memory attention (a tracked frame, or a prompted frame after
        propagation), also computes the memory-conditioned features that click would use, so that a
        correction costs only the SAM heads. Results are exactly those of a plain click; the conditioning
        is used only while the object is unchanged (any prompt, clear, removal, reset or propagation
        invalidates it). A new or unknown ``obj_id`` just gets the encode.

        ``should_stop`` is polled during the work (between encoder blocks, memory-attention layers and
        attention blocks, at most about 0.2 s apart with SAM 2.1 tiny at 1024 px on two CPU cores); once it
        returns True the call returns False and the session is exactly as before (a stopped encode does not
        enter the feature cache). Returns True when everything was computed.

        This is an ordinary job on the session, like a click: it must not run concurrently with any other
        call on the same session (the plugin runs one worker per session at a time).
        """
        frame = self.source.check_index(frame)
        obj = None if obj_id is None else self._objects.get(_check_obj_id(obj_id))
        needs_conditioning = obj is not None and frame in obj.direction and not self._precomputed.valid_for(obj, frame)
        try:
            with stop_when(should_stop):
                checkpoint()
                features = self.features.peek(frame)
                encoded = features is None
                if encoded:
                    features = self._encode_image(self._model_input(frame))
                conditioned = self._condition_speculatively(obj, frame, features) if needs_conditioning else None
                checkpoint()
        except Interrupted:
            return False
        # Everything is computed: only now does the session change.
        if encoded:
            self.features.put(frame, features)
        else:
            self.features.get(frame)  # the frame being looked at is the most recently used
        if conditioned is not None:
            self._precomputed.store(obj, frame, conditioned)
        return True

    def _condition_speculatively(self, obj: TrackedObject, frame: int, features: ImageFeatures) -> torch.Tensor:
        """What :meth:`_condition` returns for a click of ``obj`` on ``frame``, computed without changing the
        session: spatial memories that were dropped are re-encoded (exactly) but not kept."""

        def memory_of(obj: TrackedObject, t: int, is_cond: bool) -> torch.Tensor:
            result = (obj.cond if is_cond else obj.tracked)[t]
            if result.maskmem is not None:
                return result.maskmem
            checkpoint()
            cached = self.features.peek(t)
            return self._result_memory(result, cached if cached is not None else self._encode_image(self._model_input(t)))

        memories, pointers = self._memory_layout(obj, frame, obj.direction[frame], memory_of)
        with self._autocast():
            return self.model.condition_on_memory(features, memories, pointers, self.num_frames)

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_points(self, frame: int, obj_id: int, points: Any, labels: Any,
                   clear_old_points: bool = True) -> FrameOutput:
        """Click prompts for one object on one frame; returns ``(frame, obj_ids, logits)`` for that frame.

        ``points`` is (N, 2) in napari (row, col) = (y, x) pixel coordinates of the frame; ``labels`` (N,)
        holds 1 for positive and 0 for negative clicks. With ``clear_old_points=False`` the clicks are
        added to the ones (and the box) already on that frame. A new ``obj_id`` (an integer >= 1, the
        label value it will get) starts a new object. ``logits`` is float32 (n_objects, Y, X), in
        ``obj_ids`` order.
        """
        frame = self.source.check_index(frame)
        obj_id = _check_obj_id(obj_id)
        pts, labs = self._check_points(points, labels, allow_empty=False)
        steps = self._objects[obj_id].prompt_steps.get(frame) if obj_id in self._objects else None
        old = steps[-1] if steps else None
        if not clear_old_points and old is not None and old.mask is None:
            prompt = FramePrompt(np.concatenate([old.points, pts]), np.concatenate([old.labels, labs]), old.box)
        else:
            prompt = FramePrompt(pts, labs)
        self._apply_click_prompt(frame, obj_id, prompt)
        return FrameOutput(frame, self.obj_ids, self._frame_logits(frame))

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
        box_corners = np.array([y0, x0, y1, x1])
        self._check_points(box_corners.reshape(2, 2), [1, 1], allow_empty=False)
        pts, labs = self._check_points(points, labels, allow_empty=True)
        self._apply_click_prompt(frame, obj_id, FramePrompt(pts, labs, box_corners))
        return FrameOutput(frame, self.obj_ids, self._frame_logits(frame))

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
        self._apply_mask_prompt(frame, obj_id, mask_array)
        return FrameOutput(frame, self.obj_ids, self._frame_logits(frame))

    @torch.inference_mode()
    def add_labels(self, labels: Any, frames: int | Sequence[int], obj_ids: Sequence[int] | None = None) -> list[int]:
        """Start from an existing segmentation: every label on the given frames becomes a mask prompt for
        the object with that id (label value = obj_id).

        ``labels`` is a (T, Y, X) label stack (e.g. a napari Labels layer's data; only the given
        ``frames`` are read) or, with a single frame, a (Y, X) label image of that frame. ``obj_ids``
        restricts which labels are used (default: all non-zero ones). Everything is checked before the
        session changes. Returns the object ids that received a prompt, sorted.
        """
        frame_list = [frames] if isinstance(frames, (int, np.integer)) else list(frames)
        frame_list = [self.source.check_index(t) for t in frame_list]
        shape = tuple(getattr(labels, "shape", np.shape(labels)))
        if len(shape) == 2 and len(frame_list) != 1:
            raise ValueError(f"a (Y, X) label image belongs to one frame, but {len(frame_list)} frames were given")
        if shape not in (self.frame_shape, (self.num_frames, *self.frame_shape)):
            raise ValueError(f"labels must be (Y, X) = {self.frame_shape} or (T, Y, X) = "
                             f"{(self.num_frames, *self.frame_shape)}, got shape {shape}")
        wanted = None if obj_ids is None else {_check_obj_id(i) for i in obj_ids}
        masks: list[tuple[int, int, np.ndarray]] = []
        for t in frame_list:
            image = np.asarray(labels if len(shape) == 2 else labels[t])
            if image.dtype.kind not in "iub" or (image.dtype.kind == "i" and image.min(initial=0) < 0):
                raise ValueError(f"labels must be non-negative integers (0 = background), got dtype {image.dtype}"
                                 f"{' with negative values' if image.dtype.kind == 'i' else ''} on frame {t}")
            for obj_id in np.unique(image):
                if obj_id != 0 and (wanted is None or int(obj_id) in wanted):
                    masks.append((t, int(obj_id), image == obj_id))
        for t, obj_id, mask in masks:
            self._apply_mask_prompt(t, obj_id, mask)
        return sorted({obj_id for _, obj_id, _ in masks})

    def prompts(self, obj_id: int) -> dict[int, FramePrompt]:
        """The current prompt of one object on each prompted frame, as given (napari (row, col) coordinates)."""
        return {frame: steps[-1] for frame, steps in self._existing(obj_id).prompt_steps.items()}

    def prompt_history(self, obj_id: int) -> dict[int, list[FramePrompt]]:
        """Every prompt given for one object on each prompted frame, in order (what a saved session replays)."""
        return {frame: list(steps) for frame, steps in self._existing(obj_id).prompt_steps.items()}

    @torch.inference_mode()
    def clear_prompts(self, frame: int, obj_id: int) -> FrameOutput:
        """Remove one object's prompts on one frame; its last result there is kept as an ordinary tracked
        result (so the next click there starts afresh). Returns ``(frame, obj_ids, logits)``."""
        frame = self.source.check_index(frame)
        obj = self._existing(obj_id)
        obj.prompt_steps.pop(frame, None)
        obj.pending.pop(frame, None)
        result = obj.cond.pop(frame, None)
        if result is not None:
            obj.tracked[frame] = result
            obj.resident_memories.add(frame)
            obj.direction.pop(frame, None)
        obj.changed()
        return FrameOutput(frame, self.obj_ids, self._frame_logits(frame))

    def remove_object(self, obj_id: int) -> None:
        """Forget an object, its prompts and results; other objects are unaffected."""
        self._existing(obj_id)
        del self._objects[obj_id]
        self._precomputed.clear()

    def reset(self) -> None:
        """Forget every object; cached image features are kept."""
        self._objects.clear()
        self._precomputed.clear()

    def label_image(self, frame: int) -> np.ndarray:
        """(Y, X) label image of a frame from the current results (label = obj_id, 0 = background; where
        objects overlap the highest logit wins). Frames without results are all 0."""
        obj_ids, logits = self.frame_logits(frame)
        return labels_from_logits(obj_ids, logits, dtype=self.label_dtype)

    @property
    def label_dtype(self) -> np.dtype:
        """uint16 while every object id fits, else uint32 (what TIFF and napari handle well)."""
        return np.dtype(np.uint16 if max(self._objects, default=0) <= np.iinfo(np.uint16).max else np.uint32)

    def label_stack(self) -> SessionLabels:
        """A lazy (T, Y, X) label stack of the current results, computed one frame at a time on access
        (e.g. for :func:`napari_sam2.exports.write_label_tiff` on movies that would not fit in memory)."""
        return SessionLabels(self)

    @torch.inference_mode()
    def frame_logits(self, frame: int, obj_ids: Sequence[int] | None = None) -> tuple[list[int], np.ndarray]:
        """Current ``(obj_ids, logits)`` of frame ``frame`` (T index) without computing anything new:
        float32 (n, Y, X) logits at the frame's resolution; objects without a result there get -1024
        everywhere.

        ``obj_ids`` picks some objects, in that order (default: all, in :attr:`obj_ids` order); only
        those are upsampled, e.g. to redraw just the object that was clicked.
        """
        frame = self.source.check_index(frame)
        if obj_ids is None:
            return self.obj_ids, self._frame_logits(frame)
        objects = [self._existing(_check_obj_id(obj_id)) for obj_id in obj_ids]
        return [obj.obj_id for obj in objects], self._video_logits([obj.latest(frame) for obj in objects])

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
        start = self._check_run(start, direction, max_frames)
        return self._propagate(start, direction, max_frames)

    def _check_run(self, start: int | None, direction: str, max_frames: int | None) -> int | None:
        """Validated propagation arguments (shared by :meth:`propagate` and :meth:`frames_to_visit`)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 0):
            raise ValueError(f"max_frames must be a non-negative integer or None, got {max_frames!r}")
        return None if start is None else self.source.check_index(start)

    @torch.inference_mode()  # on a generator function torch enters the mode around each step only
    def _propagate(self, start: int | None, direction: str, max_frames: int | None) -> Iterator[FrameOutput]:
        # A separate generator so that argument errors above are raised at call time, not on first next().
        self._commit_pending_prompts()
        plan = self._visit_plan(start, direction, max_frames)
        try:
            for step, (frame, reverse, pass_start) in enumerate(plan):
                upcoming = (t for t, _, _ in plan[step + 1:] if t not in self.features)
                self._prefetcher.schedule(upcoming, keep=frame)  # read while this frame is tracked
                yield self._track_frame(frame, reverse, pass_start)
        finally:  # finished, failed or cancelled: drop what was read ahead
            self._prefetcher.cancel()

    def frames_to_visit(self, start: int | None = None, direction: str = "forward",
                        max_frames: int | None = None) -> list[int]:
        """The frames :meth:`propagate` with these arguments would yield, in order (for progress bars)."""
        start = self._check_run(start, direction, max_frames)
        if start is None and not any(obj.cond or obj.pending for obj in self._objects.values()):
            return []
        return [frame for frame, _, _ in self._visit_plan(start, direction, max_frames)]

    def _visit_plan(self, start: int | None, direction: str, max_frames: int | None) -> list[tuple[int, bool, int]]:
        """(frame, reverse, pass start) for every step of a propagation."""
        if start is None:
            start = min(t for obj in self._objects.values() for t in (*obj.cond, *obj.pending))
        span = self.num_frames if max_frames is None else int(max_frames)
        last = self.num_frames - 1
        passes: list[tuple[range, bool]] = []
        if direction in ("forward", "both"):
            passes.append((range(start, min(start + span, last) + 1), False))
        if direction == "backward" and start > 0:
            passes.append((range(start, max(start - span, 0) - 1, -1), True))
        if direction == "both" and start > 0:
            passes.append((range(start - 1, max(start - span, 0) - 1, -1), True))
        return [(frame, reverse, order[0]) for order, reverse in passes for frame in order]

    def _track_frame(self, frame: int, reverse: bool, pass_start: int) -> FrameOutput:
        features = self.features.get(frame)
        to_track = [obj for obj in self._objects.values() if frame not in obj.cond]
        for obj, result in zip(to_track, self._track_objects(to_track, frame, features, reverse), strict=True):
            obj.tracked[frame] = result
            obj.resident_memories.add(frame)
            self._drop_old_memories(obj, keep_near=(frame, pass_start))
        results = []
        for obj in self._objects.values():
            obj.direction[frame] = reverse
            obj.changed()
            results.append(obj.cond[frame] if frame in obj.cond else obj.tracked[frame])
        return FrameOutput(frame, self.obj_ids, self._video_logits(results))

    def _track_objects(self, objects: list[TrackedObject], frame: int, features: ImageFeatures,
                       reverse: bool) -> list[FrameResult]:
        """Track several objects on one frame, batching those whose memories have the same layout.

        Objects prompted on the same frames share a layout (which memory slots are filled, how far away
        their object pointers are), so usually all objects of a frame go through memory attention, the
        mask decoder and the memory encoder together, ``object_batch_size`` at a time.
        """
        groups: dict[tuple, list[tuple[int, list[MemoryItem], list[tuple[int, torch.Tensor]]]]] = {}
        for index, obj in enumerate(objects):
            memories, pointers = self._memory_layout(obj, frame, reverse)
            key = (tuple(m.t_pos for m in memories), tuple(d for d, _ in pointers))
            groups.setdefault(key, []).append((index, memories, pointers))
        results: list[FrameResult | None] = [None] * len(objects)
        for members in groups.values():
            for start in range(0, len(members), self.object_batch_size):
                batch = members[start:start + self.object_batch_size]
                for (index, _, _), result in zip(batch, self._track_batch(batch, features), strict=True):
                    results[index] = result
        return results

    def _track_batch(self, batch: list[tuple[int, list[MemoryItem], list[tuple[int, torch.Tensor]]]],
                     features: ImageFeatures) -> list[FrameResult]:
        """One batched pass for objects with the same memory layout (entries of :meth:`_track_objects`)."""
        _, first_memories, first_pointers = batch[0]
        memories = [MemoryItem(torch.cat([entry[1][i].features for entry in batch]), item.t_pos)
                    for i, item in enumerate(first_memories)]
        pointers = [(distance, torch.cat([entry[2][i][1] for entry in batch]))
                    for i, (distance, _) in enumerate(first_pointers)]
        with self._autocast():
            conditioned = self.model.condition_on_memory(features, memories, pointers, self.num_frames)
            conditioned = conditioned.expand(len(batch), -1, -1, -1)  # no memories: one no-memory frame for all
            heads = self.model.predict_masks(conditioned, features.high_res, multimask=True)
        maskmem = self._encode_memory(features, heads.high_res_masks, heads.object_score, binarize=False)
        results = []
        for i in range(len(batch)):
            # Copies, so that each object's result owns its memory (and can be dropped on its own).
            rows = slice(i, i + 1)
            result = self._result(heads.low_res_masks[rows].clone(), heads.obj_ptr[rows].clone(),
                                  heads.object_score[rows].clone(), from_prompt=False)
            result.maskmem = maskmem[rows].clone()
            results.append(result)
        return results

    # ------------------------------------------------------------------ internals
    def _autocast(self):
        """The context each model call runs in (bf16 autocast or nothing, see ``precision``); entered around
        the calls themselves: encoding a frame or a memory, conditioning and decoding."""
        return autocast(self.device, self.precision)

    def _model_input(self, frame: int) -> torch.Tensor:
        return self.source.model_input(frame, self.image_size, self.device)

    def _encode_frame(self, frame: int) -> ImageFeatures:
        image = self._prefetcher.take(frame)
        return self._encode_image(image if image is not None else self._model_input(frame))

    def _encode_image(self, image: torch.Tensor) -> ImageFeatures:
        with self._autocast():
            return self.model.encode_image(image)

    def _apply_click_prompt(self, frame: int, obj_id: int, prompt: FramePrompt) -> None:
        """Run the decoder for a (validated) click / box prompt and record it; the session changes only
        once everything is computed, so a failure leaves it as it was."""
        obj = self._objects.get(obj_id) or TrackedObject(obj_id)
        coords = self._to_model_xy(prompt.points)
        labels = torch.tensor(prompt.labels.astype(np.int32))[None]
        if prompt.box is not None:
            coords = torch.cat([self._to_model_xy(prompt.box.reshape(2, 2)), coords], dim=1)
            labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labels], dim=1)
        features = self.features.get(frame)
        previous = obj.latest(frame)
        mask_prompt = None
        if previous is not None:
            mask_prompt = self._filled(previous.raw_logits).to(self.device)
            mask_prompt = mask_prompt.clamp(-PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)
        initial = frame not in obj.direction
        with self._autocast():
            conditioned = self._precomputed.take(obj, frame)
            if conditioned is None:
                conditioned = self._condition(obj, frame, features, obj.direction.get(frame, False), initial=initial)
            heads = self.model.predict_masks(conditioned, features.high_res, coords.to(self.device),
                                             labels.to(self.device), mask_input=mask_prompt,
                                             multimask=labels.shape[1] <= 1)
        prompt.refines_result = previous is not None
        obj.record_prompt(frame, prompt)
        obj.pending[frame] = self._result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
        self._objects.setdefault(obj_id, obj)

    def _apply_mask_prompt(self, frame: int, obj_id: int, mask: np.ndarray) -> None:
        """Take a bool (Y, X) mask as the object's exact shape on ``frame`` (a mask prompt)."""
        model_mask = torch.from_numpy(mask)[None, None].float().to(self.device)
        size = (self.image_size, self.image_size)
        if model_mask.shape[-2:] != size:
            model_mask = F.interpolate(model_mask, size=size, mode="bilinear", align_corners=False, antialias=True)
            model_mask = (model_mask >= 0.5).float()
        features = self.features.get(frame)
        with self._autocast():
            heads = self.model.mask_as_output(features.feat, features.high_res, model_mask)
        obj = self._objects.get(obj_id) or TrackedObject(obj_id)
        obj.record_prompt(frame, FramePrompt(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), mask=mask.copy()))
        obj.pending[frame] = self._result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
        self._objects.setdefault(obj_id, obj)

    def _condition(self, obj: TrackedObject, frame: int, features: ImageFeatures, reverse: bool,
                   initial: bool = False) -> torch.Tensor:
        """Features of ``frame`` fused with this object's memories (or the no-memory embedding)."""
        if initial:
            return self.model.condition_on_memory(features, [], [], self.num_frames)
        memories, pointers = self._memory_layout(obj, frame, reverse)
        return self.model.condition_on_memory(features, memories, pointers, self.num_frames)

    def _memory_layout(self, obj: TrackedObject, frame: int, reverse: bool,
                       memory_of: Callable[[TrackedObject, int, bool], torch.Tensor] | None = None,
                       ) -> tuple[list[MemoryItem], list[tuple[int, torch.Tensor]]]:
        """The spatial memories and (distance, pointer) pairs that memory attention reads for ``obj`` on
        ``frame``; ``memory_of(obj, t, is_cond)`` gives frame t's spatial memory (default :meth:`_memory_of`)."""
        memory_of = memory_of or self._memory_of
        memories = [MemoryItem(memory_of(obj, t, t_pos == 0), t_pos)
                    for t_pos, t in memory_frames(frame, obj.cond, obj.tracked, reverse)]
        pointers = [(distance, (obj.cond if is_cond else obj.tracked)[t].obj_ptr.to(self.device))
                    for distance, t, is_cond in pointer_frames(frame, obj.cond, obj.tracked, reverse,
                                                               self.num_frames)]
        return memories, pointers

    def _memory_of(self, obj: TrackedObject, frame: int, is_cond: bool) -> torch.Tensor:
        """Spatial memory of a remembered frame, re-encoded (exactly) if it was dropped."""
        result = (obj.cond if is_cond else obj.tracked)[frame]
        if result.maskmem is None:
            self._encode_result_memory(frame, result)
            if not is_cond:
                obj.resident_memories.add(frame)
        return result.maskmem

    def _encode_result_memory(self, frame: int, result: FrameResult) -> None:
        """Encode a stored result of ``frame`` into its spatial memory and keep it there."""
        result.maskmem = self._result_memory(result, self.features.get(frame))

    def _result_memory(self, result: FrameResult, features: ImageFeatures) -> torch.Tensor:
        """The spatial memory of a stored result, encoded the way the reference does for its origin:
        prompted frames from the hole-filled, binarised mask; tracked frames from the raw logits."""
        logits = result.raw_logits.to(self.device)
        if result.from_prompt:
            logits = self._filled(logits)
        high_res = F.interpolate(logits, size=(self.image_size, self.image_size), mode="bilinear",
                                 align_corners=False)
        return self._encode_memory(features, high_res, result.object_score.to(self.device),
                                   binarize=result.from_prompt)

    def _encode_memory(self, features: ImageFeatures, high_res_masks: torch.Tensor, object_score: torch.Tensor,
                       binarize: bool) -> torch.Tensor:
        with self._autocast():
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
                obj.changed()
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

    def _check_points(self, points: Any, labels: Any, allow_empty: bool) -> tuple[np.ndarray, np.ndarray]:
        """Validated napari (row, col) clicks: (N, 2) float64 coordinates and (N,) int64 labels."""
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
        return pts.copy(), lab.astype(np.int64)

    def _to_model_xy(self, points: np.ndarray) -> torch.Tensor:
        """(N, 2) napari (row, col) pixels to (1, N, 2) model-space (x, y) on the S x S input."""
        height, width = self.frame_shape
        xy = torch.tensor(points[:, ::-1].copy(), dtype=torch.float32)[None]
        return xy / torch.tensor([width, height]) * self.image_size

    def _existing(self, obj_id: int) -> TrackedObject:
        obj = self._objects.get(obj_id)
        if obj is None:
            raise UnknownObjectError(f"unknown object id {obj_id!r}; existing ids: {self.obj_ids}")
        return obj


def _check_obj_id(obj_id: Any) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)) or obj_id < 1:
        raise ValueError(f"obj_id must be an integer >= 1 (the label value of the object), got {obj_id!r}")
    return int(obj_id)
