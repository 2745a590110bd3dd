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

:class:`TrackingSession` validates arguments and keeps the objects; the work is done by the modules it
delegates to: :mod:`.prompting` (clicks, boxes, masks), :mod:`.propagation`, :mod:`.memory_bank`,
:mod:`.precompute` and :mod:`.runtime` (running the model with the session's settings). Saving and
loading are :func:`napari_sam2.engine.session_file.save_session` / ``load_session``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import groupby
from typing import Any

import numpy as np
import torch

from ..model.sam2 import SAM2Model
from .acceleration import device_capabilities, resolve_precision
from .compact_logits import LOGIT_FLOOR, check_floor
from .division_finder import DivisionFinder
from .divisions import DivisionOptions, DivisionProposal, check_mode
from .feature_cache import FeatureCache
from .frames import FrameSource
from .label_stack import SessionLabels
from .label_tiles import check_window
from .lineage import Lineage, LineageError
from .memory_bank import commit_pending_prompts
from .object_state import FramePrompt, TrackedObject
from .outputs import FrameOutput, default_label_dtype
from .precompute import ConditionedCache, precompute
from .prefetch import FramePrefetcher
from .presence import Presence
from .prompt_checks import check_box, check_mask, check_obj_id, check_points, check_saved_prompt
from .prompting import apply_click_prompt, apply_mask_prompt, apply_mask_prompts, clear_frame_prompts, click_prompt
from .propagation import DIRECTIONS, check_run, track_frame, visit_plan
from .reseeding import Reseeder, ReseedOptions
from .runtime import ModelRuntime
from .session_lineage import LineageMethods
from .session_population import PopulationMethods
from .storage import Storage

__all__ = ["DIRECTIONS", "DivisionOptions", "DivisionProposal", "FrameOutput", "LineageError", "ReseedOptions",
           "TrackingSession", "UnknownObjectError"]


class UnknownObjectError(ValueError):
    """An object id that the session does not track."""


class TrackingSession(PopulationMethods, LineageMethods):
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
    storage_device : torch device, optional
        Where per-object results, memories and pointers are kept between frames. Default: results on the
        host; memories and pointers on the GPU while their bound fits a quarter of its memory, otherwise in
        pinned host memory (see :mod:`napari_sam2.engine.storage`); everything on the host on the CPU.
    feature_cache_size : int
        Number of frames whose image features are kept.
    object_batch_size : int
        How many objects go through memory attention, the mask decoder and the memory encoder in one
        batched pass while propagating (default 16); the results do not depend on it. On the CPU the
        memory attention shares its first step between the batch's objects, then takes them one by one.
    prefetch_frames : int
        While propagating, how many of the next frames a background thread reads and preprocesses ahead
        (0: none).
    precision : {"fp32", "bf16", "fp16"}, optional
        "fp32" reproduces the reference's numbers; "bf16" / "fp16" run the model under autocast (faster on
        GPUs with tensor cores). Default: chosen from the hardware, bf16 on CUDA GPUs of compute capability
        8.0 and newer, fp16 on 7.x, fp32 elsewhere (see :mod:`napari_sam2.engine.acceleration`); a choice
        the device cannot run raises ValueError.
    compile_model : bool
        Run the image encoder and memory attention through ``torch.compile``, once per model (memory padded
        to a fixed size, see :mod:`napari_sam2.model.memory_padding`; later sessions of the same model reuse
        the graphs). Changes the model passed in; a compile failure falls back to eager execution with one
        log line.
    stop_after_absent : int, optional
        Stop tracking an object once SAM 2 judged it absent (object score <= 0) on this many visited frames in a
        row of a propagation pass: later frames in that direction cost nothing for it and have no result, until
        a prompt for it (or its next prompted frame) revives it; see :meth:`stopped_objects` and
        :mod:`napari_sam2.engine.presence`. None (default): never stop.
    result_floor : float
        Results are kept as the crop of the box where their logits are above this (<= 0), so that an object
        costs its box per frame, not the whole frame (:mod:`napari_sam2.engine.compact_logits`). The default
        -32 changes nothing the session computes (logits it reports may read -32 where they were lower); a
        higher floor keeps less, but a memory re-encoded from an old result and a click refining a tracked
        result then see the floor in place of lower logits (masks and labels stay exact).

    A session is not thread-safe: one call at a time (the plugin runs one worker per session).
    """

    def __init__(self, model: SAM2Model, frames: Any, *, contrast_limits: tuple[float, float] | None = None,
                 rgb: bool | None = None, channel: int | None = None, fill_hole_area: int = 8,
                 device: torch.device | str | None = None, storage_device: torch.device | str | None = None,
                 feature_cache_size: int = 4, object_batch_size: int = 16, prefetch_frames: int = 2,
                 precision: str | None = None, compile_model: bool = False,
                 stop_after_absent: int | None = None, result_floor: float = LOGIT_FLOOR) -> None:
        if not isinstance(model, SAM2Model):
            raise TypeError(f"model must be a SAM2Model from napari_sam2.build_model, got {type(model).__name__}")
        if (isinstance(object_batch_size, bool) or not isinstance(object_batch_size, (int, np.integer))
                or object_batch_size < 1):
            raise ValueError(f"object_batch_size must be an integer >= 1, got {object_batch_size!r}")
        if fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
        self.result_floor = check_floor(result_floor)
        self.source = FrameSource(frames, contrast_limits=contrast_limits, rgb=rgb, channel=channel)
        self.device = torch.device(device) if device is not None else model.device
        # Checked before the model moves: a device that is not there, or a precision it cannot run, is one line.
        capabilities = device_capabilities(self.device)
        self.precision = resolve_precision(precision, self.device, capabilities)
        self.storage_device = None if storage_device is None else torch.device(storage_device)  # None: automatic
        self.storage = Storage(self.device, self.storage_device, bf16_on_device=capabilities.bf16_tensors)
        self.model = model.eval().to(self.device)
        self.fill_hole_area = int(fill_hole_area)
        self.object_batch_size = int(object_batch_size)
        self.image_size = model.image_size
        if compile_model:
            self.model.use_compiled()
        self._runtime = ModelRuntime(self.model, self.source, self.device, self.storage, self.precision,
                                     self.fill_hole_area, feature_cache_size, prefetch_frames, self.result_floor)
        self._objects: dict[int, TrackedObject] = {}
        self._precomputed = ConditionedCache()
        self._rgb, self._channel = rgb, channel
        self._presence = Presence(stop_after_absent)  # which objects stopped being tracked (objects that leave)
        self._lineage = Lineage()  # parents, spans and division proposals (see session_lineage.py)
        self._new_id_floor = 1  # ids the session creates itself start here at least (new_ids_from)

    def settings(self) -> dict[str, Any]:
        """The constructor settings that shape the results (contrast limits as resolved), JSON-friendly."""
        return {"contrast_limits": [self.source.mapping.low, self.source.mapping.high], "rgb": self._rgb,
                "channel": self._channel, "fill_hole_area": self.fill_hole_area,
                "stop_after_absent": self.stop_after_absent, "result_floor": self.result_floor}

    # ------------------------------------------------------------------ properties
    @property
    def features(self) -> FeatureCache:
        """The LRU cache of per-frame image features."""
        return self._runtime.features

    @property
    def _prefetcher(self) -> FramePrefetcher:
        """The background reader of a propagation's next frames (tests and benchmarks look at it)."""
        return self._runtime.prefetcher

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

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_points(self, frame: int, obj_id: int, points: Any, labels: Any,
                   clear_old_points: bool = True) -> FrameOutput:
        """Click prompts for one object on one frame; returns ``(frame, obj_ids, logits)`` for that frame.

        ``points`` is (N, 2) in napari (row, col) = (y, x) pixel coordinates of the frame; ``labels`` (N,)
        holds 1 for positive and 0 for negative clicks. With ``clear_old_points=False`` the clicks are
        added to the ones (and the box) already on that frame. A new ``obj_id`` (an integer >= 1, the
        label value it will get) starts a new object. ``logits`` is float32 (n_objects, Y, X), in
        ``obj_ids`` order (a :class:`~napari_sam2.engine.outputs.FrameOutput`).
        """
        frame, obj_id = self.source.check_index(frame), check_obj_id(obj_id)
        pts, labs = check_points(points, labels, self.frame_shape, allow_empty=False)
        self._check_prompt_spans([(frame, obj_id)])
        prompt = click_prompt(self._objects, frame, obj_id, pts, labs, clear_old_points)
        apply_click_prompt(self._runtime, self._objects, self._precomputed, frame, obj_id, prompt)
        return self._output(frame)

    @torch.inference_mode()
    def add_box(self, frame: int, obj_id: int, box: Sequence[float], points: Any = None,
                labels: Any = None) -> FrameOutput:
        """A box prompt ``(y0, x0, y1, x1)`` in pixels (napari (row, col) order), optionally with clicks.

        Replaces the frame's earlier clicks for this object (the box must come first, as in SAM 2).
        Returns ``(frame, obj_ids, logits)`` like :meth:`add_points`.
        """
        frame, obj_id = self.source.check_index(frame), check_obj_id(obj_id)
        corners = check_box(box, self.frame_shape)
        pts, labs = check_points(points, labels, self.frame_shape, allow_empty=True)
        self._check_prompt_spans([(frame, obj_id)])
        apply_click_prompt(self._runtime, self._objects, self._precomputed, frame, obj_id,
                           FramePrompt(pts, labs, corners))
        return self._output(frame)

    @torch.inference_mode()
    def add_mask(self, frame: int, obj_id: int, mask: Any) -> FrameOutput:
        """A mask prompt: bool (Y, X) at the frame's resolution, taken as this object's exact shape there.

        Replaces the frame's clicks for this object. Returns ``(frame, obj_ids, logits)``.
        """
        frame, obj_id = self.source.check_index(frame), check_obj_id(obj_id)
        mask = check_mask(mask, self.frame_shape)
        self._check_prompt_spans([(frame, obj_id)])
        apply_mask_prompt(self._runtime, self._objects, frame, obj_id, mask)
        return self._output(frame)

    @torch.inference_mode()
    def restore_prompts(self, prompts: Sequence[tuple[int, int, FramePrompt]]) -> None:
        """Apply ``(frame, obj_id, prompt)`` records in order (e.g. a saved session's prompt history).

        A prompt whose ``refines_result`` is set is applied on top of the frame's current result, as when
        it was first given; everything is validated before the session changes.
        """
        checked = []
        for frame, obj_id, prompt in prompts:
            frame, obj_id = self.source.check_index(frame), check_obj_id(obj_id)
            check_saved_prompt(prompt, frame, obj_id, self.frame_shape)
            checked.append((frame, obj_id, prompt))
        self._check_prompt_spans((frame, obj_id) for frame, obj_id, _ in checked)
        # Consecutive mask prompts go through the SAM heads in batches (they do not read earlier results).
        for masks, run in groupby(checked, key=lambda record: record[2].compact_mask is not None):
            if masks:
                apply_mask_prompts(self._runtime, self._objects,
                                   [(frame, obj_id, prompt.compact_mask) for frame, obj_id, prompt in run],
                                   self.object_batch_size)
                continue
            for frame, obj_id, prompt in run:
                apply_click_prompt(self._runtime, self._objects, self._precomputed, frame, obj_id,
                                   FramePrompt(prompt.points, prompt.labels, prompt.box))

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
        clear_frame_prompts(self._existing(obj_id), frame)
        return self._output(frame)

    def remove_object(self, obj_id: int) -> None:
        """Forget an object, its prompts and results; other objects are unaffected. Its links go (its parent's
        end with its last daughter; its daughters keep their start frames) and so do proposals naming it."""
        self._existing(obj_id)
        del self._objects[obj_id]
        self._lineage.forget(obj_id)
        self._precomputed.clear()

    def reset(self) -> None:
        """Forget every object, the lineage and the division proposals; cached image features are kept."""
        self._objects.clear()
        self._lineage.clear()
        self._precomputed.clear()

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

        ``should_stop`` is polled during the work (inside and between encoder blocks, between memory-
        attention layers and attention blocks: at most about 0.15 s apart with SAM 2.1 tiny at 1024 px on
        two free CPU cores); once it returns True the call returns False and the session is exactly as
        before (a stopped encode does not enter the feature cache). Returns True when everything was
        computed.

        This is an ordinary job on the session, like a click: it must not run concurrently with any other
        call on the same session (the plugin runs one worker per session at a time).
        """
        frame = self.source.check_index(frame)
        obj = None if obj_id is None else self._objects.get(check_obj_id(obj_id))
        return precompute(self._runtime, self._precomputed, frame, obj, should_stop)

    # ------------------------------------------------------------------ results
    @torch.inference_mode()
    def frame_logits(self, frame: int, obj_ids: Sequence[int] | None = None) -> tuple[list[int], np.ndarray]:
        """Current ``(obj_ids, logits)`` of frame ``frame`` (T index) without computing anything new:
        float32 (n, Y, X) logits at the frame's resolution; objects without a result there get -1024
        everywhere.

        ``obj_ids`` picks some objects, in that order (default: all, in :attr:`obj_ids` order); only
        those are upsampled, e.g. to redraw just the object that was clicked.
        """
        frame = self.source.check_index(frame)
        ids = self.obj_ids if obj_ids is None else [check_obj_id(obj_id) for obj_id in obj_ids]
        objects = [self._existing(obj_id) for obj_id in ids]
        return ids, self._runtime.frame_logits([obj.latest(frame) for obj in objects])

    def label_image(self, frame: int, window: Sequence[int] | None = None,
                    obj_ids: Sequence[int] | None = None) -> np.ndarray:
        """(Y, X) label image of a frame from the current results (label = obj_id, 0 = background; where
        objects overlap the highest logit wins, ties to the earlier object). Frames without results are all 0.

        Equals ``labels_from_logits(*self.frame_logits(frame), dtype=self.label_dtype)`` (up to float rounding
        at exact ties) without the (objects, Y, X) logits: tiles of rows are resampled on the model's device.

        ``window`` = (row0, col0, row1, col1), frame pixels in napari (row, col) = (y, x) order with exclusive
        ends, gives just that part: ``label_image(frame)[row0:row1, col0:col1]`` exactly, at a cost that follows
        the window and the objects that can reach it (e.g. to redraw what a click can change, see
        :meth:`object_box`). A window outside the frame is a ValueError. ``obj_ids`` lets only those objects
        take part, as if the others were not there (ties still go to the object earlier in :attr:`obj_ids`)."""
        frame = self.source.check_index(frame)
        checked = None if window is None else check_window(window, self.frame_shape)
        ids = self.obj_ids
        if obj_ids is not None:
            chosen = {self._existing(check_obj_id(obj_id)).obj_id for obj_id in obj_ids}
            ids = [obj_id for obj_id in ids if obj_id in chosen]
        results = [self._objects[obj_id].latest(frame) for obj_id in ids]
        return self._runtime.label_image(results, ids, self.label_dtype, window=checked)

    def object_box(self, frame: int, obj_id: int) -> tuple[int, int, int, int] | None:
        """The box (row0, col0, row1, col1) of frame ``frame``, napari (row, col) = (y, x) pixels with exclusive
        ends, outside which object ``obj_id``'s current logits there are <= 0 (so it labels no pixel outside it),
        or None when it has no result there or none > 0.

        Conservative but tight: the frame pixels whose bilinear resampling reads a low-resolution pixel where the
        hole-filled logits are > 0. The labels a change of this one object can change lie in the union of its
        boxes before and after (what the napari plugin redraws after a click, with :meth:`label_image`'s
        ``window``)."""
        frame = self.source.check_index(frame)
        return self._runtime.object_box(self._existing(check_obj_id(obj_id)).latest(frame))

    @property
    def label_dtype(self) -> np.dtype:
        """uint16 while every object id fits, else uint32 (what TIFF and napari handle well)."""
        return default_label_dtype(self.obj_ids)

    def label_stack(self) -> SessionLabels:
        """A lazy (T, Y, X) label stack of the current results, computed one frame at a time on access
        (e.g. for :func:`napari_sam2.exports.write_label_tiff` on movies that would not fit in memory)."""
        return SessionLabels(self)

    def _output(self, frame: int) -> FrameOutput:
        """Every object's current result on ``frame`` (after a prompt)."""
        results = [obj.latest(frame) for obj in self._objects.values()]
        return FrameOutput(frame, self.obj_ids, results=self._runtime.frame_results(results))

    # ------------------------------------------------------------------ propagation
    def propagate(self, start: int | None = None, direction: str = "forward", max_frames: int | None = None, *,
                  reseed: ReseedOptions | None = None, divisions: str = "propose",
                  division_options: DivisionOptions | None = None) -> Iterator[FrameOutput]:
        """Track every object through the movie, yielding ``(frame, obj_ids, logits)`` frame by frame.

        ``start`` defaults to the earliest prompted frame of any object. ``direction`` is "forward",
        "backward" or "both" (forward, then backward from ``start - 1``). ``max_frames`` limits how far to
        go past ``start``; the range is inclusive (``max_frames=1`` covers 2 frames). As in the reference,
        backward from frame 0 covers nothing. Stopping the generator early (cancel) keeps every frame
        yielded so far; nothing else changes.

        ``reseed`` (a :class:`~napari_sam2.engine.reseeding.ReseedOptions`) adds cells that enter: on the
        frames it names, after tracking the frame, every candidate mask (segment-all, or a given (T, Y, X)
        label stack) that no object covers (IoU below ``new_object_iou`` with each, default 0.1) becomes a new
        object with a mask prompt there (the next free ids), tracked from the next frame on; that frame's
        output already includes it. Objects stopped by ``stop_after_absent`` have no result on the frames
        past their stop (see :meth:`stopped_objects`); objects are tracked only within their
        :meth:`object_span`.

        ``divisions``: after each frame of a forward pass, objects that look divided there (their mask split
        into two parts, or two cells that start there or that re-seeding segmented lie in it; thresholds in
        ``division_options``, a :class:`~napari_sam2.engine.divisions.DivisionOptions`) are proposed:
        "propose" (default) lists them in :meth:`division_proposals` and changes nothing, "auto" accepts each
        at once (the daughters are tracked from the next frame), "off" makes none. Each yielded output's
        ``divisions`` holds the proposals made on its frame. Backward passes propose nothing.
        """
        check_run(direction, max_frames)
        check_mode(divisions)
        if division_options is not None and not isinstance(division_options, DivisionOptions):
            raise TypeError(f"division_options must be a DivisionOptions, got {type(division_options).__name__}")
        start = None if start is None else self.source.check_index(start)
        reseeder = None if reseed is None else Reseeder(reseed, self.num_frames, self.frame_shape)
        finder = None if divisions == "off" else DivisionFinder(division_options)
        return self._propagate(start, direction, max_frames, reseeder, finder, divisions == "auto")

    @torch.inference_mode()  # on a generator function torch enters the mode around each step only
    def _propagate(self, start: int | None, direction: str, max_frames: int | None, reseeder: Reseeder | None,
                   finder: DivisionFinder | None, auto: bool) -> Iterator[FrameOutput]:
        # A separate generator so that argument errors above are raised at call time, not on first next().
        presence = self._presence
        presence.begin_run(self._objects)  # before the commit: a new prompt revives a stopped object
        commit_pending_prompts(self._runtime, self._objects.values())
        plan = visit_plan(self._default_start() if start is None else start, direction, max_frames,
                          self.num_frames)
        prefetcher = self._runtime.prefetcher
        try:
            for step, (frame, reverse, pass_start) in enumerate(plan):
                upcoming = (t for t, _, _ in plan[step + 1:] if t not in self.features)
                prefetcher.schedule(upcoming, keep=frame)  # read while this frame is tracked
                objects = presence.to_track(self._objects.values(), frame, reverse, pass_start,
                                            bounds=self._lineage.spans())
                track_frame(self._runtime, objects, frame, reverse, pass_start, self.object_batch_size)
                presence.observe(objects, frame, reverse)
                # Cells that enter: added after the frame is tracked, tracked themselves from the next frame.
                if reseeder is not None and reseeder.due(abs(frame - pass_start), frame):
                    reseeder.reseed(self._runtime, self._objects, frame, reverse, self.object_batch_size,
                                    first_id=self._next_new_id())
                found: tuple[DivisionProposal, ...] = ()
                if finder is not None and not reverse:
                    tracked = [obj for obj in objects if frame not in obj.cond]
                    found = self._divisions_on_frame(finder, tracked, frame, reseeder, auto)
                results = [obj.latest(frame) for obj in self._objects.values()]  # None: stopped
                yield FrameOutput(frame, self.obj_ids, results=self._runtime.frame_results(results), divisions=found)
        finally:  # finished, failed or cancelled: drop what was read ahead
            prefetcher.cancel()

    def frames_to_visit(self, start: int | None = None, direction: str = "forward",
                        max_frames: int | None = None) -> list[int]:
        """The frames :meth:`propagate` with these arguments would yield, in order (for progress bars)."""
        check_run(direction, max_frames)
        if start is None:
            if not any(obj.cond or obj.pending for obj in self._objects.values()):
                return []
            start = self._default_start()
        return [frame for frame, _, _ in visit_plan(self.source.check_index(start), direction, max_frames,
                                                    self.num_frames)]

    def _default_start(self) -> int:
        """The earliest prompted frame of any object."""
        return min(t for obj in self._objects.values() for t in (*obj.cond, *obj.pending))

    def _existing(self, obj_id: int) -> TrackedObject:
        obj = self._objects.get(obj_id)
        if obj is None:
            raise UnknownObjectError(f"unknown object id {obj_id!r}; existing ids: {self.obj_ids}")
        return obj
