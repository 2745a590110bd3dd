"""An independent Cell Tracking Challenge ground-truth writer and the py-ctcmetrics scorer, for tests.

The ground truth is written with its own track splitting and a different label numbering (from 100), so
a perfect score cannot come from shared code or matching label values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from ctc_metrics import evaluate_sequence


def _runs(frames: np.ndarray) -> list[tuple[int, int]]:
    breaks = np.flatnonzero(np.diff(frames) > 1)
    starts = np.r_[frames[0], frames[breaks + 1]]
    ends = np.r_[frames[breaks], frames[-1]]
    return list(zip(starts.tolist(), ends.tolist()))


def write_gt(gt: Path, stack: np.ndarray) -> None:
    """CTC ground truth (TRA and SEG) of a (T, Y, X) label stack; a returning object starts a new track."""
    (gt / "TRA").mkdir(parents=True)
    (gt / "SEG").mkdir()
    relabelled = np.zeros_like(stack)
    lines, label = [], 100
    for obj in np.unique(stack[stack > 0]):
        present = np.flatnonzero((stack == obj).any(axis=(1, 2)))
        for begin, end in _runs(present):
            relabelled[begin : end + 1][stack[begin : end + 1] == obj] = label
            lines.append(f"{label} {begin} {end} 0\n")
            label += 1
    (gt / "TRA" / "man_track.txt").write_text("".join(lines))
    for t, frame in enumerate(relabelled):
        tifffile.imwrite(gt / "TRA" / f"man_track{t:03d}.tif", frame)
        tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", frame)


def score(res: Path, gt: Path) -> dict:
    """py-ctcmetrics scores (Valid, DET, SEG, TRA) of a result folder against a ground-truth folder."""
    return evaluate_sequence(res=str(res), gt=str(gt), metrics=["Valid", "DET", "SEG", "TRA"], threads=1)
