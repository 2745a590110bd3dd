"""Click prompts from the CSV file napari writes when a Points layer is saved.

napari writes one row per point: ``index, axis-0, axis-1, axis-2`` (frame, row, col = t, y, x for a
(T, Y, X) movie) followed by one column per point feature. Two features say what a click means:

* positive or negative: a column ``positive`` (True/False, 1/0) or ``label`` (1/0, positive/negative);
  without one, every click is positive;
* which object: a column ``obj_id`` (also accepted: ``object_id``, ``object``, ``track_id``); without
  one, every click belongs to object 1.

napari-sam2's own Points layers carry exactly ``positive`` and ``obj_id``, so their saved CSVs work as
they are. Hand-written by design: the format is a plain CSV and the csv module reads it exactly.

Seed labels (an existing segmentation whose labels become mask prompts) are read lazily with
:func:`~napari_sam2.movie_files.open_movie`. Both kinds are checked against the movie's shape with
:func:`check_clicks` and :func:`read_seed_labels` before a model is loaded, so that a click outside the
frame is reported in a second, naming the file's line and the object, not after a slow model load.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .movie_files import open_movie

POSITIVE_COLUMNS = ("positive", "label", "is_positive")
OBJECT_COLUMNS = ("obj_id", "object_id", "object", "track_id")
_TRUE = {"true", "1", "1.0", "yes", "positive", "pos", "+"}
_FALSE = {"false", "0", "0.0", "no", "negative", "neg", "-"}
_FRAME_TOLERANCE = 1e-3


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file, the row and what to change."""


@dataclass
class ClickPrompt:
    """All clicks of one object on one frame: (N, 2) (row, col) = (y, x) points, (N,) 1/0 labels.

    ``source`` and ``lines`` (each point's line in the file, as an editor counts) let errors found later,
    such as a click outside the frame, name where the click was written.
    """

    frame: int
    obj_id: int
    points: np.ndarray
    labels: np.ndarray
    source: str = ""
    lines: tuple[int, ...] = ()


@dataclass
class LabelPrompt:
    """Seed labels checked against the movie: a lazily read (Y, X) image or (T, Y, X) stack, and the frames
    whose labels become mask prompts (for ``TrackingSession.add_labels(labels, frames)``)."""

    labels: Any
    frames: list[int]
    source: str


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
        groups: dict[tuple[int, int], tuple[list[list[float]], list[int], list[int]]] = {}
        for row in reader:
            row_number = reader.line_num  # the file's line, also past blank lines (which DictReader skips)
            frame, y, x = (_number(row[columns[a]], path, row_number, a) for a in axes)
            if abs(frame - round(frame)) > _FRAME_TOLERANCE or frame < 0:
                raise PromptFileError(f"{path}, line {row_number}: frame (axis-0) {frame} is not a frame index")
            label = 1 if positive_column is None else _polarity(row[positive_column], path, row_number)
            obj_id = 1 if object_column is None else _object_id(row[object_column], path, row_number)
            points, labels, lines = groups.setdefault((round(frame), obj_id), ([], [], []))
            points.append([y, x])
            labels.append(label)
            lines.append(row_number)
    if not groups:
        raise PromptFileError(f"{path} holds no points")
    return [ClickPrompt(frame, obj_id, np.asarray(points, dtype=np.float64), np.asarray(labels, dtype=np.int64),
                        source=str(path), lines=tuple(lines))
            for (frame, obj_id), (points, labels, lines) in groups.items()]


def check_clicks(clicks: Sequence[ClickPrompt], movie_shape: Sequence[int], hint: str = "") -> None:
    """Refuse clicks on a frame the (T, Y, X[, C]) movie lacks or outside its (Y, X) frame.

    The message names the earliest such click: its file and line, its object, the coordinate and the
    frame shape, then ``hint`` (e.g. :meth:`~napari_sam2.movie_files.Movie.axes_hint`, when wrong axes may
    be the cause). Bounds are the session's: a pixel's centre is its index, so rows span -0.5 .. Y - 0.5.
    """
    num_frames, height, width = (int(n) for n in movie_shape[:3])
    sources = list(dict.fromkeys(click.source for click in clicks))
    misfits: list[tuple[int, int, str]] = []  # (source order, line, message)
    for click in clicks:
        lines = click.lines or (0,) * len(click.points)
        for (y, x), line in zip(click.points.tolist(), lines):
            where = f"{click.source or 'prompts'}, line {line}: the click of object {click.obj_id}"
            if click.frame >= num_frames:
                message = f"{where} is on frame {click.frame}, but {movie_frames(num_frames)}"
            elif not (-0.5 <= y <= height - 0.5 and -0.5 <= x <= width - 0.5):
                message = (f"{where} at (row, col) = ({y:g}, {x:g}) on frame {click.frame} is outside the frame "
                           f"of shape (Y, X) = ({height}, {width})")
            else:
                continue
            misfits.append((sources.index(click.source), line, message))
    if misfits:
        _, _, message = min(misfits)
        others = f"; {len(misfits) - 1} more click(s) do not fit either" if len(misfits) > 1 else ""
        raise PromptFileError(with_hint(message + others, hint))


def read_seed_labels(path: str | os.PathLike, movie_shape: Sequence[int], frames: Sequence[int] | None = None,
                     hint: str = "") -> LabelPrompt:
    """Open a label image (Y, X) or stack (T, Y, X) lazily and check it against the (T, Y, X[, C]) movie.

    ``frames`` are the frames to take labels from (default: every frame that holds labels; a single image
    belongs to frame 0). Wrong shapes, frames out of range and files without labels are refused with a
    message naming the file (plus ``hint``, see :func:`check_clicks`).
    """
    num_frames, height, width = (int(n) for n in movie_shape[:3])
    labels = open_movie(path).data
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) == 3 and shape[0] == 1 and num_frames > 1:
        labels, shape = labels[0], shape[1:]  # a single label image (Y, X)
    if shape not in ((height, width), (num_frames, height, width)):
        raise PromptFileError(with_hint(
            f"seed labels {path} have shape {shape}, which does not fit the movie: expected a (Y, X) image of "
            f"{(height, width)} or a (T, Y, X) stack of {(num_frames, height, width)}", hint))
    if np.dtype(labels.dtype).kind not in "iub":
        raise PromptFileError(f"seed labels {path} hold {np.dtype(labels.dtype).name} values; labels must be "
                              "integers (0 = background, n = object n)")
    single = len(shape) == 2
    if frames is None:
        frames = [0] if single else [t for t in range(num_frames) if np.any(labels[t])]
    frames = [int(t) for t in frames]
    outside = [t for t in frames if not 0 <= t < num_frames]
    if outside:
        raise PromptFileError(with_hint(f"label frame {outside[0]} (--label-frames) is out of range: "
                                        f"{movie_frames(num_frames)}", hint))
    if single and len(frames) != 1:
        raise PromptFileError(f"seed labels {path} are a single (Y, X) image, which belongs to one frame, but "
                              f"{len(frames)} frames were given: give one --label-frames value")
    if not frames or not any(np.any(labels if single else labels[t]) for t in frames):
        raise PromptFileError(f"seed labels {path} hold no labels on frames {frames}")
    return LabelPrompt(labels, frames, str(path))


def with_hint(message: str, hint: str) -> str:
    """``message; hint`` as one line, or the message alone (hints say what may have caused a misfit)."""
    return f"{message}; {hint}" if hint else message


def movie_frames(num_frames: int) -> str:
    """``the movie has 4 frame(s) (0..3)``, for messages about a frame index out of range."""
    return f"the movie has {num_frames} frame(s) (0..{num_frames - 1})"


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
