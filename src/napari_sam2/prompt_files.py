"""Click prompts from the CSV file napari writes when a Points layer is saved.

napari writes one row per point: ``index, axis-0, axis-1, axis-2`` (frame, row, col = t, y, x for a
(T, Y, X) movie) followed by one column per point feature. Two features say what a click means:

* positive or negative: a column ``positive`` (True/False, 1/0) or ``label`` (1/0, positive/negative);
  without one, every click is positive;
* which object: a column ``obj_id`` (also accepted: ``object_id``, ``object``, ``track_id``); without
  one, every click belongs to object 1.

napari-sam2's own Points layers carry exactly ``positive`` and ``obj_id``, so their saved CSVs work as
they are. Hand-written by design: the format is a plain CSV and the csv module reads it exactly.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POSITIVE_COLUMNS = ("positive", "label", "is_positive")
OBJECT_COLUMNS = ("obj_id", "object_id", "object", "track_id")
_TRUE = {"true", "1", "1.0", "yes", "positive", "pos", "+"}
_FALSE = {"false", "0", "0.0", "no", "negative", "neg", "-"}
_FRAME_TOLERANCE = 1e-3


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file, the row and what to change."""


@dataclass
class ClickPrompt:
    """All clicks of one object on one frame: (N, 2) (row, col) = (y, x) points, (N,) 1/0 labels."""

    frame: int
    obj_id: int
    points: np.ndarray
    labels: np.ndarray


def read_points_csv(path: str | os.PathLike) -> list[ClickPrompt]:
    """Clicks grouped by (frame, object) from a napari Points CSV of a (T, Y, X) movie, in file order."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        axes = sorted((c for c in columns if c.startswith("axis-")), key=lambda c: int(c.split("-")[1]))
        if len(axes) != 3:
            raise PromptFileError(
                f"{path}: expected the columns axis-0, axis-1, axis-2 (frame, row, col) of a napari Points layer "
                f"on a (T, Y, X) movie, found {list(columns) or 'no header'}. A 2-D layer has no frame column; "
                "for (T, Z, Y, X) data track a (T, Y, X) or (Z, Y, X) sub-stack.")
        positive_column = next((columns[c] for c in POSITIVE_COLUMNS if c in columns), None)
        object_column = next((columns[c] for c in OBJECT_COLUMNS if c in columns), None)
        groups: dict[tuple[int, int], tuple[list[list[float]], list[int]]] = {}
        for row in reader:
            row_number = reader.line_num  # the file's line, also past blank lines (which DictReader skips)
            frame, y, x = (_number(row[columns[a]], path, row_number, a) for a in axes)
            if abs(frame - round(frame)) > _FRAME_TOLERANCE or frame < 0:
                raise PromptFileError(f"{path}, line {row_number}: frame (axis-0) {frame} is not a frame index")
            label = 1 if positive_column is None else _polarity(row[positive_column], path, row_number)
            obj_id = 1 if object_column is None else _object_id(row[object_column], path, row_number)
            points, labels = groups.setdefault((round(frame), obj_id), ([], []))
            points.append([y, x])
            labels.append(label)
    if not groups:
        raise PromptFileError(f"{path} holds no points")
    return [ClickPrompt(frame, obj_id, np.asarray(points, dtype=np.float64), np.asarray(labels, dtype=np.int64))
            for (frame, obj_id), (points, labels) in groups.items()]


def _number(text: str, path: Path, row: int, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PromptFileError(f"{path}, line {row}: column {column} holds {text!r}, not a number") from None
    if not np.isfinite(value):
        raise PromptFileError(f"{path}, line {row}: column {column} is {text!r}")
    return value


def _polarity(text: str, path: Path, row: int) -> int:
    value = (text or "").strip().lower()
    if value in _TRUE:
        return 1
    if value in _FALSE:
        return 0
    raise PromptFileError(f"{path}, line {row}: cannot tell positive from negative in {text!r}; "
                          "use True/False or 1/0")


def _object_id(text: str, path: Path, row: int) -> int:
    value = _number(text, path, row, "obj_id")
    if value != int(value) or value < 1:
        raise PromptFileError(f"{path}, line {row}: object id {text!r} must be an integer >= 1 (its label value)")
    return int(value)
