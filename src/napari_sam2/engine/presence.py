"""Objects that leave: stop tracking an object once SAM 2 has judged it absent on n frames in a row.

With hundreds of cells, those that left the field of view (or died) would cost a full tracking step each
on every later frame. SAM 2 says when it sees no object: the object score (the presence logit of
:class:`~napari_sam2.engine.object_state.FrameResult`) is <= 0 and the mask is all -1024. After
``stop_after_absent`` such visited frames in a row within one pass of a propagation, the object is *stopped*
in that pass's direction (forward or backward in T) from the frame where the count was reached: later frames
in that direction are not tracked for it (they cost nothing, and any older result there is dropped, so they
have no result). A conditioning frame (a prompt) of the object further on lifts the stop there, and any new
prompt for the object (a pending result, i.e. ``add_points`` / ``add_box`` / ``add_mask`` / ``add_labels``)
revives it completely.

Objects are tracked independently, so a re-run over the frames before a stop gives the same results and stops
the object at the same frame again; a run in the other direction is not affected by the stop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .memory_bank import drop_old_memories
from .object_state import TrackedObject


def check_stop_after_absent(value: Any) -> int | None:
    """``stop_after_absent``: None (never stop) or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"stop_after_absent must be None or an integer >= 1 (frames in a row), got {value!r}")
    return int(value)


class Presence:
    """Which objects are stopped, per tracking direction, and the run of absent frames of each object.

    ``stops[reverse][obj_id]`` is the T index from which, going forward (``reverse=False``) or backward,
    the object is no longer tracked (exclusive: the stop frame itself was tracked). Keyed by object id, so
    the session's :class:`TrackedObject` records stay as they are.
    """

    def __init__(self, stop_after_absent: int | None = None) -> None:
        self.stop_after_absent = check_stop_after_absent(stop_after_absent)
        self.stops: dict[bool, dict[int, int]] = {False: {}, True: {}}
        self._absent: dict[int, int] = {}  # absent visited frames in a row, in the current pass
        self._pass: tuple[bool, int] | None = None

    # ------------------------------------------------------------------ state
    def refresh(self, objects: Mapping[int, TrackedObject]) -> None:
        """Forget removed objects and revive those that received a prompt since they stopped."""
        for stops in self.stops.values():
            for obj_id in list(stops):
                obj = objects.get(obj_id)
                if obj is None or obj.pending:
                    del stops[obj_id]

    def stopped(self, objects: Mapping[int, TrackedObject]) -> list[int]:
        """Ids of the objects stopped in either direction, in the session's order."""
        self.refresh(objects)
        return [obj_id for obj_id in objects if any(obj_id in stops for stops in self.stops.values())]

    def set_limit(self, stop_after_absent: int | None) -> None:
        """Change the number of absent frames after which objects stop; None also revives every object."""
        self.stop_after_absent = check_stop_after_absent(stop_after_absent)
        if self.stop_after_absent is None:
            self.clear()

    def clear(self) -> None:
        for stops in self.stops.values():
            stops.clear()
        self._absent.clear()

    # ------------------------------------------------------------------ a propagation
    def begin_run(self, objects: Mapping[int, TrackedObject]) -> None:
        """Called before a propagation commits its prompts: revives prompted objects, restarts the counts."""
        self.refresh(objects)
        self._absent.clear()
        self._pass = None

    def to_track(self, objects: Iterable[TrackedObject], frame: int, reverse: bool, pass_start: int,
                 bounds: Mapping[int, tuple[int | None, int | None]] | None = None) -> list[TrackedObject]:
        """The objects to track on ``frame`` (in order). A stopped object reaching one of its prompted frames
        is tracked again from there; the others beyond their stop are left out and lose any older result on
        ``frame`` (so that it has none). ``bounds`` maps object ids to their lineage span (start, end), T
        indices inclusive, None unbounded (see :mod:`napari_sam2.engine.lineage`): an object outside its span
        is left out the same way, whatever its prompts (a prompt is never outside its span)."""
        if self._pass != (reverse, pass_start):  # a new pass counts afresh
            self._pass = (reverse, pass_start)
            self._absent.clear()
        stops = self.stops[reverse]
        active = []
        bounds = bounds or {}
        for obj in objects:
            start, end = bounds.get(obj.obj_id, (None, None))
            outside = (start is not None and frame < start) or (end is not None and frame > end)
            stop = stops.get(obj.obj_id)
            beyond = stop is not None and (frame < stop if reverse else frame > stop)
            if beyond and frame in obj.cond:
                del stops[obj.obj_id]  # its own prompt says where it is: tracked again from here
                beyond = False
            if outside and frame in obj.cond:  # cannot happen through the session's checks: keep the prompt
                continue
            if not (beyond or outside):
                active.append(obj)
                continue
            had_result = obj.tracked.pop(frame, None) is not None
            if obj.direction.pop(frame, None) is not None or had_result:
                obj.resident_memories.discard(frame)
                obj.changed()
            drop_old_memories(obj, keep_near=())  # it reads no memories here (re-encoded if ever needed)
        return active

    def observe(self, tracked: Iterable[TrackedObject], frame: int, reverse: bool) -> list[int]:
        """Count the absent results on ``frame`` of the objects just tracked; returns the ids that stop here."""
        if self.stop_after_absent is None:
            return []
        stopping = []
        for obj in tracked:
            result = obj.latest(frame)
            absent = result is not None and float(result.object_score.reshape(-1)[0]) <= 0
            count = self._absent.get(obj.obj_id, 0) + 1 if absent else 0
            self._absent[obj.obj_id] = count
            if count >= self.stop_after_absent:
                self.stops[reverse][obj.obj_id] = frame
                stopping.append(obj.obj_id)
        return stopping
