"""Cell Tracking Challenge (CTC) results of a (T, Y, X) label stack: ``maskTTT.tif`` + ``res_track.txt``.

The label stack holds object ids (0 = background), pixel (row, col) = (y, x); it may be lazy (frames
are read one at a time). The lineage goes into the track file's parent column.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .label_tracks import CTCTrack, TrackSplitter, assign_parents, label_frames

__all__ = ["CTC_TRACK_FILE", "ctc_mask_name", "largest_label", "write_ctc"]

CTC_TRACK_FILE = "res_track.txt"
_UINT16_MAX = np.iinfo(np.uint16).max


def ctc_mask_name(t: int, n_frames: int) -> str:
    """CTC result mask file name for frame ``t``: 3-digit index, 4 digits beyond 1000 frames."""
    digits = max(3, len(str(max(n_frames - 1, 0))))
    return f"mask{t:0{digits}d}.tif"


def _ctc_files(directory: Path) -> list[Path]:
    found = sorted(directory.glob("mask*.tif"))
    if (directory / CTC_TRACK_FILE).exists():
        found.append(directory / CTC_TRACK_FILE)
    return found


def _object_ids(frame: np.ndarray) -> list[int]:
    ids = np.unique(frame)
    return ids[ids != 0].tolist()


def largest_label(labels: Any) -> int:
    """Largest object id of a (T, Y, X) label stack; a cheap pass over the frames when ``labels`` is lazy."""
    if isinstance(labels, np.ndarray):
        return int(labels.max()) if labels.size else 0
    return max((int(frame.max()) for frame in label_frames(labels) if frame.size), default=0)


def write_ctc(
    directory: str | os.PathLike,
    labels: Any,
    *,
    max_label: int | None = None,
    overwrite: bool = False,
    link_gaps: bool = False,
    parents: Mapping[int, int] | None = None,
) -> list[CTCTrack]:
    """Write a (T, Y, X) label stack as a Cell Tracking Challenge result: ``maskTTT.tif`` + ``res_track.txt``.

    Pixel (row, col) = (y, x). Each run of consecutive frames of an object is one track ``L B E P``;
    an object that disappears and comes back starts a new track with a fresh label above
    ``max_label`` (the largest object id; computed in a first pass over the frames when not given,
    so a lazy stack is read twice). ``parents`` ({daughter object id: parent object id}, e.g.
    ``session.lineage()``) sets each daughter's first track's parent to its parent's last track;
    an unknown id or a parent that does not end before its daughter starts is refused
    (:class:`~napari_sam2.label_tracks.ParentsError`). Other parents are 0, or with ``link_gaps=True``
    the object's previous track (CTC's way to bridge a gap). Masks are uint16, relabelled with track labels.
    Existing results in ``directory`` are kept unless ``overwrite=True``, in which case all old
    mask files are removed. Everything is written to a temporary sub-folder first and moved into
    place at the end, so an error leaves old results untouched. Returns the tracks written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if _ctc_files(directory) and not overwrite:
        raise FileExistsError(
            f"{directory} already holds CTC results (mask*.tif / {CTC_TRACK_FILE}); "
            "pass overwrite=True to replace them"
        )
    if max_label is None:
        max_label = largest_label(labels)
    if max_label > _UINT16_MAX:
        raise ValueError(f"object id {max_label} exceeds 65535, the largest CTC (uint16) label")
    n_frames = labels.shape[0]
    splitter = TrackSplitter(max_label + 1, link_gaps)
    staging = Path(tempfile.mkdtemp(prefix=".ctc-partial-", dir=directory))
    try:
        for t, frame in enumerate(label_frames(labels)):
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
        assign_parents(splitter.tracks, parents)
        lines = "".join(f"{k.label} {k.begin} {k.end} {k.parent}\n" for k in splitter.tracks)
        (staging / CTC_TRACK_FILE).write_text(lines, encoding="ascii")
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
