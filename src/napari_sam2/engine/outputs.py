"""What the session returns for a frame: ``(frame, obj_ids, logits)``, with a short repr for the console."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_REPR_OBJECTS = 6  # objects whose area a repr lists before "..."


class FrameOutput(NamedTuple):
    """One frame's result: returned by ``add_points`` / ``add_box`` / ``add_mask`` / ``clear_prompts`` and
    yielded by ``propagate``. Unpacks and indexes as the tuple ``(frame, obj_ids, logits)``.

    ``frame`` is the T index; ``obj_ids`` the object ids in the session's order; ``logits`` float32
    (n_objects, Y, X) at the frame's resolution, one row per id (> 0 inside the object; -1024 where an
    object has no result). The repr shows the shape and each object's area in pixels, not the array.
    """

    frame: int
    obj_ids: list[int]
    logits: np.ndarray

    def areas(self) -> dict[int, int]:
        """Pixels inside each object (logit > 0), by object id."""
        return _areas(self.obj_ids, self.logits)

    def __repr__(self) -> str:
        shown = _areas(self.obj_ids[:_REPR_OBJECTS], self.logits)  # zip stops there: no full scan
        areas = [f"{obj_id}: {area}" for obj_id, area in shown.items()]
        hidden = len(self.obj_ids) - len(shown)
        if hidden > 0:
            areas.append(f"... {hidden} more")
        ids = self.obj_ids if not hidden else f"<{len(self.obj_ids)} ids>"
        shape = "x".join(str(n) for n in np.shape(self.logits))
        return (f"FrameOutput(frame={self.frame}, obj_ids={ids}, logits=<{shape} "
                f"{getattr(self.logits, 'dtype', '?')}>, area_px={{{', '.join(areas)}}})")


def _areas(obj_ids: list[int], logits: np.ndarray) -> dict[int, int]:
    return {obj_id: int(np.count_nonzero(row > 0)) for obj_id, row in zip(obj_ids, logits)}
