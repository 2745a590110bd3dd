"""Looking for divisions on a frame a propagation just tracked (forward passes), with the rules of
:mod:`~napari_sam2.engine.divisions`.

* "split": every object the model tracked on the frame (no prompt there) whose own mask (logits > 0, read in its
  box only: ``ModelRuntime.object_box``) falls into two parts;
* "cells": an object prompted before the frame and two cells of this frame each at least half
  inside its mask there or here: either two objects that *start* on this frame (first prompted here, no parent:
  e.g. seeded from a segmentation with ``add_labels`` on every frame; accepting links them), or two masks that
  re-seeding segmented here and did not add (accepting divides with them). A cell that the own mask of another
  object holds (at least ``cell_inside`` of it) is that object's cell and not a daughter (found once per cell,
  from one array of the objects' boxes: see ``_Holders``). Pairs mixing the two are not made.

A parent needs no prompt on or after the frame (else accepting it would be refused) and must be one the lineage
still takes proposals for (:meth:`~napari_sam2.engine.lineage.Lineage.may_propose`); "cells" wins over "split"
for the same parent; a cell serves one parent. Masks are (Y, X) = (row, col) at the frame's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .compact_mask import CompactMask
from .divisions import (
    DivisionOptions,
    DivisionProposal,
    daughter_pair,
    inside_fraction,
    parts_at_full_resolution,
    reduction,
    split_labels,
    split_parts,
)
from .lineage import Lineage
from .object_state import FrameResult, TrackedObject
from .runtime import ModelRuntime


class DivisionFinder:
    """One propagation's division search: ``find`` on each forward-tracked frame."""

    def __init__(self, options: DivisionOptions | None = None) -> None:
        self.options = options or DivisionOptions()

    def find(self, runtime: ModelRuntime, objects: dict[int, TrackedObject], tracked: Sequence[TrackedObject],
             frame: int, lineage: Lineage, segmented: Sequence[CompactMask] = ()) -> list[DivisionProposal]:
        """Proposals on ``frame`` (not yet offered to ``lineage``): ``tracked`` are the objects the model tracked
        there, ``segmented`` the re-seeding's masks of the frame that did not become objects."""
        reader = _MaskReader(runtime)
        starters = [obj for obj in objects.values() if self._starts_here(obj, frame, lineage)]
        starter_ids = {obj.obj_id for obj in starters}

        def can_divide(obj: TrackedObject) -> bool:
            return (obj.obj_id not in starter_ids and lineage.may_propose(obj.obj_id, frame)
                    and not any(t >= frame for t in obj.prompt_steps))

        found: dict[int, DivisionProposal] = {}
        if frame > 0 and (starters or segmented):
            parents = [obj for obj in objects.values() if can_divide(obj) and obj.prompt_steps
                       and (obj.latest(frame - 1) is not None or obj.latest(frame) is not None)]
            pools = [[(obj.obj_id, reader.mask(obj.latest(frame))) for obj in starters],
                     [(None, mask) for mask in segmented]]
            pools = [[(i, m) for i, m in pool if m is not None and not m.empty] for pool in pools]
            others = [obj for obj in objects.values() if obj.obj_id not in starter_ids]
            holders = _Holders(reader, others, frame, self.options.cell_inside)
            used: set[int] = set()  # id() of the cells already given to a parent
            for parent in parents:
                own = [m for m in (reader.mask(parent.latest(frame - 1)), reader.mask(parent.latest(frame)))
                       if m is not None and not m.empty]
                for pool in pools:
                    near = [(i, m) for i, m in pool if id(m) not in used
                            and any(_boxes_meet(m.bounds, p.bounds) for p in own)]
                    # A cell that another object's own mask holds is that object's cell, not a daughter (a
                    # mask gone wrong can cover a neighbour).
                    near = [(i, m) for i, m in near if not holders.claimed(m, parent)]
                    pair = daughter_pair(own, [m for _, m in near], self.options) if len(near) >= 2 else None
                    if pair is None:
                        continue
                    (first_id, first), (second_id, second) = near[pair[0]], near[pair[1]]
                    used.update((id(first), id(second)))
                    daughters = None if first_id is None else (first_id, second_id)
                    found[parent.obj_id] = DivisionProposal(frame, parent.obj_id, (first, second), daughters,
                                                            "cells")
                    break
        for obj in tracked:
            if obj.obj_id in found or frame in obj.cond or not can_divide(obj):
                continue
            parts = self._split(reader, obj.latest(frame))
            if parts is not None:
                found[obj.obj_id] = DivisionProposal(frame, obj.obj_id, parts, None, "split")
        return [found[obj_id] for obj_id in sorted(found)]

    def _split(self, reader: _MaskReader, result: FrameResult | None) -> tuple[CompactMask, CompactMask] | None:
        """The split rule on one result: full-frame parts, or None. A box longer than ``max_side`` is first
        looked at through a coarse sample of the logits, and read in full only when it splits there."""
        box = reader.box(result)
        if box is None:
            return None
        factor = reduction((box[2] - box[0], box[3] - box[1]), self.options)
        if factor == 1:
            mask = reader.mask(result)
            parts = split_parts(mask.crop, self.options)
        else:
            owner = split_labels(reader.sampled(result, box, factor), self.options, factor)
            if owner is None:
                return None
            mask = reader.mask(result)
            crop = mask.full()[box[0]:box[2], box[1]:box[3]]  # the box, not the mask's tight bounds
            parts = parts_at_full_resolution(owner, crop, factor, self.options)
            mask = CompactMask.cropped(crop, box[:2], mask.shape)
        if parts is None:
            return None
        first, second = (CompactMask.cropped(part, mask.offset, mask.shape) for part in parts)
        return first, second

    @staticmethod
    def _starts_here(obj: TrackedObject, frame: int, lineage: Lineage) -> bool:
        """First prompted on ``frame`` and without a parent."""
        return bool(obj.prompt_steps) and min(obj.prompt_steps) == frame and obj.obj_id not in lineage.parents


class _Holders:
    """Which objects' own masks hold a cell on a frame (at least ``fraction`` of its pixels inside).

    The objects' boxes are read once per frame into one array (shared with the split rule through the
    reader's cache), so finding the objects near a cell is one vectorised comparison, and each cell's holders
    are found once however many parents it is near: linear in cells x objects, with masks read only for
    the few objects whose box meets the cell (the old loop read every object for each cell of each parent).
    Own masks rather than one label image: a parent's mask gone wrong must not take a neighbour's pixels.
    """

    def __init__(self, reader: _MaskReader, objects: Sequence[TrackedObject], frame: int, fraction: float) -> None:
        self.reader, self.objects, self.frame, self.fraction = reader, list(objects), frame, fraction
        self._boxes: np.ndarray | None = None
        self._found: dict[int, set[int]] = {}  # by id() of the cell

    def claimed(self, cell: CompactMask, parent: TrackedObject) -> bool:
        """Whether an object other than ``parent`` holds ``cell``."""
        return bool(self.holders(cell) - {parent.obj_id})

    def holders(self, cell: CompactMask) -> set[int]:
        key = id(cell)
        if key not in self._found:
            if self._boxes is None:
                boxes = [self.reader.box(obj.latest(self.frame)) or (0, 0, 0, 0) for obj in self.objects]
                self._boxes = np.array(boxes, dtype=np.int64).reshape(-1, 4)
            r0, c0, r1, c1 = cell.bounds
            b = self._boxes
            near = np.flatnonzero((b[:, 0] < r1) & (r0 < b[:, 2]) & (b[:, 1] < c1) & (c0 < b[:, 3]))
            found = set()
            for index in near.tolist():
                obj = self.objects[index]
                mask = self.reader.mask(obj.latest(self.frame))
                if mask is not None and inside_fraction(cell, mask) >= self.fraction:
                    found.add(obj.obj_id)
            self._found[key] = found
        return self._found[key]


class _MaskReader:
    """An object's own mask on a frame (logits > 0, at the frame's resolution) as a CompactMask, read in the
    box outside which its logits are <= 0: the cost follows the low-resolution map and the box, not the frame."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self._masks: dict[int, CompactMask | None] = {}  # by id() of the result, for this frame's search
        self._boxes: dict[int, tuple[int, int, int, int] | None] = {}

    def box(self, result: FrameResult | None) -> tuple[int, int, int, int] | None:
        """(row0, col0, row1, col1) outside which the result's logits are <= 0, or None."""
        if result is None:
            return None
        key = id(result)
        if key not in self._boxes:
            self._boxes[key] = self.runtime.object_box(result)
        return self._boxes[key]

    def sampled(self, result: FrameResult, box: tuple[int, int, int, int], factor: int) -> np.ndarray:
        """The mask in ``box`` seen at 1 / ``factor`` of the frame's resolution: the hole-filled low-resolution
        logits bilinearly sampled at the centres of ``factor`` x ``factor`` blocks of frame pixels, as the
        frame-resolution mask samples them at its pixel centres (cost: the blocks, not the box's pixels)."""
        plane = self.runtime.filled(result.raw_logits)[0, 0].float().cpu().numpy()
        height, width = self.runtime.source.height, self.runtime.source.width
        rows = box[0] + factor * np.arange(-(-(box[2] - box[0]) // factor)) + (factor - 1) / 2
        cols = box[1] + factor * np.arange(-(-(box[3] - box[1]) // factor)) + (factor - 1) / 2
        # frame pixel centre -> low-resolution coordinate (bilinear resampling with align_corners=False)
        low_rows = (rows + 0.5) * plane.shape[0] / height - 0.5
        low_cols = (cols + 0.5) * plane.shape[1] / width - 0.5
        grid = np.meshgrid(low_rows, low_cols, indexing="ij")
        return ndimage.map_coordinates(plane, grid, order=1, mode="nearest") > 0

    def mask(self, result: FrameResult | None) -> CompactMask | None:
        if result is None:
            return None
        key = id(result)
        if key not in self._masks:
            box = self.box(result)
            if box is None:
                self._masks[key] = None
            else:
                crop = self.runtime.label_image([result], [1], np.uint8, window=box) == 1
                shape = (self.runtime.source.height, self.runtime.source.width)
                self._masks[key] = CompactMask.cropped(crop, box[:2], shape)
        return self._masks[key]


def _boxes_meet(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (row0, col0, row1, col1) boxes with exclusive ends overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
