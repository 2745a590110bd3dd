"""Where an object is along the tracked axis: the next or previous frame that holds it, for the object list's jumps.

Qt-free. A frame holds an object when the output Labels layer has a pixel of it on that frame's tracked plane, or when
the object has a prompt there (in the session, or in the prompt layers: a click not yet sent). Frames are indices
along the tracked axis; planes are (Y, X) = (row, col).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def next_frame(read_frame: Callable[[int], np.ndarray], n_frames: int, obj_id: int, current: int, step: int,
               prompted: Iterable[int] = ()) -> int | None:
    """The first frame after ``current`` (``step`` = 1) or before it (``step`` = -1) where ``obj_id`` is on the plane
    ``read_frame(t)`` or has a prompt (``prompted``); None when there is none. Planes are read one at a time, nearest
    first, and the search stops at the first hit (a prompted frame is nearer than any plane beyond it)."""
    if step not in (1, -1):
        raise ValueError(f"step must be 1 or -1, got {step}")
    marked = sorted(t for t in set(prompted) if 0 <= t < n_frames and (t - current) * step > 0)
    nearest_prompt = (marked[0] if step == 1 else marked[-1]) if marked else None
    end = n_frames if step == 1 else -1
    for t in range(current + step, end, step):
        if t == nearest_prompt:
            return t
        if np.any(read_frame(t) == obj_id):
            return t
    return None


def object_centre(plane: np.ndarray, obj_id: int) -> tuple[float, float] | None:
    """The (row, col) centroid of ``obj_id``'s pixels on a (Y, X) plane; None when it has none."""
    rows, cols = np.nonzero(plane == obj_id)
    if rows.size == 0:
        return None
    return float(rows.mean()), float(cols.mean())
