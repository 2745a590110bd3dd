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
import hashlib
import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli import AUTO_PROMPTS as AUTO  # prompts: segment all on the start frame (``track --prompts auto``)
from .cli_lineage import proposals_path

COLUMNS = ("movie", "prompts", "axes", "channel", "start", "direction", "frames", "out")
REQUIRED_COLUMNS = ("movie", "prompts")
DEFAULT_DIRECTION = "forward"
OUTPUT_SUFFIX = "_labels.tif"
SUMMARY_NAME = "summary.csv"  # the batch's own file in its output folder: no row may write it
MANIFEST_SUFFIX = ".done.json"  # the done-marker beside each output (``batch_movie.manifest_path``)
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

    def written_names(self) -> list[Path]:
        """Every file or folder this row writes, relative to the output folder: the output, its done-marker and
        the division proposals CSV the ``track`` command writes beside it."""
        output = self.output_name()
        return [output, output.with_name(output.name + MANIFEST_SUFFIX), proposals_path(output)]

    def as_record(self) -> dict[str, Any]:
        """This row as a sheet's columns (paths as text), e.g. to check a row built in Python as a sheet's."""
        return {"movie": str(self.movie), "prompts": str(self.prompts), "axes": self.axes, "channel": self.channel,
                "start": self.start, "direction": self.direction, "frames": self.frames,
                "out": None if self.out is None else str(self.out)}

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
        arguments, the prompt file's content (SHA-256), size and modification time of the movie and of a
        checkpoint file given as ``model`` (too big to hash per row), and the napari-sam2 version. Any change
        (an edited prompt file, a re-exported movie) means the movie runs again."""
        from . import __version__

        files: dict[str, Any] = {"movie": _file_state(self.movie)}
        if self.prompts != AUTO:
            files["prompts"] = {"sha256": hashlib.sha256(Path(self.prompts).read_bytes()).hexdigest()}
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
    return _check_rows(list(enumerate(records, start=1)), path.parent.absolute(), f"{path} ")


def rows_from_records(records: Any, base: str | os.PathLike) -> list[MovieRow]:
    """The rows of a sheet given in Python, with the same checks as :func:`read_sheet`: a pandas DataFrame, or a
    list of dicts (keys as the sheet's columns) and :class:`MovieRow` objects; relative paths are relative to
    ``base``. ``MovieRow`` objects keep their numbers (a sheet's rows checked again are named as in the sheet)
    unless two share one (rows of several sheets): then, as other rows, every row is numbered by position
    (1-based). Row numbers identify the movies of a batch, so they are unique."""
    if hasattr(records, "columns") and hasattr(records, "to_dict"):  # a pandas DataFrame (pandas not needed)
        records = records.to_dict("records")
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise SheetError(f"expected a sheet's path, a DataFrame or a list of rows (dicts or MovieRow), got "
                         f"{type(records).__name__}")
    lowered: list[tuple[int, dict[str, Any]]] = []
    for number, record in enumerate(records, start=1):
        if isinstance(record, MovieRow):
            number, record = record.row, record.as_record()
        if not isinstance(record, Mapping):
            raise SheetError(f"row {number}: expected a dict of the sheet's columns or a MovieRow, got "
                             f"{type(record).__name__}")
        _check_columns([str(key).strip().lower() for key in record], f"row {number}", header=False)
        lowered.append((number, {str(key).strip().lower(): value for key, value in record.items()}))
    if len({number for number, _ in lowered}) < len(lowered):
        lowered = [(position, record) for position, (_, record) in enumerate(lowered, start=1)]
    return _check_rows(lowered, Path(base).absolute(), "")


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


def _check_rows(records: list[tuple[int, Mapping[str, Any]]], base: Path, where: str) -> list[MovieRow]:
    """``records``: (row number, cells) pairs; ``where``: what the messages start with ("sheet.csv " or
    nothing), before "row N"."""
    rows = []
    for number, record in records:
        values = {key: _text(value) for key, value in record.items()}
        if not any(values.values()):
            continue  # a blank line, e.g. at the end of a spreadsheet export
        rows.append(_row(number, values, base, where))
    if not rows:
        raise SheetError(f"{where}has no movie rows (one row per movie after the header)" if where else
                         "no movie rows given: give one dict (or MovieRow) per movie")
    _check_written_apart(rows, where)
    return rows


def _check_written_apart(rows: list[MovieRow], where: str) -> None:
    """Refuse two rows writing the same file (output, done-marker or division CSV: ``x.tif`` and ``x.geff``
    share ``x_divisions.csv``), one row writing inside another's output folder, or a row writing the batch's
    summary. Names are compared without case: they would clash on macOS and Windows, or once copied there."""
    owners: dict[str, tuple[int, Path]] = {SUMMARY_NAME: (0, Path(SUMMARY_NAME))}
    for row in rows:
        for name in row.written_names():
            key = _key(name)
            if key in owners and owners[key][0] != row.row:
                raise SheetError(_clash(where, row, name, *owners[key]))
            owners[key] = (row.row, name)
    for row in rows:
        for name in row.written_names():
            for folder in Path(name).parents:
                owner = owners.get(_key(folder))
                if owner is not None and owner[0] != row.row:
                    raise SheetError(_clash(where, row, name, *owner))


def _key(name: Path) -> str:
    return os.path.normpath(name).replace(os.sep, "/").lower()


def _clash(where: str, row: MovieRow, name: Path, other: int, other_name: Path) -> str:
    what = "the batch's own summary" if other == 0 else f"row {other}'s {other_name}"
    return (f"{where}row {row.row}, column 'out': it writes {name}, which clashes with {what} (names are compared "
            "without case; a CTC folder holds its files); give each movie its own 'out' (movies of the same name "
            "in different folders need one)")


def _text(value: Any) -> str:
    """A cell as text: None, NaN and pandas' NA are empty (a DataFrame's missing values), 3.0 is "3" (a
    DataFrame's integer column with a gap is float)."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return ""
    pandas = sys.modules.get("pandas")  # NA and NaT: only a DataFrame gives them, so pandas is imported then
    if pandas is not None and pandas.api.types.is_scalar(value) and pandas.isna(value):
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _row(number: int, values: dict[str, str], base: Path, where: str) -> MovieRow:
    """One checked row: files exist, and the movie opens with its axes, channel and start frame as the
    ``track`` command would check them (lazily: no frame is read)."""
    from .cli import CSV_SUFFIXES, LABEL_SUFFIXES, SESSION_SUFFIXES, _one_line
    from .engine.frames import _resolve_channels
    from .engine.session import DIRECTIONS
    from .movie_files import open_movie
    from .prompt_files import movie_frames

    def fail(column: str, message: str) -> SheetError:
        return SheetError(f"{where}row {number}, column {column!r}: {message}")

    for column in REQUIRED_COLUMNS:
        if not values.get(column):
            raise fail(column, f"no {column} given" + ("; write 'auto' to segment all on the start frame"
                                                       if column == "prompts" else ""))
    movie = _absolute(values["movie"], base)
    if not movie.exists():
        raise fail("movie", f"{movie} does not exist")
    prompts: Path | str
    if values["prompts"].lower() == AUTO:
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
        message = _one_line(exc).replace("pass --axes", "give axes").replace("--axes", "axes")
        raise fail("axes" if axes and _opens(movie) else "movie", message) from None
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
