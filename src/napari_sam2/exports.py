"""Export tracked label stacks: compressed TIFF, Cell Tracking Challenge (CTC) results, napari Tracks.

CTC results are written by :mod:`napari_sam2.ctc_export` and GEFF graphs by :mod:`napari_sam2.geff_files`;
the CTC names are re-exported here.

Every function takes a (T, Y, X) integer "label stack" (label value = object id, 0 = background;
coordinates are (row, col) = (y, x)). It may be a numpy array or any lazy array-like with
``.shape``, ``.dtype`` and ``__getitem__(int) -> (Y, X) array``: frames are read one at a time,
so memory stays bounded for long movies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .atomic import atomic_target
from .ctc_export import ctc_mask_name, write_ctc
from .label_tracks import (
    CTCTrack,
    ParentsError,
    TrackSplitter,
    assign_parents,
    check_integer_dtype,
    frame_centroids,
    label_frames,
)

__all__ = [
    "CTCTrack",
    "ParentsError",
    "ctc_mask_name",
    "label_dtype",
    "lineage_tracks",
    "tracks_from_labels",
    "write_ctc",
    "write_label_tiff",
]

_UINT16_MAX = np.iinfo(np.uint16).max
_UINT32_MAX = np.iinfo(np.uint32).max


def label_dtype(labels: Any) -> np.dtype:
    """Smallest TIFF-friendly dtype (uint16, else uint32) that holds the (T, Y, X) label stack.

    A numpy array is checked by value (negative values raise ValueError); a lazy array-like is
    judged by its dtype alone (itemsize <= 2 -> uint16) so that no frame has to be read.
    """
    dtype = check_integer_dtype(labels.dtype)
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
    pages = (_cast(frame, dtype, t) for t, frame in enumerate(label_frames(labels)))
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


# --- napari Tracks ----------------------------------------------------------------------------


def _centroid_rows(labels: Any) -> tuple[np.ndarray, list[list[int]]]:
    """(N, 4) rows (object id, t, y, x) in frame order, and each frame's object ids; frames read once each."""
    rows, ids_per_frame = [], []
    for t, frame in enumerate(label_frames(labels)):
        ids, centroids = frame_centroids(frame)
        rows.append(np.column_stack([ids, np.full(ids.size, t), centroids]).astype(float))
        ids_per_frame.append(ids.tolist())
    return (np.concatenate(rows) if rows else np.empty((0, 4))), ids_per_frame


def _split_tracks(data: np.ndarray, ids_per_frame: list[list[int]], max_label: int | None,
                  link_gaps: bool = False) -> list[CTCTrack]:
    """Relabel ``data`` rows (in frame order) with track segment ids, as :func:`write_ctc` numbers them."""
    if max_label is None:
        max_label = int(data[:, 0].max()) if len(data) else 0
    splitter = TrackSplitter(max_label + 1, link_gaps)
    data[:, 0] = [label for t, ids in enumerate(ids_per_frame) for label in splitter.step(t, ids).values()]
    return splitter.tracks


def tracks_from_labels(
    labels: Any, *, split_gaps: bool = False, max_label: int | None = None
) -> np.ndarray:
    """napari Tracks layer data from a (T, Y, X) label stack: (N, 4) float rows (track_id, t, y, x).

    One row per object per frame at the object's centroid (row, col) = (y, x), sorted by track id
    then t as napari requires. track_id is the object id; with ``split_gaps=True`` an object that
    disappears and comes back gets a new id exactly as in :func:`write_ctc` (pass the same
    ``max_label`` to get the same ids). Frames are read once each.
    """
    data, ids_per_frame = _centroid_rows(labels)
    if split_gaps:
        _split_tracks(data, ids_per_frame, max_label)
    return data[np.lexsort((data[:, 1], data[:, 0]))]


def lineage_tracks(
    labels: Any,
    parents: Mapping[int, int] | None = None,
    *,
    max_label: int | None = None,
    link_gaps: bool = False,
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """napari Tracks ``(data, graph)`` of a (T, Y, X) label stack and its lineage ``{daughter id: parent id}``.

    ``data`` is (N, 4) float rows (track_id, t, y, x) at object centroids (row, col) = (y, x), sorted
    by track id then t; ``graph`` is napari's ``{track_id: [parent track_id]}``. Track ids are the CTC
    segment ids of :func:`write_ctc` (same ``max_label`` and ``link_gaps``, same ids and parents): an
    object that comes back after a gap is a new track, a daughter's first track points at its parent's
    last track, and with ``link_gaps=True`` a returning track points at the object's previous one.
    ``viewer.add_tracks(data, graph=graph)`` shows the lineage. Bad lineages raise :class:`ParentsError`.
    """
    data, ids_per_frame = _centroid_rows(labels)
    tracks = _split_tracks(data, ids_per_frame, max_label, link_gaps)
    assign_parents(tracks, parents)
    graph = {track.label: [track.parent] for track in tracks if track.parent}
    return data[np.lexsort((data[:, 1], data[:, 0]))], graph
