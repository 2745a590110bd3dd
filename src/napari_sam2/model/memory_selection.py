"""Which remembered frames a SAM 2 tracker attends to when it segments a frame.

Pure functions of frame indices, so the rules can be read and tested on their own. They follow the
reference's evaluation settings: every conditioning frame is used (``max_cond_frames_in_attn = -1``),
memory stride 1, up to 16 object pointers, and only pointers from the past (in the tracking
direction) of conditioning frames.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

NUM_MASKMEM = 7
MAX_OBJECT_POINTERS = 16


def memory_frames(frame: int, cond_frames: Iterable[int], non_cond_frames: Container[int],
                  reverse: bool, num_maskmem: int = NUM_MASKMEM) -> list[tuple[int, int]]:
    """(t_pos, frame index) of the spatial memories for ``frame``.

    Conditioning frames come first with t_pos 0 (future ones too); then the ``num_maskmem - 1`` frames
    just before ``frame`` in the tracking direction, t_pos 1 (oldest) .. num_maskmem-1 (previous
    frame), skipping those never tracked.
    """
    selected = [(0, t) for t in cond_frames]
    step = 1 if reverse else -1
    for t_pos in range(1, num_maskmem):
        previous = frame + step * (num_maskmem - t_pos)
        if previous in non_cond_frames:
            selected.append((t_pos, previous))
    return selected


def pointer_frames(frame: int, cond_frames: Iterable[int], non_cond_frames: Container[int],
                   reverse: bool, num_frames: int,
                   max_pointers: int = MAX_OBJECT_POINTERS) -> list[tuple[int, int, bool]]:
    """(temporal distance, frame index, is conditioning frame) of the object pointers for ``frame``.

    Conditioning frames at or before ``frame`` (after it, when tracking in reverse), then up to
    ``min(num_frames, max_pointers) - 1`` tracked frames going back from ``frame``.
    """
    sign = -1 if reverse else 1
    selected = [((frame - t) * sign, t, True) for t in cond_frames if (t >= frame if reverse else t <= frame)]
    for distance in range(1, min(num_frames, max_pointers)):
        t = frame - sign * distance
        if t < 0 or t >= num_frames:
            break
        if t in non_cond_frames:
            selected.append((distance, t, False))
    return selected
