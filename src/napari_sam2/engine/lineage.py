"""A session's lineage: which object is whose daughter, the frames each object lives on, and division proposals.

Kept by object id beside the session's objects (no tensors, no model). A link ``child -> parent`` gives the
child a *start* (its first frame: the division frame) and the parent an *end* (the frame before its earliest
child's start); an object is tracked, and may be prompted, only on the frames of its span. A start stays when
the parent is removed (the child still appeared there); unlinking lifts the child's start and, once it has no
children left, the parent's end. Frames are T indices of the (T, Y, X[, C]) movie.

Division proposals (:class:`~napari_sam2.engine.divisions.DivisionProposal`) wait here for review, at most one
per parent (its earliest); rejected ``(frame, parent)`` pairs are remembered and not proposed again, and a
rejected "split" also covers the frames right after it on which the same object is still split (the mask that
stays two-lobed is the same non-division). A run that visits a frame again drops the pending proposals of that
frame it does not find again (see :meth:`Lineage.drop_pending`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from .divisions import DivisionProposal

Span = tuple[int | None, int | None]


class LineageError(ValueError):
    """A lineage edit or a prompt that the lineage refuses; the message says why and what to do."""


@dataclass(frozen=True)
class LineageState:
    """A snapshot of a lineage (``TrackingSession.lineage_state()``): links, starts, rejected pairs and pending
    proposals (immutable; the proposals' masks are read-only)."""

    parents: tuple[tuple[int, int], ...] = ()  # (child, parent)
    starts: tuple[tuple[int, int], ...] = ()  # (obj_id, first frame)
    rejected: tuple[tuple[int, int], ...] = ()  # (frame, parent)
    proposals: tuple[DivisionProposal, ...] = ()
    rejected_splits: tuple[tuple[int, int], ...] = ()  # the rejected pairs that were "split" (frame, parent)


class Lineage:
    """Links, spans, rejected pairs and pending proposals of one session's objects."""

    def __init__(self) -> None:
        self.parents: dict[int, int] = {}
        self.starts: dict[int, int] = {}
        self.rejected: set[tuple[int, int]] = set()
        self.rejected_splits: set[tuple[int, int]] = set()  # a subset of rejected: their next frame too
        self.proposals: dict[tuple[int, int], DivisionProposal] = {}

    # ------------------------------------------------------------------ spans
    def children(self, parent: int) -> list[int]:
        return sorted(child for child, p in self.parents.items() if p == parent)

    def span(self, obj_id: int) -> Span:
        """(start, end) T indices (inclusive), None where unbounded."""
        starts = [self.starts[c] for c in self.children(obj_id) if c in self.starts]
        return self.starts.get(obj_id), (min(starts) - 1 if starts else None)

    def spans(self) -> dict[int, Span]:
        """The spans of the bounded objects only (one pass over the links: read on every tracked frame)."""
        ends: dict[int, int] = {}
        for child, parent in self.parents.items():
            if child in self.starts:
                ends[parent] = min(ends.get(parent, self.starts[child]), self.starts[child])
        ends = {parent: start - 1 for parent, start in ends.items()}
        return {obj_id: (self.starts.get(obj_id), ends.get(obj_id)) for obj_id in set(self.starts) | set(ends)}

    def check_prompt(self, obj_id: int, frame: int, span: Span | None = None) -> None:
        """Refuse a prompt for ``obj_id`` on ``frame`` outside its span (one line saying what to do);
        ``span``: the object's span if known (from :meth:`spans`, read once for many prompts)."""
        start, end = self.span(obj_id) if span is None else span
        if end is not None and frame > end:
            daughters = ", ".join(str(c) for c in self.children(obj_id))
            raise LineageError(f"object {obj_id} ended at frame {end} (it divided into {daughters}); prompt a "
                               f"daughter or unlink it first")
        if start is not None and frame < start:
            why = f"a daughter of {self.parents[obj_id]}" if obj_id in self.parents else "its parent was removed"
            raise LineageError(f"object {obj_id} starts at frame {start} ({why}); prompt it on frame {start} or "
                               f"later, or unlink it first")

    # ------------------------------------------------------------------ edits
    def check_link(self, child: int, parent: int, start: int, parent_prompts: Collection[int]) -> None:
        """Refuse a link ``child -> parent`` with the child starting on ``start`` (checked ids exist)."""
        if child == parent:
            raise LineageError(f"object {child} cannot be its own parent")
        if child in self.parents:
            raise LineageError(f"object {child} already has parent {self.parents[child]}; unlink it first")
        ancestor: int | None = parent
        seen: set[int] = set()  # restore refuses cycles; this guard keeps a bad state from looping anyway
        while ancestor is not None and ancestor not in seen:
            if ancestor == child:
                raise LineageError(f"linking {child} to {parent} would make a cycle ({parent} descends from {child})")
            seen.add(ancestor)
            ancestor = self.parents.get(ancestor)
        late = sorted(t for t in parent_prompts if t >= start)
        if late:
            raise LineageError(f"object {parent} has prompts on frame(s) {late}, at or after its daughter {child}'s "
                               f"first frame {start}; clear them first")
        parent_start = self.span(parent)[0]
        if parent_start is not None and parent_start >= start:
            raise LineageError(f"object {parent} starts at frame {parent_start}, not before its daughter {child}'s "
                               f"first frame {start}")
        child_end = self.span(child)[1]
        if child_end is not None and child_end < start:
            raise LineageError(f"object {child} ends at frame {child_end}, before frame {start}")

    def link(self, child: int, parent: int, start: int) -> None:
        """Record a checked link (see :meth:`check_link`); drops the parent's pending proposals."""
        self.parents[child] = parent
        self.starts[child] = start
        self.prune()

    def unlink(self, child: int) -> None:
        """Remove the child's link and its start (the parent's end goes with its last child)."""
        if child not in self.parents and child not in self.starts:
            raise LineageError(f"object {child} has no parent and no start frame; nothing to unlink")
        self.parents.pop(child, None)
        self.starts.pop(child, None)

    def forget(self, obj_id: int) -> None:
        """A removed object: its link, its own start and every proposal naming it go (children keep starts)."""
        self.parents.pop(obj_id, None)
        self.starts.pop(obj_id, None)
        for child in [c for c, p in self.parents.items() if p == obj_id]:
            del self.parents[child]
        self.rejected = {(t, p) for t, p in self.rejected if p != obj_id}
        self.rejected_splits &= self.rejected
        self.proposals = {key: p for key, p in self.proposals.items()
                          if p.parent != obj_id and obj_id not in (p.daughters or ())}

    def clear(self) -> None:
        self.parents.clear()
        self.starts.clear()
        self.rejected.clear()
        self.rejected_splits.clear()
        self.proposals.clear()

    # ------------------------------------------------------------------ proposals
    def sorted_proposals(self) -> list[DivisionProposal]:
        return [self.proposals[key] for key in sorted(self.proposals)]

    def may_propose(self, parent: int, frame: int) -> bool:
        """Whether a proposal of ``parent`` at ``frame`` would be kept (see :meth:`offer`)."""
        if (frame, parent) in self.rejected or self.children(parent):
            return False
        if any(p == parent and t < frame for t, p in self.proposals):
            return False  # its earlier proposal is still waiting
        start, end = self.span(parent)
        return (start is None or start < frame) and (end is None or frame <= end + 1)

    def offer(self, proposal: DivisionProposal) -> bool:
        """Keep ``proposal`` unless rejected before, its parent divided already or has an earlier pending
        proposal; a later pending one of the same parent is replaced. A "split" right after a rejected split
        of the same parent is the mask still split: rejected as well. Returns whether it was kept."""
        if not self.may_propose(proposal.parent, proposal.frame):
            return False
        if proposal.kind == "split" and (proposal.frame - 1, proposal.parent) in self.rejected_splits:
            self.rejected.add(proposal.key)
            self.rejected_splits.add(proposal.key)
            return False
        for key in [k for k in self.proposals if k[1] == proposal.parent]:
            del self.proposals[key]
        self.proposals[proposal.key] = proposal
        return True

    def reject(self, proposal: DivisionProposal) -> None:
        self.proposals.pop(proposal.key, None)
        self.rejected.add(proposal.key)
        if proposal.kind == "split":
            self.rejected_splits.add(proposal.key)

    def drop_pending(self, frame: int) -> None:
        """Drop the pending proposals of ``frame`` (a run is about to look at it again: what it no longer
        finds there must not stay, nor block the same parent's later proposals)."""
        self.proposals = {key: p for key, p in self.proposals.items() if p.frame != frame}

    def prune(self, existing: Iterable[int] | None = None) -> None:
        """Drop the proposals that no longer apply: a parent that divided (or is gone), daughters that are gone
        or have a parent."""
        alive = None if existing is None else set(existing)

        def applies(p: DivisionProposal) -> bool:
            named = (p.parent, *(p.daughters or ()))
            if alive is not None and not alive.issuperset(named):
                return False
            return not self.children(p.parent) and not any(d in self.parents for d in p.daughters or ())

        self.proposals = {key: p for key, p in self.proposals.items() if applies(p)}

    # ------------------------------------------------------------------ snapshots
    def state(self) -> LineageState:
        return LineageState(tuple(sorted(self.parents.items())), tuple(sorted(self.starts.items())),
                            tuple(sorted(self.rejected)), tuple(self.sorted_proposals()),
                            tuple(sorted(self.rejected_splits)))

    def restore(self, state: LineageState, prompted: Mapping[int, Collection[int]], num_frames: int) -> None:
        """Take ``state``'s content, refusing it (LineageError, nothing changed) when it does not fit the
        session: ``prompted`` is each existing object's prompted frames, ``num_frames`` the movie's T. Refused:
        unknown ids, self-links, a child given two parents or two starts, cycles, frames outside [0, T), a
        span that ends before it starts, and prompts outside the restored spans."""
        if not isinstance(state, LineageState):
            raise TypeError(f"restore_lineage takes what lineage_state() returned, got {type(state).__name__}")
        named = {i for pair in state.parents for i in pair} | {i for i, _ in state.starts}
        for p in state.proposals:
            named.update((p.parent, *(p.daughters or ())))
        unknown = sorted(named - set(prompted))
        if unknown:
            raise LineageError(f"the lineage names object(s) {unknown} that the session does not have")
        restored = Lineage()
        restored.parents = _unique_pairs(state.parents, "parent")
        restored.starts = _unique_pairs(state.starts, "start frame")
        restored.rejected = set(state.rejected)
        restored.rejected_splits = set(state.rejected_splits) & restored.rejected
        restored.proposals = {p.key: p for p in state.proposals}
        restored.check_consistent(prompted, num_frames)
        self.__dict__.update(restored.__dict__)

    def check_consistent(self, prompted: Mapping[int, Collection[int]], num_frames: int) -> None:
        """Refuse (LineageError, one line) links and spans that no edit could have made (see :meth:`restore`)."""
        for child, parent in self.parents.items():
            if child == parent:
                raise LineageError(f"object {child} is linked as its own parent")
        for child in self.parents:
            seen, ancestor = {child}, self.parents.get(child)
            while ancestor is not None:
                if ancestor in seen:
                    raise LineageError(f"the links of object {child} make a cycle ({sorted(seen)})")
                seen.add(ancestor)
                ancestor = self.parents.get(ancestor)
        frames = [("start", obj_id, t) for obj_id, t in self.starts.items()]
        frames += [("proposal", p.parent, p.frame) for p in self.proposals.values()]
        for what, obj_id, t in frames:
            if not 0 <= t < num_frames:
                raise LineageError(f"the {what} frame {t} of object {obj_id} is outside the movie's "
                                   f"{num_frames} frame(s)")
        spans = self.spans()
        for obj_id, (start, end) in sorted(spans.items()):
            if start is not None and end is not None and end < start:
                raise LineageError(f"object {obj_id} would start at frame {start} but end at frame {end}")
        for obj_id, steps in sorted(prompted.items()):
            for t in sorted(steps) if obj_id in spans else ():
                try:
                    self.check_prompt(obj_id, t, spans[obj_id])
                except LineageError as exc:
                    raise LineageError(f"a prompt lies outside its object's span in that lineage: {exc}") from None


def _unique_pairs(pairs: Iterable[tuple[int, int]], what: str) -> dict[int, int]:
    """(key, value) pairs as a dict, refusing a key given twice (a child with two parents or two starts)."""
    found: dict[int, int] = {}
    for key, value in pairs:
        if key in found and found[key] != value:
            raise LineageError(f"object {key} has two {what}s ({found[key]} and {value})")
        found[int(key)] = int(value)
    return found
