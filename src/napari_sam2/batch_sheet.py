"""The movie sheet of ``napari-sam2 batch``: one CSV row per movie, read and checked before anything runs.

Columns: ``movie,prompts`` and optionally ``axes,channel,start,direction,frames,out`` (the ``track`` options of
the same names). Paths are relative to the sheet (``out`` to the batch's output folder). Every row is checked
up front with the command line's own checks (movie axes, channel, start frame, direction, prompt file kinds), so
that a typo in row 87 is reported at once and not after 86 movies ran; a bad row raises :class:`SheetError`
naming the row and the column. Prompt files are only checked to exist: their content is read by the run.
Movies are (T, Y, X[, C]) (or (Z, Y, X[, C]) stacks tracked along Z).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = ("movie", "prompts", "axes", "channel", "start", "direction", "frames", "out")
REQUIRED_COLUMNS = ("movie", "prompts")
DEFAULT_DIRECTION = "forward"
AUTO = "auto"  # prompts: segment all on the start frame (``track --prompts auto``)
OUTPUT_SUFFIX = "_labels.tif"
MOVIE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".npy", ".zarr")  # longest first


class SheetError(ValueError):
    """A sheet (or a row of it) that cannot run; the message names the row and column and what to do."""


@dataclass(frozen=True)
class MovieRow:
    """One movie of a batch: the ``napari-sam2 track`` job of one sheet row.

    ``row`` is the 1-based data row of the sheet (the header is not counted); ``movie`` and ``prompts`` are
    absolute paths (``prompts`` may be the string "auto": segment all on the start frame); ``out`` is the output
    as given, relative to the batch's output folder, or None for ``<movie name>_labels.tif``.
    """

    row: int
    movie: Path
    prompts: Path | str
    axes: str | None = None
    channel: int | None = None
    start: int | None = None
    direction: str = DEFAULT_DIRECTION
    frames: int | None = None
    out: Path | None = None

    def output_name(self) -> Path:
        """The output relative to the batch's output folder: ``out``, or ``<movie name>_labels.tif``."""
        return self.out if self.out is not None else Path(movie_stem(self.movie) + OUTPUT_SUFFIX)

    def output_path(self, out_dir: Path) -> Path:
        """Where this row's output goes under the batch's output folder ``out_dir``."""
        return Path(out_dir) / self.output_name()

    def track_args(self, model: str | None, out_dir: Path | None = None) -> list[str]:
        """The ``napari-sam2 track`` arguments of this row (without ``track``): the movie, ``--prompts``,
        ``--out`` (under ``out_dir``, or relative to it when None), then only the options the row gives."""
        out = self.output_path(out_dir) if out_dir is not None else self.output_name()
        args = [str(self.movie), "--prompts", str(self.prompts), "--out", str(out)]
        if model is not None:
            args += ["--model", str(model)]
        options = {"--axes": self.axes, "--channel": self.channel, "--start": self.start, "--frames": self.frames,
                   "--direction": None if self.direction == DEFAULT_DIRECTION else self.direction}
        for flag, value in options.items():
            if value is not None:
                args += [flag, str(value)]
        return args

    def fingerprint(self, model: str | None) -> dict[str, Any]:
        """What an existing output must have been made from to count as this row's (JSON-able): the track
        arguments, size and modification time of the movie, the prompt file and a checkpoint file given as
        ``model``, and the napari-sam2 version. Any change (an edited prompt file) means the movie runs again."""
        from . import __version__

        files = {"movie": _file_state(self.movie)}
        if self.prompts != AUTO:
            files["prompts"] = _file_state(Path(self.prompts))
        if model is not None and Path(model).is_file():  # a checkpoint path: retraining it in place changes it
            files["model"] = _file_state(Path(model))
        return {"track": self.track_args(model), "files": files, "napari_sam2": __version__}


def read_sheet(path: str | os.PathLike) -> list[MovieRow]:
    """Read and check a movie sheet (CSV with a header row); paths in it are relative to the sheet's folder.

    Raises :class:`SheetError` for an unknown or missing column, a missing file, a bad value or two rows
    writing the same output, naming the row (1-based, header not counted) and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise SheetError(f"sheet {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets often save a BOM
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise SheetError(f"sheet {path} is empty: its first line must name the columns, e.g. movie,prompts")
        header = [name.strip().lower() for name in header]
        _check_columns(header, str(path))
        unnamed = [i for i, name in enumerate(header) if not name]  # trailing commas of a spreadsheet export
        records: list[dict[str, str]] = []
        for number, values in enumerate(reader, start=1):
            if len(values) > len(header):
                raise SheetError(f"{path} row {number}: {len(values)} values but the header names {len(header)} "
                                 "columns; quote values that hold commas")
            if any(values[i].strip() for i in unnamed if i < len(values)):
                raise SheetError(f"{path} row {number}: a value under a column without a name; name the column "
                                 "in the header or remove the value")
            records.append({name: value for name, value in zip(header, values) if name})
    return _check_rows(records, path.parent.absolute(), str(path))


def rows_from_records(records: Sequence[Mapping[str, Any]], base: str | os.PathLike) -> list[MovieRow]:
    """The rows of a sheet given in Python (one dict per movie, keys as the sheet's columns), with the same
    checks as :func:`read_sheet`; relative paths are relative to ``base``."""
    for number, record in enumerate(records, start=1):
        _check_columns([str(key).strip().lower() for key in record], f"row {number}", header=False)
    lowered = [{str(key).strip().lower(): value for key, value in record.items()} for record in records]
    return _check_rows(lowered, Path(base).absolute(), "rows")


def movie_stem(movie: Path) -> str:
    """A movie's name without its file type: ``well_A1.ome.tif`` -> ``well_A1``."""
    name = Path(movie).name
    lower = name.lower()
    for suffix in MOVIE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _check_columns(names: list[str], where: str, header: bool = True) -> None:
    names = [name for name in names if name]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise SheetError(f"{where}: unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)} "
                         f"({' and '.join(REQUIRED_COLUMNS)} required)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SheetError(f"{where}: column {repeated[0]!r} is given twice")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing and header:
        raise SheetError(f"{where}: no {missing[0]!r} column; the first line must name the columns, e.g. "
                         "movie,prompts,start")


def _check_rows(records: list[Mapping[str, Any]], base: Path, where: str) -> list[MovieRow]:
    rows = []
    for number, record in enumerate(records, start=1):
        values = {key: _text(value) for key, value in record.items()}
        if not any(values.values()):
            continue  # a blank line, e.g. at the end of a spreadsheet export
        rows.append(_row(number, values, base, where))
    if not rows:
        raise SheetError(f"{where}: no movie rows (one row per movie after the header)")
    outputs: dict[str, int] = {}
    for row in rows:
        key = os.path.normcase(os.path.normpath(row.output_name()))
        if key in outputs:
            raise SheetError(f"{where} row {row.row}, column 'out': output {row.output_name()} is also row "
                             f"{outputs[key]}'s; give each movie its own 'out' (movies of the same name in "
                             "different folders need one)")
        outputs[key] = row.row
    return rows


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _row(number: int, values: dict[str, str], base: Path, where: str) -> MovieRow:
    """One checked row: files exist, and the movie opens with its axes, channel and start frame as the
    ``track`` command would check them (lazily: no frame is read)."""
    from .cli import AUTO_PROMPTS, CSV_SUFFIXES, LABEL_SUFFIXES, SESSION_SUFFIXES, _one_line
    from .engine.frames import _resolve_channels
    from .engine.session import DIRECTIONS
    from .movie_files import open_movie
    from .prompt_files import movie_frames

    def fail(column: str, message: str) -> SheetError:
        return SheetError(f"{where} row {number}, column {column!r}: {message}")

    for column in REQUIRED_COLUMNS:
        if not values.get(column):
            raise fail(column, f"no {column} given" + ("; write 'auto' to segment all on the start frame"
                                                       if column == "prompts" else ""))
    movie = _absolute(values["movie"], base)
    if not movie.exists():
        raise fail("movie", f"{movie} does not exist")
    prompts: Path | str
    if values["prompts"].lower() == AUTO_PROMPTS:
        prompts = AUTO
    else:
        prompts = _absolute(values["prompts"], base)
        if prompts.suffix.lower() not in SESSION_SUFFIXES + CSV_SUFFIXES + LABEL_SUFFIXES:
            raise fail("prompts", f"cannot tell what kind of prompt file {prompts.name} is: use .csv (napari "
                                  "Points), .json (session), .tif / .npy (labels) or auto")
        if not prompts.is_file():
            raise fail("prompts", f"{prompts} does not exist")
    axes = values.get("axes") or None
    channel = _integer(values, "channel", 0, fail)
    start = _integer(values, "start", 0, fail)
    frames = _integer(values, "frames", 1, fail)
    direction = (values.get("direction") or DEFAULT_DIRECTION).lower()
    if direction not in DIRECTIONS:
        raise fail("direction", f"{values['direction']!r} is not one of {', '.join(DIRECTIONS)}")
    out = Path(values["out"]) if values.get("out") else None

    try:
        opened = open_movie(movie, axes=axes)
    except (ValueError, OSError) as exc:
        raise fail("axes" if axes and _opens(movie) else "movie", _one_line(exc).replace("pass --axes", "give axes").replace("--axes", "axes")) from None
    try:
        _resolve_channels(opened.shape, None, channel)
    except ValueError as exc:
        message = _one_line(exc).replace("pass channel=<index>", "give the channel")
        raise fail("channel", f"{movie.name} {opened.layout()}: {message}") from None
    if start is not None and start >= opened.shape[0]:
        raise fail("start", f"{start} is out of range: {movie_frames(opened.shape[0])}")
    return MovieRow(row=number, movie=movie, prompts=prompts, axes=axes.upper() if axes else None, channel=channel,
                    start=start, direction=direction, frames=frames, out=out)


def _absolute(text: str, base: Path) -> Path:
    """``text`` as an absolute path, relative to ``base``; ``..`` is resolved but symlinks are kept (the
    default output name comes from the name given)."""
    return Path(os.path.abspath(base / Path(text).expanduser()))


def _integer(values: dict[str, str], column: str, low: int, fail: Any) -> int | None:
    text = values.get(column) or ""
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise fail(column, f"expected a whole number >= {low}, got {text!r}")
    return value


def _opens(movie: Path) -> bool:
    """Whether the movie opens without an axes override (then a failure with one is the axes' fault)."""
    from .movie_files import open_movie

    try:
        open_movie(movie)
    except (ValueError, OSError):
        return False
    return True


def _file_state(path: Path) -> dict[str, int]:
    """Size and newest modification time (ns) of a file, or of every file under a folder (a zarr store)."""
    if path.is_dir():
        size, newest, count = 0, path.stat().st_mtime_ns, 0
        for folder, _, names in os.walk(path):
            for name in names:
                state = os.stat(os.path.join(folder, name))
                size, newest, count = size + state.st_size, max(newest, state.st_mtime_ns), count + 1
        return {"size": size, "mtime_ns": newest, "files": count}
    state = path.stat()
    return {"size": state.st_size, "mtime_ns": state.st_mtime_ns}
