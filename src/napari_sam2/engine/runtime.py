"""The model as a tracking session runs it: device, precision, storage and hole filling, plus frame features.

Every step of a session (a click, a tracked frame, a memory encode, a precompute) calls the model through
one :class:`ModelRuntime`, so those settings are applied in one place. Axes follow napari: frames are
(T, Y, X[, C]) and logits are (Y, X) at the frame's resolution; inside the model, masks are S/4 x S/4 with
S the model's ``image_size``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from ..model.sam2 import NO_OBJECT_SCORE, ImageFeatures, SAM2Model
from .acceleration import autocast, check_finite
from .compact_logits import LOGIT_FLOOR, CompactLogits
from .feature_cache import FeatureCache
from .frames import FrameSource
from .label_tiles import Window, frame_box, reaches, tiled_label_image, window_source
from .object_state import FrameResult
from .postprocess import fill_holes
from .prefetch import FramePrefetcher
from .storage import Storage

# On a CPU the memory encoder's mask downsampler works on S x S activations that leave the caches in large
# passes: per mask a pass of 4 costs what one mask alone does and a pass of 16 a third more (SAM 2.1 tiny at
# S = 512, one thread), and its transient memory grows with the pass (about 12 MiB per mask at S = 512). So a
# CPU encodes at most this many masks per pass, whatever batch the caller tracked or committed. A batch is
# always cut the same way, so memories re-encoded later in a batch of the same objects come back bit for bit.
CPU_MEMORY_PASS = 4


class ModelRuntime:
    """A model on a device with a session's settings, its frames and their cached image features.

    ``precision`` is "fp32", "bf16" or "fp16" (autocast, see :mod:`~napari_sam2.engine.acceleration`);
    ``storage`` places results, memories and pointers (:mod:`~napari_sam2.engine.storage`);
    ``fill_hole_area`` is the largest background hole (in S/4 mask pixels) filled whenever logits are read;
    results keep their logits above ``result_floor`` (:mod:`~napari_sam2.engine.compact_logits`).
    ``features`` is the LRU feature cache, ``prefetcher`` reads the next frames of a propagation in the
    background.
    """

    def __init__(self, model: SAM2Model, source: FrameSource, device: torch.device, storage: Storage,
                 precision: str, fill_hole_area: int, feature_cache_size: int, prefetch_frames: int,
                 result_floor: float = LOGIT_FLOOR) -> None:
        self.model = model
        self.source = source
        self.device = device
        self.storage = storage
        self.precision = precision
        self.fill_hole_area = fill_hole_area
        self.result_floor = result_floor
        self.image_size = model.image_size
        self.num_frames = source.num_frames
        self.features = FeatureCache(self.encode_frame, capacity=feature_cache_size)
        self.prefetcher = FramePrefetcher(self.model_input, depth=prefetch_frames)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context each model call runs in (bf16 autocast or nothing); entered around the calls
        themselves: encoding a frame or a memory, conditioning and decoding."""
        return autocast(self.device, self.precision)

    # ------------------------------------------------------------------ frames
    def model_input(self, frame: int) -> torch.Tensor:
        """(1, 3, S, S) normalised model input of frame ``frame`` (read now)."""
        return self.source.model_input(frame, self.image_size, self.device)

    def encode_frame(self, frame: int) -> ImageFeatures:
        """Image features of ``frame``, from its prefetched input if a propagation read it ahead."""
        image = self.prefetcher.take(frame)
        return self.encode_image(image if image is not None else self.model_input(frame))

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        with self.autocast():
            return self.model.encode_image(image)

    # ------------------------------------------------------------------ results and memories
    def stored_results(self, low_res: torch.Tensor, obj_ptr: torch.Tensor, object_score: torch.Tensor,
                       from_prompt: bool) -> list[FrameResult]:
        """A batch of B decoder outputs as kept: one FrameResult per object, float32, placed by :attr:`storage`."""
        if self.precision == "fp16":
            # fp16 can overflow (bf16 has fp32's range). One check, one device sync, for the batch: a sum is
            # inf or NaN exactly when a term is (fp32 sums of finite logits and pointers cannot overflow).
            sums = torch.stack([low_res.float().sum(), obj_ptr.float().sum(), object_score.float().sum()])
            check_finite(sums, self.precision, "the model's outputs")
        store = self.storage
        return [FrameResult(CompactLogits.of(logits, self.result_floor), pointer, score, from_prompt)
                for logits, pointer, score in
                zip(store.results(low_res), store.pointers(obj_ptr), store.results(object_score), strict=True)]

    def stored_result(self, low_res: torch.Tensor, obj_ptr: torch.Tensor, object_score: torch.Tensor,
                      from_prompt: bool) -> FrameResult:
        """One decoder output (batch 1) as kept (see :meth:`stored_results`)."""
        return self.stored_results(low_res, obj_ptr, object_score, from_prompt)[0]

    def encode_memories(self, features: ImageFeatures, high_res_masks: torch.Tensor, object_score: torch.Tensor,
                        binarize: bool) -> list[torch.Tensor]:
        """Spatial memories (1, 64, h, w) of B masks (B, 1, S, S) on a frame, one per object, stored as
        bfloat16 as the reference does (this rounding is part of SAM 2's numerics), where :attr:`storage`
        puts memories. A CPU encodes :data:`CPU_MEMORY_PASS` masks per pass."""
        step = CPU_MEMORY_PASS if self.device.type == "cpu" else high_res_masks.shape[0]
        memories: list[torch.Tensor] = []
        for start in range(0, high_res_masks.shape[0], max(step, 1)):
            chunk = slice(start, start + step)
            with self.autocast():
                memory = self.model.encode_memory(features.feat, high_res_masks[chunk], object_score[chunk],
                                                  binarize=binarize)
            memories += self.storage.memories(memory)
            del memory
        return memories

    def plan_storage(self, objects: list) -> None:
        """Decide where the memories and pointers of ``objects`` go from now on (see :class:`Storage`)."""
        side = self.image_size // 16
        self.storage.plan(objects, self.num_frames, memory_bytes=64 * side * side * 2, pointer_bytes=256 * 4)

    def result_memory(self, result: FrameResult, features: ImageFeatures) -> torch.Tensor:
        """The spatial memory of a stored result on the frame of ``features``, encoded the way the reference
        does for its origin: prompted frames from the hole-filled, binarised mask; tracked frames from the
        raw logits. Exactly what was encoded when the result was new (so a dropped memory can be redone)."""
        return self.result_memories([result], features)[0]

    def result_memories(self, results: list[FrameResult], features: ImageFeatures) -> list[torch.Tensor]:
        """:meth:`result_memory` of B stored results of one frame and one origin (all prompted or all
        tracked), in one pass of the memory encoder."""
        logits = torch.cat([result.raw_logits.to(self.device) for result in results])
        from_prompt = results[0].from_prompt
        if from_prompt:
            logits = self.filled(logits)
        high_res = F.interpolate(logits, size=(self.image_size, self.image_size), mode="bilinear",
                                 align_corners=False)
        scores = torch.cat([result.object_score.to(self.device) for result in results])
        return self.encode_memories(features, high_res, scores, binarize=from_prompt)

    def filled(self, logits: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """``logits`` (..., S/4, S/4) with holes up to :attr:`fill_hole_area` filled, each plane on its own:
        pass a frame's objects as one stack (one call, one host round trip on an accelerator). ``in_place``
        fills a stack the caller owns without copying it (see :func:`~.postprocess.fill_holes`)."""
        return fill_holes(logits, self.fill_hole_area, in_place=in_place)

    def _filled_low_res(self, results: list[FrameResult | None]) -> tuple[list[int], torch.Tensor | None]:
        """The indices of the results that are there and their hole-filled logits (n, 1, S/4, S/4) on the
        device, filled in one call where they are stored (no device round trip for host-kept results)."""
        present = [i for i, r in enumerate(results) if r is not None]
        if not present:
            return present, None
        return present, self._filled_stack([results[i].compact_logits for i in present])

    def _filled_stack(self, stored: list[CompactLogits]) -> torch.Tensor:
        """(n, 1, S/4, S/4) hole-filled logits of stored results on the device (see :meth:`_filled_low_res`)."""
        if all(t.device.type == "cpu" for t in stored):
            # Filled in by numpy in this thread; torch's copies are split across the intra-op threads, which on
            # a busy machine wait for each other (seconds for hundreds of objects).
            planes = np.empty((len(stored), 1, *stored[0].shape), dtype=np.float32)
            for plane, logits in zip(planes, stored):
                logits.write_into(plane[0])
            stack = torch.from_numpy(planes)
        else:
            dense = [t.dense() for t in stored]
            same = all(t.device == dense[0].device for t in dense)
            stack = torch.cat(dense if same else [t.to(self.device) for t in dense], dim=0)
        return self.filled(stack, in_place=True).to(self.device)  # a new stack: filled in place

    def frame_logits(self, results: list[FrameResult | None]) -> np.ndarray:
        """(n, Y, X) float32 logits at frame resolution (hole-filled); missing results are -1024."""
        height, width = self.source.height, self.source.width
        out = np.full((len(results), height, width), NO_OBJECT_SCORE, dtype=np.float32)
        present, low = self._filled_low_res(results)
        if present:
            if low.shape[-2:] != (height, width):
                low = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
            out[present] = low[:, 0].float().cpu().numpy()
        return out

    def frame_results(self, results: list[FrameResult | None]) -> StoredFrame:
        """A frame's ``results`` (one per object, None where it has none) read on demand by a FrameOutput."""
        return StoredFrame(self, results)

    @torch.inference_mode()
    def label_image(self, results: list[FrameResult | None], obj_ids: list[int], dtype: np.dtype | type,
                    window: Window | None = None) -> np.ndarray:
        """(Y, X) label image of ``dtype`` of one frame, row (y) by column (x): the id of the object with the
        highest hole-filled logit above 0, 0 elsewhere (ties to the first object), as
        ``labels_from_logits(obj_ids, self.frame_logits(results), dtype=dtype)`` up to float rounding at
        exact ties, without the (n, Y, X) logits: resampled in tiles of rows on the device
        (:mod:`~napari_sam2.engine.label_tiles`). ``results[i]`` is object ``obj_ids[i]``'s (or None).

        With ``window`` = (row0, col0, row1, col1) (frame pixels, ends exclusive, already checked), exactly
        ``label_image(results, obj_ids, dtype)[row0:row1, col0:col1]``: only the objects whose stored logits
        can be > 0 in the low-resolution pixels that the window reads are hole-filled and resampled, and only
        there. Objects kept as nothing above their fill (absent ones: -1024 everywhere) are always left out."""
        if len(obj_ids) != len(results):
            raise ValueError(f"{len(results)} results for {len(obj_ids)} object ids")
        frame_shape = (self.source.height, self.source.width)
        present = [i for i, r in enumerate(results) if r is not None and self._may_label(r.compact_logits)]
        if window is not None and present:
            stored = [results[i].compact_logits for i in present]
            region = window_source(stored[0].shape, frame_shape, window)
            present = [i for i, hit in zip(present, reaches(stored, region, self.fill_hole_area), strict=True)
                       if hit]
        shape = frame_shape if window is None else (window[2] - window[0], window[3] - window[1])
        if not present:
            return np.zeros(shape, dtype=dtype)
        low = self._filled_stack([results[i].compact_logits for i in present])
        return tiled_label_image(low[:, 0], [obj_ids[i] for i in present], frame_shape, dtype, window=window)

    @torch.inference_mode()
    def object_box(self, result: FrameResult | None) -> Window | None:
        """The frame-pixel box (row0, col0, row1, col1), ends exclusive, of the pixels whose resampled,
        hole-filled logit of ``result`` reads a low-resolution pixel > 0 (or NaN): outside it the object's
        logits are <= 0, so it labels nothing there. None when there is no result or no such pixel."""
        if result is None or not self._may_label(result.compact_logits):
            return None
        plane = self._filled_stack([result.compact_logits])[0, 0]
        live = (~(plane <= 0)).cpu().numpy()
        rows, cols = np.flatnonzero(live.any(axis=1)), np.flatnonzero(live.any(axis=0))
        if rows.size == 0:
            return None
        map_box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        return frame_box(map_box, tuple(plane.shape), (self.source.height, self.source.width))

    def _may_label(self, logits: CompactLogits) -> bool:
        """False when stored logits hold nothing but a fill <= 0 (an empty box: e.g. an absent object, -1024
        everywhere) and hole filling cannot fill the whole plane: then they are <= 0 everywhere, also filled."""
        h0, w0, h1, w1 = logits.box
        height, width = logits.shape
        return (h0 < h1 and w0 < w1) or not logits.fill <= 0 or height * width <= self.fill_hole_area


class StoredFrame:
    """One frame's stored results, read on demand (the ``FrameResults`` of
    :class:`~napari_sam2.engine.outputs.FrameOutput`): the FrameResult objects themselves, which later prompts
    and runs replace rather than change, so it keeps what the frame held when it was made."""

    def __init__(self, runtime: ModelRuntime, results: list[FrameResult | None]) -> None:
        self._runtime = runtime
        self._results = list(results)
        self.shape = (len(self._results), runtime.source.height, runtime.source.width)

    @torch.inference_mode()
    def logits(self, rows: list[int] | None = None) -> np.ndarray:
        picked = self._results if rows is None else [self._results[i] for i in rows]
        return self._runtime.frame_logits(picked)

    def label_image(self, obj_ids: list[int], dtype: np.dtype) -> np.ndarray:
        return self._runtime.label_image(self._results, obj_ids, dtype)
