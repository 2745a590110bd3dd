"""Track segments of a (T, Y, X) label stack and the lineage between them, shared by every export.

A label stack holds object ids (0 = background), coordinates (row, col) = (y, x). Each run of
consecutive frames of an object is one track segment: an object that disappears and comes back starts
a new segment with a fresh label, as the Cell Tracking Challenge (CTC) format requires. A lineage
``parents`` maps a daughter's object id to its parent's; on segments it links the daughter's first
segment to the parent's last one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CTCTrack",
    "ParentsError",
    "TrackSplitter",
    "assign_parents",
    "check_integer_dtype",
    "frame_centroids",
    "label_frames",
]


class ParentsError(ValueError):
    """A lineage {daughter: parent} that cannot be right for a label stack (an unknown id, a parent that does not
    end before its daughter starts). The session's own lineage edits raise ``napari_sam2.LineageError``."""


def check_integer_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biu":
        raise ValueError(f"labels must be non-negative integers, got dtype {dtype}")
    return dtype


def label_frames(labels: Any) -> Iterator[np.ndarray]:
    """Yield the (Y, X) frames of a (T, Y, X) label stack one at a time, checked to be non-negative ints.

    ``labels`` may be a numpy array or any lazy array-like with ``.shape`` and ``__getitem__(int)``, so
    memory stays bounded for long movies.
    """
    if len(labels.shape) != 3:
        raise ValueError(f"expected a (T, Y, X) label stack, got shape {tuple(labels.shape)}")
    for t in range(labels.shape[0]):
        frame = np.asarray(labels[t])
        check_integer_dtype(frame.dtype)
        if frame.shape != tuple(labels.shape[1:]):
            raise ValueError(f"frame {t} has shape {frame.shape}, expected {tuple(labels.shape[1:])}")
        if frame.size and frame.dtype.kind == "i" and frame.min() < 0:
            raise ValueError(f"labels must be non-negative, frame {t} has {frame.min()}")
        yield frame


@dataclass
class CTCTrack:
    """One CTC track segment: ``label`` is present on frames ``begin``..``end`` (inclusive, 0-based)."""

    label: int
    begin: int
    end: int
    parent: int = 0
    obj_id: int = 0  # the object id in the label stack this track came from


class TrackSplitter:
    """Streams each frame's object ids and gives every run of consecutive frames its own track.

    The first run of an object keeps the object id as track label; an object that comes back after
    a gap gets a fresh label counting up from ``first_new_label`` (in order of frame, then id).
    With ``link_gaps`` the returning run's parent is the object's previous run (CTC's way to bridge a gap).
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


def _checked_lineage(parents: Mapping[int, int]) -> dict[int, int]:
    lineage = {}
    for child, parent in parents.items():
        if isinstance(child, bool) or isinstance(parent, bool) or not (
            isinstance(child, (int, np.integer)) and isinstance(parent, (int, np.integer))
        ):
            raise ParentsError(f"parents must map object ids to object ids (integers), got {child!r}: {parent!r}")
        if child == parent:
            raise ParentsError(f"parents: object {child} cannot be its own parent")
        lineage[int(child)] = int(parent)
    return lineage


def assign_parents(tracks: list[CTCTrack], parents: Mapping[int, int] | None) -> dict[int, int]:
    """Give each daughter's first segment its parent's last segment as parent; return {child label: parent label}.

    ``tracks`` are those of one label stack in order of frame (as :class:`TrackSplitter` makes them).
    Raises :class:`ParentsError` (one line) for an id that is not in the label stack, or a parent whose
    last frame is not before its daughter's first frame; ``tracks`` are left unchanged then.
    """
    if not parents:
        return {}
    lineage = _checked_lineage(parents)
    first: dict[int, CTCTrack] = {}
    last: dict[int, CTCTrack] = {}
    for track in tracks:
        first.setdefault(track.obj_id, track)
        last[track.obj_id] = track
    links = {}
    for child, parent in sorted(lineage.items()):
        for obj, role in ((child, "daughter"), (parent, "parent")):
            if obj not in first:
                raise ParentsError(f"parents: object {obj} ({role} in {child}: {parent}) is not in the label stack")
        if last[parent].end >= first[child].begin:
            raise ParentsError(
                f"parents: object {parent} is on frames up to {last[parent].end}, so it cannot be the parent of "
                f"object {child}, which starts on frame {first[child].begin}: a parent must end before its "
                "daughter starts"
            )
        links[first[child].label] = last[parent].label
    by_label = {track.label: track for track in tracks}
    for child_label, parent_label in links.items():
        by_label[child_label].parent = parent_label
    return links


def frame_centroids(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The object ids of one (Y, X) label frame (sorted) and their centroids, (K, 2) (row, col) = (y, x)."""
    ys, xs = np.nonzero(frame)
    ids, inverse, counts = np.unique(frame[ys, xs], return_inverse=True, return_counts=True)
    cy = np.bincount(inverse, weights=ys, minlength=ids.size) / np.maximum(counts, 1)
    cx = np.bincount(inverse, weights=xs, minlength=ids.size) / np.maximum(counts, 1)
    return ids, np.column_stack([cy, cx])
