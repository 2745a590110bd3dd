"""Score a tracking result against ground truth with traccuracy: DET, SEG, TRA and division precision / recall / F1.

Both sides are paths: a Cell Tracking Challenge folder (a result ``*_RES`` with ``res_track.txt`` and
``maskTTT.tif``; ground truth ``*_GT`` with ``TRA/man_track.txt`` and, optionally, ``SEG/man_segTTT.tif``, or
its ``TRA`` folder itself), or a GEFF folder with its label stack (stored in it, as :func:`write_geff` does, or
given as a (T, Y, X) array / ``.tif`` / ``.npy`` file). Label stacks are (T, Y, X), (row, col) = (y, x).
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import tifffile

from .geff_files import LABEL_PROP, read_geff

__all__ = ["METRICS", "EvaluationError", "evaluate", "seg_score"]

METRICS = ("DET", "SEG", "TRA", "division_precision", "division_recall", "division_f1")
_DIVISION_KEYS = {"division_precision": "Division Precision", "division_recall": "Division Recall",
                  "division_f1": "Division F1"}


class EvaluationError(ValueError):
    """A result or ground truth that cannot be scored (missing, not CTC or GEFF, shapes that differ)."""


def evaluate(
    result: str | os.PathLike,
    ground_truth: str | os.PathLike,
    *,
    result_labels: Any | None = None,
    truth_labels: Any | None = None,
) -> dict[str, float]:
    """CTC metrics (DET, SEG, TRA) and division precision / recall / F1 of ``result`` against ``ground_truth``.

    Each is a CTC folder or a GEFF folder (see the module docstring); ``result_labels`` / ``truth_labels``
    give a GEFF's (T, Y, X) label stack (an array or a .tif / .npy path) when it is not stored in it.
    Matching is CTC's (a result object covering more than half of a ground-truth object) and divisions
    count without frame tolerance, through traccuracy; SEG is the mean IoU of each ground-truth object with
    its match (0 when unmatched), computed here because traccuracy has none. Division precision is NaN when
    the result has no division, recall when the ground truth has none, F1 when neither has one. Returns
    {"DET", "SEG", "TRA", "division_precision", "division_recall", "division_f1"}: floats in [0, 1]. While it
    runs, traccuracy's progress bars (stderr), log lines and warnings are silenced.
    """
    try:
        from traccuracy import run_metrics
        from traccuracy.matchers import CTCMatcher
        from traccuracy.metrics import CTCMetrics, DivisionMetrics
    except ImportError:
        raise EvaluationError("scoring needs traccuracy, which is not installed: "
                              "pip install 'napari-sam2[evaluate]'") from None

    with _quiet():
        truth, truth_seg = _load(Path(ground_truth), truth_labels, "ground truth", is_truth=True)
        pred, _ = _load(Path(result), result_labels, "result", is_truth=False)
        if truth.segmentation.shape != pred.segmentation.shape:
            raise EvaluationError(f"the result's label stack has shape {pred.segmentation.shape} but the ground "
                                  f"truth's has {truth.segmentation.shape} (T, Y, X): score results of the same movie")
        if truth.start_frame is None:
            raise EvaluationError(f"the ground truth {ground_truth} has no objects")
        seg = seg_score(truth_seg, pred.segmentation)
        _align_first_frame(truth, pred)
        scores, _ = run_metrics(truth, pred, CTCMatcher(), [CTCMetrics(), DivisionMetrics()])
    ctc, divisions = scores[0]["results"], scores[1]["results"]["Frame Buffer 0"]
    out = {"DET": float(ctc["DET"]), "SEG": seg, "TRA": float(ctc["TRA"])}
    out.update({key: float(divisions[name]) for key, name in _DIVISION_KEYS.items()})
    # F1 = 2 TP / (true + predicted divisions): 0 also when the result has no division at all, where
    # traccuracy leaves it NaN (its precision is 0 / 0 there)
    either = divisions["Total GT Divisions"] + divisions["Total Predicted Divisions"]
    out["division_f1"] = 2 * divisions["True Positive Divisions"] / either if either else float("nan")
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """traccuracy's progress bars (on stderr), log lines and warnings (e.g. "no ground truth divisions") are
    not for our users: they are silenced while it runs (errors still raise)."""
    logger = logging.getLogger("traccuracy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _align_first_frame(truth: Any, pred: Any) -> None:
    """traccuracy's CTC matcher reads mask ``i`` for the i-th frame after the ground truth's first: start both
    label stacks there so that frame numbers and masks agree when the ground truth's first frames are empty."""
    start = truth.start_frame
    if start:
        truth.segmentation = truth.segmentation[start:]
        pred.segmentation = pred.segmentation[start:]


def _load(path: Path, labels: Any | None, role: str, *, is_truth: bool) -> tuple[Any, np.ndarray]:
    """A traccuracy TrackingGraph of a CTC or GEFF folder, and the label stack SEG is scored on."""
    if not path.exists():
        raise EvaluationError(f"{role} {path} does not exist")
    if not path.is_dir():
        raise EvaluationError(f"{role} {path} is not a folder: give a CTC result / ground-truth folder or a GEFF")
    if _is_geff(path):
        return _geff_graph(path, labels, role)
    if labels is not None:
        raise EvaluationError(f"{role} {path} is a CTC folder, which has its own masks: give labels for a GEFF only")
    track_dir = path / "TRA" if (path / "TRA").is_dir() else path
    track_files = sorted(track_dir.glob("*_track.txt"))
    if len(track_files) != 1:
        raise EvaluationError(f"{role} {path} is neither a GEFF nor a CTC folder (found {len(track_files)} "
                              "*_track.txt files, expected res_track.txt, man_track.txt or TRA/man_track.txt)")
    from traccuracy.loaders import load_ctc_data

    try:
        graph = load_ctc_data(str(track_dir), str(track_files[0]), run_checks=True)
    except (ValueError, FileNotFoundError) as exc:
        raise EvaluationError(f"{role} {path}: {' '.join(str(exc).split())}") from None
    seg = graph.segmentation
    if is_truth and (path / "SEG").is_dir():
        seg = _ctc_seg_folder(path / "SEG", seg.shape)
    return graph, seg


def _is_geff(path: Path) -> bool:
    import zarr

    try:
        return "geff" in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # noqa: BLE001 - any folder zarr cannot open as a group is not a GEFF
        return False


def _geff_graph(path: Path, labels: Any | None, role: str) -> tuple[Any, np.ndarray]:
    from traccuracy import TrackingGraph

    if isinstance(labels, (str, os.PathLike)):
        labels = _read_label_file(Path(labels), role)
    tracks = read_geff(path, labels=labels)
    if tracks.labels is None:
        raise EvaluationError(f"{role} GEFF {path} stores no label stack: give its (T, Y, X) labels (.tif / .npy)")
    if tracks.labels.ndim != 3:
        raise EvaluationError(f"{role} labels have shape {tracks.labels.shape}, expected (T, Y, X)")
    if (tracks.seg_ids < 0).any():
        raise EvaluationError(f"{role} GEFF {path}: some nodes have no label id ({LABEL_PROP})")
    graph = nx.DiGraph()
    for node, t, (y, x), seg_id in zip(tracks.node_ids.tolist(), tracks.t.tolist(), tracks.yx.tolist(),
                                       tracks.seg_ids.tolist()):
        graph.add_node(node, t=t, y=y, x=x, **{LABEL_PROP: seg_id})
    graph.add_edges_from(tracks.edges.tolist())
    return TrackingGraph(graph, segmentation=tracks.labels, frame_key="t", label_key=LABEL_PROP,
                         location_keys=("y", "x")), tracks.labels


def _read_label_file(path: Path, role: str) -> np.ndarray:
    if not path.exists():
        raise EvaluationError(f"{role} labels {path} do not exist")
    if path.suffix.lower() == ".npy":
        return np.load(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path)
    raise EvaluationError(f"{role} labels {path} must be a .tif / .tiff / .npy (T, Y, X) label stack")


def _ctc_seg_folder(folder: Path, shape: tuple[int, ...]) -> np.ndarray:
    """CTC SEG ground truth (``man_segTTT.tif``, often on a few frames only) as a stack; -1 marks frames
    without annotation, which SEG skips."""
    stack = np.full(shape, -1, dtype=np.int64)
    for file in folder.glob("man_seg*.tif"):
        match = re.fullmatch(r"man_seg_?(\d+)\.tif", file.name)
        if match and int(match.group(1)) < shape[0]:
            stack[int(match.group(1))] = tifffile.imread(file)
    return stack


def seg_score(truth: np.ndarray, result: np.ndarray) -> float:
    """CTC SEG: mean IoU of each ground-truth object with the result object covering more than half of it.

    Per frame of two (T, Y, X) label stacks; an unmatched ground-truth object scores 0, frames whose
    ground truth is -1 (not annotated) are skipped. NaN when the ground truth has no object. Hand-written
    (a pixel pair count per frame) because traccuracy computes no SEG.
    """
    ious: list[np.ndarray] = []
    for gt_frame, res_frame in zip(truth, result):
        if (gt_frame < 0).all():
            continue
        gt_frame, res_frame = gt_frame.ravel().astype(np.int64), res_frame.ravel().astype(np.int64)
        gt_ids, gt_area = np.unique(gt_frame[gt_frame > 0], return_counts=True)
        if gt_ids.size == 0:
            continue
        res_ids, res_area = np.unique(res_frame[res_frame > 0], return_counts=True)
        frame_iou = np.zeros(gt_ids.size)
        both = (gt_frame > 0) & (res_frame > 0)
        if both.any():
            pairs, overlap = np.unique(np.stack([gt_frame[both], res_frame[both]]), axis=1, return_counts=True)
            g, r = np.searchsorted(gt_ids, pairs[0]), np.searchsorted(res_ids, pairs[1])
            matched = overlap > 0.5 * gt_area[g]  # at most one result object per ground-truth object
            union = gt_area[g[matched]] + res_area[r[matched]] - overlap[matched]
            frame_iou[g[matched]] = overlap[matched] / union
        ious.append(frame_iou)
    return float(np.concatenate(ious).mean()) if ious else float("nan")
