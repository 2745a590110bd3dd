"""Cells that enter: during a propagation, add the objects that a segmentation finds and nothing tracks yet.

On chosen frames of a run (every k-th visited frame, and/or named T indices), after the frame is tracked,
candidate masks come either from segmenting everything on the frame (the automatic mask generator on the
frame's cached image features, as ``TrackingSession.segment_all``) or from a given (T, Y, X) label stack
(e.g. Cellpose's; only that frame is read). A candidate is **new** when

* its IoU with every object's mask on that frame is below ``new_object_iou`` (default 0.1), and
* at most ``max_covered`` (default 0.5) of its pixels already belong to some object,

where the objects' masks are the frame's label image (each pixel to the object with the highest logit above
0; the candidates accepted before on the same frame count as objects too, so overlapping candidates do not
both become objects). The second rule keeps a piece of a tracked cell (a nucleus, one lobe) that the
automatic generator proposes from becoming a duplicate; ``max_covered=1`` turns it off. The label image
costs the rows each object spans, and each candidate only its bounding box, so the check does not grow
as objects x pixels.

Each new mask becomes a mask prompt of a new object on that frame (the next free ids, batched through the
SAM heads), and its memory is encoded at once, so it is tracked from the next frame of the same run on.
Everything is computed before the session changes: an error (or a stop) leaves it as it was.
Coordinates follow napari: label stacks are (T, Y, X), masks (Y, X) = (row, col).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .automatic import AutomaticMaskOptions, generate_masks
from .compact_mask import CompactMask
from .memory_bank import encode_pending_memories
from .object_state import TrackedObject
from .prompting import apply_mask_prompts
from .runtime import ModelRuntime
from .seeding import label_prompts

DEFAULT_NEW_OBJECT_IOU = 0.1
DEFAULT_MAX_COVERED = 0.5

Objects = dict[int, TrackedObject]


@dataclass(frozen=True)
class ReseedOptions:
    """Re-seeding during ``TrackingSession.propagate(..., reseed=ReseedOptions(...))``.

    ``every``: re-seed on every k-th frame the run visits (the k-th, 2k-th, ... after its start frame);
    ``frames``: and/or on these T indices when the run visits them (the start frame too). ``labels``: a
    (T, Y, X) label stack (0 = background) whose labels on a re-seeded frame are the candidates (their
    values are not used as ids); None: segment everything on the frame with ``automatic`` options (default
    :class:`~napari_sam2.engine.automatic.AutomaticMaskOptions`). ``new_object_iou`` and ``max_covered``:
    a candidate becomes an object when its IoU with every object is below the first and at most the second
    fraction of its pixels is already labelled (see :mod:`napari_sam2.engine.reseeding`).
    """

    every: int | None = None
    frames: Sequence[int] | None = None
    labels: Any = None
    automatic: AutomaticMaskOptions | None = None
    new_object_iou: float = DEFAULT_NEW_OBJECT_IOU
    max_covered: float = DEFAULT_MAX_COVERED

    def __post_init__(self) -> None:
        every = self.every
        if every is not None and (isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1):
            raise ValueError(f"reseed every must be None or an integer >= 1 (visited frames), got {every!r}")
        if every is None and (self.frames is None or len(self.frames) == 0):
            raise ValueError("re-seeding needs every=K or frames=[...]: say on which frames to look for new objects")
        if self.labels is not None and self.automatic is not None:
            raise ValueError("give re-seeding labels or automatic mask options, not both")
        for name in ("new_object_iou", "max_covered"):
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not number:  # a user's mistake: one ValueError line, as for the ranges below
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0 < self.new_object_iou <= 1:
            raise ValueError(f"new_object_iou must be in (0, 1], got {self.new_object_iou!r}")
        if not 0 <= self.max_covered <= 1:
            raise ValueError(f"max_covered must be in [0, 1], got {self.max_covered!r}")


class Reseeder:
    """One propagation's re-seeding: on which visited frames, the candidates there, and adding the new ones.

    Built (and checked against the movie: frame indices, the label stack's (T, Y, X) shape) when
    ``propagate`` is called, so that a mistake is reported before the run starts.
    """

    def __init__(self, options: ReseedOptions, num_frames: int, frame_shape: tuple[int, int]) -> None:
        self.options = options
        self.num_frames = num_frames
        self.frame_shape = frame_shape
        frames = set()
        for t in options.frames or ():
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < num_frames:
                raise ValueError(f"reseed frame {t!r} is out of range: the movie has {num_frames} frame(s) "
                                 f"(0..{num_frames - 1})")
            frames.add(int(t))
        self.frames = frames
        # The last re-seeded frame's candidates that did not become objects (cells that objects cover), for the
        # "cells" division rule (napari_sam2.engine.division_finder): {frame: masks}.
        self.segmented: dict[int, list[CompactMask]] = {}
        labels = options.labels
        if labels is not None:
            shape = tuple(getattr(labels, "shape", np.shape(labels)))
            if shape != (num_frames, *frame_shape):
                raise ValueError(f"reseed labels must be a (T, Y, X) label stack of {(num_frames, *frame_shape)}, "
                                 f"got shape {shape}")
            kind = getattr(getattr(labels, "dtype", None), "kind", "i")
            if kind not in "iub":
                raise ValueError(f"reseed labels must be non-negative integers (0 = background), got dtype "
                                 f"{labels.dtype}")

    def due(self, distance: int, frame: int) -> bool:
        """Whether to re-seed on ``frame``, ``distance`` frames past the start of its pass (0: the pass's first)."""
        every = self.options.every
        return frame in self.frames or (every is not None and distance > 0 and distance % every == 0)

    def candidates(self, runtime: ModelRuntime, frame: int) -> list[CompactMask]:
        """The candidate masks on ``frame``: the label stack's labels (ascending), or the automatic masks
        (best first) from the frame's cached features; empty ones left out."""
        if self.options.labels is not None:
            found = [mask for _, _, mask in label_prompts(self.options.labels, [frame], None, self.frame_shape,
                                                          self.num_frames)]
        else:
            masks = generate_masks(runtime.model, runtime.source.normalized(frame), self.options.automatic,
                                   features=runtime.features.get(frame), autocast=runtime.autocast)
            found = [mask.mask for mask in masks if mask.area > 0]
        return [mask for mask in found if not mask.empty]

    def reseed(self, runtime: ModelRuntime, objects: Objects, frame: int, reverse: bool,
               batch_size: int, first_id: int | None = None) -> list[int]:
        """Add the new candidates of ``frame`` (just tracked, in direction ``reverse``) as objects with
        committed mask prompts there, ids from ``first_id`` on (default: one above every object); returns
        their ids (ascending)."""
        results = [obj.latest(frame) for obj in objects.values()]
        indices = runtime.label_image(results, list(range(1, len(results) + 1)), np.uint32)  # object index + 1
        candidates = self.candidates(runtime, frame)
        chosen = new_masks(indices, candidates, self.options.new_object_iou, self.options.max_covered)
        self.segmented = {frame: [mask for mask in candidates if all(mask is not c for c in chosen)]}
        first = max(max(objects, default=0) + 1, first_id or 1)
        prompts = [(frame, first + i, mask) for i, mask in enumerate(chosen)]
        if prompts:
            fresh: Objects = {}
            apply_mask_prompts(runtime, fresh, prompts, batch_size)
            commit_new_objects(runtime, objects, fresh, frame, reverse)
        return [obj_id for _, obj_id, _ in prompts]


def new_masks(labels: np.ndarray, candidates: Sequence[CompactMask], new_object_iou: float = DEFAULT_NEW_OBJECT_IOU,
              max_covered: float = DEFAULT_MAX_COVERED) -> list[CompactMask]:
    """The candidates that no object covers, in order, given the frame's (Y, X) label image (0 = background).

    A candidate is taken when its IoU with every label is below ``new_object_iou`` and at most
    ``max_covered`` of its pixels are labelled; a taken candidate then counts as a label (on the pixels it
    adds) for the candidates after it. Label areas come from one pass over the image; each candidate reads
    only its bounding box.
    """
    work = np.asarray(labels).astype(np.int64)  # a copy: taken candidates are painted into it
    areas = _label_areas(work)
    next_label = max(areas, default=0) + 1
    chosen = []
    for mask in candidates:
        if mask.empty:
            continue
        row0, col0, row1, col1 = mask.bounds
        window = work[row0:row1, col0:col1]  # a view: what a taken candidate paints stays in ``work``
        ids, overlaps = np.unique(window[mask.crop], return_counts=True)
        size = int(mask.crop.sum())
        labelled = ids != 0
        ids, overlaps = ids[labelled], overlaps[labelled]
        covered = overlaps.sum() / size
        others = np.array([areas[i] for i in ids.tolist()], dtype=np.float64)
        best_iou = float((overlaps / (size + others - overlaps)).max()) if ids.size else 0.0
        if best_iou >= new_object_iou or covered > max_covered:
            continue
        added = mask.crop & (window == 0)
        window[added] = next_label
        areas[next_label] = int(added.sum())
        next_label += 1
        chosen.append(mask)
    return chosen


def _label_areas(labels: np.ndarray) -> dict[int, int]:
    """Pixels of each label of an int64 label image: one bincount for small ids (session indices), else a sort."""
    flat = labels.ravel()
    if flat.size and 0 <= flat.min() and flat.max() <= flat.size:
        return dict(enumerate(np.bincount(flat).tolist()))
    ids, counts = np.unique(flat, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


def commit_new_objects(runtime: ModelRuntime, objects: Objects, fresh: Objects, frame: int, reverse: bool) -> None:
    """Encode the memories of ``fresh`` objects' pending prompts on ``frame`` and make it their conditioning
    frame (as ``commit_pending_prompts`` does at a run's start, storage planned for all objects), then add
    them to ``objects``. Nothing changes in ``objects`` before every memory is computed."""
    runtime.plan_storage([*objects.values(), *fresh.values()])
    encode_pending_memories(runtime, fresh.values())
    for obj in fresh.values():
        obj.cond[frame] = obj.pending.pop(frame)
        obj.direction[frame] = reverse
        obj.changed()
    objects.update(fresh)
