"""Export tracked label stacks: compressed TIFF, Cell Tracking Challenge (CTC) results, napari Tracks.

Every function takes a (T, Y, X) integer "label stack" (label value = object id, 0 = background;
coordinates are (row, col) = (y, x)). It may be a numpy array or any lazy array-like with
``.shape``, ``.dtype`` and ``__getitem__(int) -> (Y, X) array``: frames are read one at a time,
so memory stays bounded for long movies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .atomic import atomic_target

__all__ = [
    "CTCTrack",
    "ctc_mask_name",
    "label_dtype",
    "tracks_from_labels",
    "write_ctc",
    "write_label_tiff",
]

_UINT16_MAX = np.iinfo(np.uint16).max
_UINT32_MAX = np.iinfo(np.uint32).max
_CTC_TRACK_FILE = "res_track.txt"


def _check_integer_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biu":
        raise ValueError(f"labels must be non-negative integers, got dtype {dtype}")
    return dtype


def label_dtype(labels: Any) -> np.dtype:
    """Smallest TIFF-friendly dtype (uint16, else uint32) that holds the (T, Y, X) label stack.

    A numpy array is checked by value (negative values raise ValueError); a lazy array-like is
    judged by its dtype alone (itemsize <= 2 -> uint16) so that no frame has to be read.
    """
    dtype = _check_integer_dtype(labels.dtype)
    if isinstance(labels, np.ndarray):
        if labels.size == 0:
            return np.dtype(np.uint16)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise ValueError(f"labels must be non-negative, found {lo}")
        if hi > _UINT32_MAX:
            raise ValueError(f"label {hi} does not fit in uint32")
        return np.dtype(np.uint16 if hi <= _UINT16_MAX else np.uint32)
    return np.dtype(np.uint16 if dtype.itemsize <= 2 else np.uint32)


def _frames(labels: Any) -> Iterator[np.ndarray]:
    """Yield the (Y, X) frames of a label stack one at a time, checked to be non-negative ints."""
    if len(labels.shape) != 3:
        raise ValueError(f"expected a (T, Y, X) label stack, got shape {tuple(labels.shape)}")
    for t in range(labels.shape[0]):
        frame = np.asarray(labels[t])
        _check_integer_dtype(frame.dtype)
        if frame.shape != tuple(labels.shape[1:]):
            raise ValueError(f"frame {t} has shape {frame.shape}, expected {tuple(labels.shape[1:])}")
        if frame.size and frame.dtype.kind == "i" and frame.min() < 0:
            raise ValueError(f"labels must be non-negative, frame {t} has {frame.min()}")
        yield frame


def _cast(frame: np.ndarray, dtype: np.dtype, t: int) -> np.ndarray:
    if frame.size and int(frame.max()) > np.iinfo(dtype).max:
        raise ValueError(f"frame {t} has label {int(frame.max())}, which does not fit in {dtype}")
    return frame.astype(dtype, copy=False)


def write_label_tiff(
    path: str | os.PathLike, labels: Any, *, axes: str = "TYX", overwrite: bool = False
) -> Path:
    """Write a (T, Y, X) label stack as one zlib-compressed multi-page OME-TIFF, frame by frame.

    ``axes`` is stored as OME metadata (Fiji/bio-formats and ``tifffile`` read it back); pass e.g.
    "ZYX" for a volume. Pixel (row, col) = (y, x). The file is uint16, or uint32 when labels need
    it (see :func:`label_dtype`). It is written to a hidden temporary file in the same folder and
    renamed at the end, so a crash never leaves a half-written file at ``path``; an existing file
    is kept unless ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if len(axes) != len(labels.shape):
        raise ValueError(f"axes {axes!r} do not match the label shape {tuple(labels.shape)}")
    if labels.shape[0] == 0:
        raise ValueError("the label stack has no frames")
    dtype = label_dtype(labels)
    pages = (_cast(frame, dtype, t) for t, frame in enumerate(_frames(labels)))
    with atomic_target(path) as partial, open(partial, "xb") as fh:
        tifffile.imwrite(
            fh,
            pages,
            shape=tuple(labels.shape),
            dtype=dtype,
            photometric="minisblack",
            compression="zlib",
            ome=True,
            metadata={"axes": axes},
        )
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} appeared while writing; pass overwrite=True to replace it")
    return path


# --- tracks: one track per run of consecutive frames of an object ---------------------------


@dataclass
class CTCTrack:
    """One CTC track: ``label`` is present on frames ``begin``..``end`` (inclusive, 0-based)."""

    label: int
    begin: int
    end: int
    parent: int = 0
    obj_id: int = 0  # the object id in the label stack this track came from


class _TrackSplitter:
    """Streams each frame's object ids and gives every run of consecutive frames its own track.

    The first run of an object keeps the object id as track label; an object that comes back after
    a gap gets a fresh label counting up from ``first_new_label`` (in order of frame, then id).
    """

    def __init__(self, first_new_label: int, link_gaps: bool = False) -> None:
        self._next_label = first_new_label
        self._link_gaps = link_gaps
        self._latest: dict[int, CTCTrack] = {}
        self.tracks: list[CTCTrack] = []

    def step(self, t: int, obj_ids: Iterable[int]) -> dict[int, int]:
        """Return {object id: track label} for frame ``t``."""
        labels = {}
        for obj in obj_ids:
            track = self._latest.get(obj)
            if track is not None and track.end == t - 1:
                track.end = t
            else:
                if track is None:
                    label, parent = obj, 0
                else:
                    label, self._next_label = self._next_label, self._next_label + 1
                    parent = track.label if self._link_gaps else 0
                track = CTCTrack(label, t, t, parent, obj)
                self._latest[obj] = track
                self.tracks.append(track)
            labels[obj] = track.label
        return labels


def _object_ids(frame: np.ndarray) -> list[int]:
    ids = np.unique(frame)
    return ids[ids != 0].tolist()


def _max_label(labels: Any) -> int:
    """Largest object id; a cheap pass over the frames when ``labels`` is lazy."""
    if isinstance(labels, np.ndarray):
        return int(labels.max()) if labels.size else 0
    return max((int(frame.max()) for frame in _frames(labels) if frame.size), default=0)


# --- Cell Tracking Challenge ------------------------------------------------------------------


def ctc_mask_name(t: int, n_frames: int) -> str:
    """CTC result mask file name for frame ``t``: 3-digit index, 4 digits beyond 1000 frames."""
    digits = max(3, len(str(max(n_frames - 1, 0))))
    return f"mask{t:0{digits}d}.tif"


def _ctc_files(directory: Path) -> list[Path]:
    found = sorted(directory.glob("mask*.tif"))
    if (directory / _CTC_TRACK_FILE).exists():
        found.append(directory / _CTC_TRACK_FILE)
    return found


def write_ctc(
    directory: str | os.PathLike,
    labels: Any,
    *,
    max_label: int | None = None,
    overwrite: bool = False,
    link_gaps: bool = False,
) -> list[CTCTrack]:
    """Write a (T, Y, X) label stack as a Cell Tracking Challenge result: ``maskTTT.tif`` + ``res_track.txt``.

    Pixel (row, col) = (y, x). Each run of consecutive frames of an object is one track ``L B E P``;
    an object that disappears and comes back starts a new track with a fresh label above
    ``max_label`` (the largest object id; computed in a first pass over the frames when not given,
    so a lazy stack is read twice). Parents are 0, or with ``link_gaps=True`` the object's previous
    track (CTC's way to bridge a gap). Masks are uint16 and relabelled with track labels.
    Existing results in ``directory`` are kept unless ``overwrite=True``, in which case all old
    mask files are removed. Everything is written to a temporary sub-folder first and moved into
    place at the end, so an error leaves old results untouched. Returns the tracks written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if _ctc_files(directory) and not overwrite:
        raise FileExistsError(
            f"{directory} already holds CTC results (mask*.tif / {_CTC_TRACK_FILE}); "
            "pass overwrite=True to replace them"
        )
    if max_label is None:
        max_label = _max_label(labels)
    if max_label > _UINT16_MAX:
        raise ValueError(f"object id {max_label} exceeds 65535, the largest CTC (uint16) label")
    n_frames = labels.shape[0]
    splitter = _TrackSplitter(max_label + 1, link_gaps)
    staging = Path(tempfile.mkdtemp(prefix=".ctc-partial-", dir=directory))
    try:
        for t, frame in enumerate(_frames(labels)):
            ids = _object_ids(frame)
            if ids and ids[-1] > max_label:
                raise ValueError(f"frame {t} has object id {ids[-1]} above max_label={max_label}")
            mask = frame.astype(np.uint16)
            for obj, label in splitter.step(t, ids).items():
                if label > _UINT16_MAX:
                    raise ValueError(
                        f"track label {label} (object {obj} reappearing on frame {t}) exceeds "
                        "65535, the largest CTC (uint16) label"
                    )
                if label != obj:
                    mask[frame == obj] = label
            tifffile.imwrite(staging / ctc_mask_name(t, n_frames), mask, compression="zlib")
        lines = "".join(f"{k.label} {k.begin} {k.end} {k.parent}\n" for k in splitter.tracks)
        (staging / _CTC_TRACK_FILE).write_text(lines, encoding="ascii")
        if _ctc_files(directory):
            if not overwrite:
                raise FileExistsError(f"CTC results appeared in {directory} while writing")
            for old in _ctc_files(directory):
                old.unlink()
        for new in staging.iterdir():
            os.replace(new, directory / new.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return splitter.tracks


# --- napari Tracks ----------------------------------------------------------------------------


def tracks_from_labels(
    labels: Any, *, split_gaps: bool = False, max_label: int | None = None
) -> np.ndarray:
    """napari Tracks layer data from a (T, Y, X) label stack: (N, 4) float rows (track_id, t, y, x).

    One row per object per frame at the object's centroid (row, col) = (y, x), sorted by track id
    then t as napari requires. track_id is the object id; with ``split_gaps=True`` an object that
    disappears and comes back gets a new id exactly as in :func:`write_ctc` (pass the same
    ``max_label`` to get the same ids). Frames are read once each.
    """
    rows, ids_per_frame = [], []
    for t, frame in enumerate(_frames(labels)):
        ys, xs = np.nonzero(frame)
        ids, inverse, counts = np.unique(frame[ys, xs], return_inverse=True, return_counts=True)
        cy = np.bincount(inverse, weights=ys, minlength=ids.size) / counts
        cx = np.bincount(inverse, weights=xs, minlength=ids.size) / counts
        rows.append(np.column_stack([ids, np.full(ids.size, t), cy, cx]).astype(float))
        ids_per_frame.append(ids.tolist())
    data = np.concatenate(rows) if rows else np.empty((0, 4))
    if split_gaps and len(data):
        if max_label is None:
            max_label = int(data[:, 0].max())
        splitter = _TrackSplitter(max_label + 1)
        data[:, 0] = [
            label
            for t, ids in enumerate(ids_per_frame)
            for label in splitter.step(t, ids).values()
        ]
    return data[np.lexsort((data[:, 1], data[:, 0]))]
