"""The command line's lineage parts: ``track --divisions``, the proposals CSV and ``napari-sam2 evaluate``.

No Qt, no torch at import. Frames are T indices; masks (row, col) = (y, x).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DIVISION_CHOICES = ("propose", "auto", "off")
PROPOSALS_SUFFIX = "_divisions.csv"
PROPOSAL_COLUMNS = ("frame", "parent", "kind", "daughters", "part_area_1", "part_area_2")


def add_division_argument(track: argparse.ArgumentParser) -> None:
    track.add_argument("--divisions", choices=DIVISION_CHOICES, default="propose",
                       help="cells that divide: 'propose' (default) lists the divisions found during tracking in "
                            f"OUTPUT{PROPOSALS_SUFFIX} next to OUTPUT and changes nothing; 'auto' applies each "
                            "one (the parent ends, two daughters start) and writes the lineage into the output; "
                            "'off' looks for none")


def add_evaluate_command(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score a tracking result against ground truth (DET, SEG, TRA, divisions)",
        description="Score RESULT against GROUND_TRUTH with traccuracy: CTC DET, SEG and TRA, and division "
                    "precision / recall / F1, one line each. Each is a Cell Tracking Challenge folder (01_RES with "
                    "res_track.txt, 01_GT with TRA/ and SEG/) or a GEFF folder with its labels.")
    evaluate.add_argument("result", type=Path, help="CTC result folder or GEFF (.geff / .zarr folder)")
    evaluate.add_argument("ground_truth", type=Path, help="CTC ground-truth folder (or its TRA folder) or GEFF")
    evaluate.add_argument("--result-labels", type=Path, default=None, metavar="STACK",
                          help="(T, Y, X) label stack (.tif/.npy) of a RESULT GEFF that stores none")
    evaluate.add_argument("--truth-labels", type=Path, default=None, metavar="STACK",
                          help="(T, Y, X) label stack (.tif/.npy) of a GROUND_TRUTH GEFF that stores none")
    evaluate.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Print one ``NAME value`` line per metric on stdout; NaN (no division to score) prints as ``n/a``."""
    from .evaluate import evaluate

    scores = evaluate(args.result, args.ground_truth, result_labels=args.result_labels,
                      truth_labels=args.truth_labels)
    for name, value in scores.items():
        print(f"{name:<20}{'n/a' if math.isnan(value) else f'{value:.4f}'}")
    return 0


def proposals_path(out: Path) -> Path:
    """Where ``--divisions propose`` writes its CSV: beside OUTPUT, ``labels.tif`` -> ``labels_divisions.csv``."""
    stem = out.stem if out.suffix.lower() in (".tif", ".tiff", ".geff", ".zarr") else out.name
    return out.with_name(stem + PROPOSALS_SUFFIX)


def write_proposals(path: Path, proposals: Sequence[Any]) -> None:
    """One CSV row per division proposal: frame, parent id, rule ("split" / "cells"), existing daughter ids
    ("8 9", or empty when accepting would create them) and the two parts' areas in pixels."""
    from .atomic import atomic_target

    with atomic_target(path) as partial, open(partial, "x", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(PROPOSAL_COLUMNS)
        for p in proposals:
            daughters = " ".join(map(str, p.daughters)) if p.daughters else ""
            writer.writerow([p.frame, p.parent, p.kind, daughters, *(int(part.sum()) for part in p.parts)])


def report_divisions(mode: str, session: Any, csv_path: Path, say: Callable[[str], None]) -> None:
    """After a run: say what ``--divisions auto`` applied, or write the pending proposals of ``propose`` to
    ``csv_path`` (beside the output) and say how many."""
    if mode == "auto":
        lineage = session.lineage()
        say(f"{len(set(lineage.values()))} object(s) divided; the lineage has {len(lineage)} link(s)")
    elif mode == "propose":
        proposals = session.division_proposals()
        if proposals:
            write_proposals(csv_path, proposals)
            say(f"{len(proposals)} division(s) proposed, none applied: listed in {csv_path} (review them in "
                "napari from --save-session, or rerun with --divisions auto)")
        else:
            csv_path.unlink(missing_ok=True)  # with --overwrite: an earlier run's proposals would mislead
            say("no division proposed")
