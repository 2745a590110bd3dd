"""The session's lineage methods: divisions, links between objects, the frames each object lives on, proposals.

Part of :class:`~napari_sam2.engine.session.TrackingSession` (a mixin, as
:mod:`~napari_sam2.engine.session_population`). ``divide`` ends an object and starts its daughters,
``link`` / ``unlink`` curate by hand, ``object_span`` says where an object may be tracked and prompted,
``division_proposals`` / ``accept_division`` / ``reject_division`` review what ``propagate`` proposed (see
:mod:`~napari_sam2.engine.lineage` and :mod:`~napari_sam2.engine.divisions`). Frames are T indices; masks are
bool (Y, X) = (row, col) at the frame's resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .compact_mask import CompactMask
from .division_finder import DivisionFinder
from .divisions import DivisionProposal
from .frames import FrameSource
from .lineage import Lineage, LineageError, LineageState, Span
from .object_state import TrackedObject
from .prompt_checks import check_mask, check_obj_id
from .prompting import apply_mask_prompts
from .reseeding import Reseeder, commit_new_objects
from .runtime import ModelRuntime


class LineageMethods:
    """Lineage curation; mixed into TrackingSession, whose state these read."""

    source: FrameSource
    object_batch_size: int
    _runtime: ModelRuntime
    _objects: dict[int, TrackedObject]
    _lineage: Lineage

    frame_shape: tuple[int, int]
    _existing: Callable[[int], TrackedObject]  # TrackingSession's: the object, or UnknownObjectError
    _next_new_id: Callable[[], int]  # the population mixin's: where ids the session creates itself start

    # ------------------------------------------------------------------ reading
    def lineage(self) -> dict[int, int]:
        """child id -> parent id of every link (from divisions, accepted proposals and :meth:`link`)."""
        return dict(sorted(self._lineage.parents.items()))

    def object_span(self, obj_id: int) -> Span:
        """(start, end): the first and last T index (inclusive) on which ``obj_id`` is tracked and may be
        prompted, as divisions and links set them; None where unbounded."""
        self._existing(check_obj_id(obj_id))
        return self._lineage.span(int(obj_id))

    def division_proposals(self) -> list[DivisionProposal]:
        """The pending division proposals, sorted by (frame, parent); at most one per parent (its earliest)."""
        return self._lineage.sorted_proposals()

    # ------------------------------------------------------------------ curation
    @torch.inference_mode()
    def divide(self, obj_id: int, frame: int, daughter_masks: Sequence[Any],
               daughter_ids: Sequence[int] | None = None) -> list[int]:
        """Object ``obj_id`` divides on ``frame``: it ends at ``frame - 1`` (its results after that are removed,
        it is not tracked past it), and each bool (Y, X) mask of ``daughter_masks`` (two or more, on ``frame``,
        no pixel in two of them) becomes a new object with that mask as its prompt on ``frame``, starting there
        (never tracked before it) with ``obj_id`` as its parent. The daughters' ids are ``daughter_ids`` (one per
        mask, ids no object has) or else the next new ids (see :meth:`new_ids_from`); returned in order. Refused
        (LineageError, nothing changed) when the object has prompts on or after ``frame``, starts on or after
        it, or divided already, or an id is taken."""
        return self._divide(obj_id, frame, daughter_masks, in_run=False, daughter_ids=daughter_ids)

    def link(self, child: int, parent: int) -> None:
        """Make ``parent`` the parent of ``child`` (manual curation): the child starts at its earliest prompted
        frame f, the parent ends at f - 1 (results outside those bounds are removed). Refused with one line for
        unknown ids, a self-link, a cycle, a child that has a parent already (unlink it first), or a parent with
        prompts on or after f."""
        child_obj, parent_obj = self._existing(check_obj_id(child)), self._existing(check_obj_id(parent))
        if not child_obj.prompt_steps:
            raise LineageError(f"object {child} has no prompt, so no first frame; prompt it first")
        start = min(child_obj.prompt_steps)
        self._lineage.check_link(child_obj.obj_id, parent_obj.obj_id, start, parent_obj.prompt_steps)
        self._lineage.link(child_obj.obj_id, parent_obj.obj_id, start)
        self._trim_to_spans([child_obj.obj_id, parent_obj.obj_id])

    def unlink(self, child: int) -> None:
        """Remove ``child``'s link: its start bound goes, and so does the parent's end once it has no daughter
        left. Also lifts the start kept by a child whose parent was removed."""
        self._lineage.unlink(self._existing(check_obj_id(child)).obj_id)

    def accept_division(self, proposal: DivisionProposal, daughter_ids: Sequence[int] | None = None) -> list[int]:
        """Apply a proposal (pending or not): link its ``daughters`` to its parent when it names them, else
        :meth:`divide` the parent with its ``parts`` (the new daughters get ``daughter_ids`` when given, as in
        :meth:`divide`). Returns the daughter ids."""
        if daughter_ids is not None and proposal.daughters is not None \
                and tuple(int(d) for d in daughter_ids) != proposal.daughters:
            raise LineageError(f"this proposal links the existing objects {proposal.daughters}; daughter_ids only "
                               "name daughters that accepting creates")
        return self._accept(proposal, in_run=False, daughter_ids=daughter_ids)

    def reject_division(self, proposal: DivisionProposal) -> None:
        """Drop a proposal: the object keeps going, and the same (frame, parent) is not proposed again."""
        if not isinstance(proposal, DivisionProposal):
            raise TypeError(f"reject_division takes a DivisionProposal, got {type(proposal).__name__}")
        self._lineage.reject(proposal)

    def lineage_state(self) -> LineageState:
        """An immutable snapshot of links, spans, rejected pairs and pending proposals (for undo)."""
        return self._lineage.state()

    def restore_lineage(self, state: LineageState) -> None:
        """Go back to a :meth:`lineage_state` snapshot; results outside the restored spans are removed. A
        snapshot naming objects that are gone is refused (LineageError) before anything changes."""
        prompted = {obj_id: obj.prompt_steps for obj_id, obj in self._objects.items()}
        self._lineage.restore(state, prompted, self.source.num_frames)
        self._trim_to_spans(self._objects)

    # ------------------------------------------------------------------ internals
    def _check_prompt_spans(self, prompts: Iterable[tuple[int, int]]) -> None:
        """Refuse (frame, obj_id) prompts outside their objects' spans (one line: see Lineage.check_prompt)."""
        spans = self._lineage.spans()  # once: each span() call scans every link
        for frame, obj_id in prompts:
            if obj_id in spans:
                self._lineage.check_prompt(obj_id, frame, spans[obj_id])

    def _trim_to_spans(self, obj_ids: Iterable[int]) -> None:
        """Remove the tracked results of these objects outside their spans (prompts are never outside)."""
        spans = self._lineage.spans()
        for obj_id in obj_ids:
            if obj_id not in spans:
                continue
            start, end = spans[obj_id]
            obj = self._objects[obj_id]
            outside = [t for t in {*obj.tracked, *obj.direction}
                       if (start is not None and t < start) or (end is not None and t > end)]
            for t in outside:
                if t not in obj.cond and t not in obj.pending:
                    obj.tracked.pop(t, None)
                    obj.direction.pop(t, None)
                    obj.resident_memories.discard(t)
            if outside:
                obj.changed()

    def _divide(self, obj_id: int, frame: int, daughter_masks: Sequence[Any], in_run: bool,
                daughter_ids: Sequence[int] | None = None) -> list[int]:
        """:meth:`divide`; ``in_run``: during a forward propagation, so the daughters' memories are encoded now
        and they are tracked from the next frame of the run."""
        frame = self.source.check_index(frame)
        parent = self._existing(check_obj_id(obj_id))
        if isinstance(daughter_masks, np.ndarray) and daughter_masks.ndim == 2:
            raise ValueError("daughter_masks is a sequence of (Y, X) masks, one per daughter; got a single mask")
        masks = [check_mask(mask, self.frame_shape) for mask in daughter_masks]
        if len(masks) < 2:
            raise ValueError(f"a division needs two or more daughter masks, got {len(masks)}")
        empty = [i for i, mask in enumerate(masks) if not mask.any()]
        if empty:
            raise ValueError(f"daughter mask(s) {empty} are empty; paint each daughter on frame {frame}")
        shared = int(np.count_nonzero(np.sum(masks, axis=0, dtype=np.int32) > 1))
        if shared:
            raise ValueError(f"the daughter masks overlap on {shared} pixel(s) of frame {frame}; give each pixel to "
                             "one daughter")
        children = self._lineage.children(parent.obj_id)
        if children:
            raise LineageError(f"object {obj_id} divided already (into {', '.join(map(str, children))}); unlink its "
                               f"daughters first")
        ids = self._daughter_ids(daughter_ids, len(masks))
        self._lineage.check_link(ids[0], parent.obj_id, frame, parent.prompt_steps)
        fresh: dict[int, TrackedObject] = {}
        apply_mask_prompts(self._runtime, fresh, [(frame, i, CompactMask.of(m)) for i, m in zip(ids, masks)],
                           self.object_batch_size)
        if in_run:
            commit_new_objects(self._runtime, self._objects, fresh, frame, reverse=False)
        else:
            self._objects.update(fresh)
        for daughter in ids:
            self._lineage.link(daughter, parent.obj_id, frame)
        self._trim_to_spans([parent.obj_id])
        return ids

    def _daughter_ids(self, daughter_ids: Sequence[int] | None, count: int) -> list[int]:
        """The ids of ``count`` new daughters: ``daughter_ids`` checked (distinct, free), or the next new ids."""
        if daughter_ids is None:
            first = self._next_new_id()
            return list(range(first, first + count))
        ids = [check_obj_id(i) for i in daughter_ids]
        if len(ids) != count or len(set(ids)) != count or min(ids) < 1:
            raise ValueError(f"daughter_ids must be {count} distinct ids >= 1, one per daughter mask; got "
                             f"{list(daughter_ids)}")
        taken = sorted(set(ids) & set(self._objects))
        if taken:
            raise LineageError(f"object id(s) {taken} are taken; choose daughter ids no object has")
        return ids

    def _accept(self, proposal: DivisionProposal, in_run: bool,
                daughter_ids: Sequence[int] | None = None) -> list[int]:
        if not isinstance(proposal, DivisionProposal):
            raise TypeError(f"accept_division takes a DivisionProposal, got {type(proposal).__name__}")
        if proposal.daughters is None:
            return self._divide(proposal.parent, proposal.frame, list(proposal.parts), in_run,
                                daughter_ids)
        parent = self._existing(proposal.parent)
        daughters = [self._existing(d) for d in proposal.daughters]
        for daughter in daughters:  # both checked before either is linked
            if not daughter.prompt_steps:
                raise LineageError(f"object {daughter.obj_id} has no prompt, so no first frame; prompt it first")
            self._lineage.check_link(daughter.obj_id, parent.obj_id, min(daughter.prompt_steps), parent.prompt_steps)
        for daughter in daughters:
            self.link(daughter.obj_id, parent.obj_id)
        return [d.obj_id for d in daughters]

    def _divisions_on_frame(self, finder: DivisionFinder, tracked: Sequence[TrackedObject], frame: int,
                            reseeder: Reseeder | None, auto: bool) -> tuple[DivisionProposal, ...]:
        """The proposals made on a forward-tracked ``frame`` (kept pending, or applied at once when ``auto``;
        one that cannot be applied stays pending)."""
        segmented = reseeder.segmented.get(frame, ()) if reseeder is not None else ()
        self._lineage.drop_pending(frame)  # looked at again: what is not found again goes
        made = [p for p in finder.find(self._runtime, self._objects, tracked, frame, self._lineage, segmented)
                if self._lineage.offer(p)]
        if auto:
            for proposal in made:
                try:
                    self._accept(proposal, in_run=True)
                except LineageError:
                    continue  # e.g. a daughter linked meanwhile: left for review
        return tuple(made)
