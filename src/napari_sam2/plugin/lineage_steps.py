"""The widget's lineage steps (a division accepted or rejected, a manual division, a link, an unlink), kept so that
each can be undone: the lineage before it and the pixels it changed in the Labels layer.

Qt-free. A step's Labels write is one undo step of the layer; napari tells nobody when the user undoes it, so the
widget asks :func:`shows` whether the layer holds a step's pixels as written (``"after"``) or as they were before
(``"before"``): only then does it take the lineage back too. Pixels are (row, col) = (y, x) of a frame's tracked
plane; frames are indices along the tracked axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .label_ids import as_ids, isin_ids


@dataclass(frozen=True)
class PlaneChange:
    """The pixels (``rows``, ``cols``) of frame ``frame`` that a step changed, with their values before and after."""

    frame: int
    rows: np.ndarray
    cols: np.ndarray
    before: np.ndarray
    after: np.ndarray


@dataclass
class LineageStep:
    """One undoable lineage step: ``lineage`` is the session's ``lineage_state()`` before it, ``new_ids`` the objects
    it created (taken out again on undo), ``changes`` what it wrote into the Labels layer (one undo step there),
    ``obj_ids`` the objects whose span it changed (their pixels follow the lineage again on undo), ``drawn`` the
    objects drawn for it (a manual division's daughters: removed on undo, as a cancel does) and ``frame`` the first
    frame of its daughters."""

    what: str
    session: Any
    lineage: Any
    new_ids: tuple[int, ...] = ()
    changes: list[PlaneChange] = field(default_factory=list)
    obj_ids: tuple[int, ...] = ()
    drawn: tuple[int, ...] = ()
    frame: int = 0


def step_names(step: LineageStep, obj_id: int) -> bool:
    """Whether ``step`` (its objects, or its lineage snapshot: links, starts, proposals) names ``obj_id``: once
    that object is removed, the session refuses to restore the snapshot, so the step can no longer be undone."""
    state = step.lineage
    named = {*step.new_ids, *step.obj_ids}
    named.update(i for pair in getattr(state, "parents", ()) for i in pair)
    named.update(i for i, _ in getattr(state, "starts", ()))
    for proposal in getattr(state, "proposals", ()):
        named.update((proposal.parent, *(proposal.daughters or ())))
    return obj_id in named


def frames_holding(read_frame: Any, obj_ids: Iterable[int], first: int, stop: int) -> list[int]:
    """Frames ``first..stop - 1`` whose plane (``read_frame(t)``) holds any of ``obj_ids``."""
    ids = as_ids(obj_ids)
    if not ids.size:
        return []
    return [t for t in range(max(first, 0), stop) if isin_ids(read_frame(t), ids).any()]


def plane_changes(before: Mapping[int, np.ndarray], read_frame: Any) -> list[PlaneChange]:
    """What changed on each frame of ``before`` (copies of its planes) in the planes ``read_frame(t)`` holds now."""
    changes = []
    for frame, old in sorted(before.items()):
        new = np.asarray(read_frame(frame))
        rows, cols = np.nonzero(old != new)
        if rows.size:
            changes.append(PlaneChange(frame, rows, cols, old[rows, cols], new[rows, cols].copy()))
    return changes


def shows(read_frame: Any, changes: Iterable[PlaneChange], which: str) -> bool:
    """Whether every changed pixel holds its value ``which`` ("before" or "after") now (True for no change)."""
    for change in changes:
        plane = np.asarray(read_frame(change.frame))
        if not np.array_equal(plane[change.rows, change.cols], getattr(change, which)):
            return False
    return True
