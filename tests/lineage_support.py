"""A label stack with a division, a gap and an early-ending cell, and an independent CTC ground-truth writer
with parents, for the lineage export tests. Label stacks are (T, Y, X), coordinates (row, col) = (y, x).

The ground truth is numbered from 100 with its own track splitting, so a perfect score cannot come from
shared code or matching label values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

T, H, W = 10, 64, 64
SPLIT = 5  # daughters 8 and 9 of cell 3 are there from this frame on
GONE = (3, 4)  # cell 2 is absent on these frames, back on frame 5
EARLY = 4  # cell 4 is on frames 0..EARLY only: it ends in time to be a (wrong) parent of 8
LINEAGE = {8: 3, 9: 3}


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def dividing_stack() -> np.ndarray:
    """1 moves right; 2 moves down with a gap; 3 divides into 8 and 9 on SPLIT; 4 ends after EARLY."""
    stack = np.zeros((T, H, W), np.uint16)
    for t in range(T):
        stack[t][_disc(10, 8 + 3 * t, 5)] = 1
        if t not in GONE:
            stack[t][_disc(8 + 3 * t, 54, 4)] = 2
        if t < SPLIT:
            stack[t][_disc(44, 20, 6)] = 3
        else:
            apart = 7 + (t - SPLIT)
            stack[t][_disc(44 - apart, 20, 5)] = 8
            stack[t][_disc(44 + apart, 20, 5)] = 9
        if t <= EARLY:
            stack[t][_disc(52, 48, 5)] = 4
    return stack


def _runs(frames: np.ndarray) -> list[tuple[int, int]]:
    breaks = np.flatnonzero(np.diff(frames) > 1)
    starts = np.r_[frames[0], frames[breaks + 1]]
    ends = np.r_[frames[breaks], frames[-1]]
    return list(zip(starts.tolist(), ends.tolist()))


def write_lineage_gt(gt: Path, stack: np.ndarray, parents: dict[int, int]) -> None:
    """CTC ground truth (TRA and SEG) of a (T, Y, X) label stack and its lineage {daughter: parent}.

    A returning object starts a new track whose parent is 0; a daughter's first track has its parent's
    last track as parent.
    """
    (gt / "TRA").mkdir(parents=True)
    (gt / "SEG").mkdir()
    relabelled = np.zeros_like(stack)
    rows, first, last, label = [], {}, {}, 100
    for obj in np.unique(stack[stack > 0]).tolist():
        present = np.flatnonzero((stack == obj).any(axis=(1, 2)))
        for begin, end in _runs(present):
            relabelled[begin : end + 1][stack[begin : end + 1] == obj] = label
            rows.append([label, begin, end, 0])
            first.setdefault(obj, label)
            last[obj] = label
            label += 1
    for row in rows:
        for child, parent in parents.items():
            if row[0] == first[child]:
                row[3] = last[parent]
    (gt / "TRA" / "man_track.txt").write_text("".join(" ".join(map(str, row)) + "\n" for row in rows))
    for t, frame in enumerate(relabelled):
        tifffile.imwrite(gt / "TRA" / f"man_track{t:03d}.tif", frame)
        tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", frame)


def read_track_file(path: Path) -> list[tuple[int, ...]]:
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]
