"""The command line's lineage parts: ``track --divisions`` and its thresholds, the proposals CSV and
``napari-sam2 evaluate``.

No Qt, no torch at import (the engine is imported where a parser is built or a run starts). Frames are T
indices; masks (row, col) = (y, x).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROPOSALS_SUFFIX = "_divisions.csv"
PROPOSAL_COLUMNS = ("frame", "parent", "kind", "daughters", "part_area_1", "part_area_2")


# --flag -> (DivisionOptions field, type, help): the documented thresholds of the division rules
DIVISION_FLAGS = {
    "--division-ratio": ("min_area_ratio", float, ("the smaller daughter has at least this fraction of the larger's "
                         "area (0-1, default 0.5)")),
    "--division-min-area": ("min_part_area", int, "each daughter has at least this many pixels (default 16)"),
    "--division-neck": ("neck_ratio", float, ("a mask splits at a neck narrower than this fraction of its widest "
                        "place (0-1, default 0.6; higher splits fatter necks)")),
    "--division-coverage": ("min_coverage", float, ("the two daughters hold at least this fraction of the mask "
                            "(0-1, default 0.9)")),
    "--division-inside": ("cell_inside", float, ("segmented cells: the fraction of each daughter inside the "
                          "parent's mask (0-1, default 0.5)")),
}


def add_division_argument(track: argparse.ArgumentParser) -> None:
    """``--divisions MODE`` and the ``--division-*`` thresholds (see :data:`DIVISION_FLAGS`)."""
    from .engine.divisions import DIVISION_MODES

    track.add_argument("--divisions", choices=DIVISION_MODES, default="propose",
                       help="cells that divide: 'propose' (default) lists the divisions found during tracking in "
                            f"OUTPUT{PROPOSALS_SUFFIX} next to OUTPUT and changes nothing; 'auto' applies each "
                            "one (the parent ends, two daughters start) and writes the lineage into the output; "
                            "'off' looks for none")
    for flag, (field, kind, text) in DIVISION_FLAGS.items():
        track.add_argument(flag, dest=field, type=kind, default=None, metavar="N" if kind is int else "F",
                           help=text)


def division_options(args: argparse.Namespace) -> Any:
    """The :class:`~napari_sam2.engine.divisions.DivisionOptions` the ``--division-*`` flags set (None when none
    is given); a value out of range is one ValueError line naming the flag."""
    from .engine.divisions import DivisionOptions

    given = {field: getattr(args, field) for field, _, _ in DIVISION_FLAGS.values()
             if getattr(args, field, None) is not None}
    if not given:
        return None
    try:
        return DivisionOptions(**given)
    except ValueError as exc:
        flags = {field: flag for flag, (field, _, _) in DIVISION_FLAGS.items()}
        named = next((flags[field] for field in given if field in str(exc)), "a --division-* flag")
        raise ValueError(f"{named}: {exc}") from None


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
            writer.writerow([p.frame, p.parent, p.kind, daughters, *p.part_areas])


def report_divisions(mode: str, session: Any, csv_path: Path, say: Callable[[str], None]) -> None:
    """After a run: say what ``--divisions auto`` applied, or write the pending proposals of ``propose`` to
    ``csv_path`` (beside the output) and say how many. Runs that write no CSV remove an earlier run's one at
    ``csv_path``: it would list proposals this output does not have."""
    if mode != "propose":
        csv_path.unlink(missing_ok=True)
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
