"""The user's edits of a napari Labels layer, read from its ``paint`` event, per frame of the tracked plane.

napari emits ``Labels.events.paint`` with the history item it just recorded: a list of atoms, one per brush dab,
fill, polygon or ``data_setitem`` call. :func:`edits_of` turns such an item into one :class:`UserEdit` per frame
of the tracked plane (a (T, Z, Y, X) layer tracked in plane z ignores atoms on other Z planes). Qt-free, numpy only.
Axes are napari's: the last two are (Y, X); pixel coordinates are (row, col) = (y, x).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Pixels of one user edit kept to tell later whether the edit is still in effect (not undone).
_EDIT_SAMPLES = 1024

# What one atom changed on one frame: labels it replaced or put there, rows, cols, the values it put there.
_Piece = tuple[set[int], np.ndarray, np.ndarray, np.ndarray]


@dataclass
class UserEdit:
    """One user edit (a paint event) on one frame: the labels it replaced or put there, and a sample of its pixels.

    The edit is "in effect" while at least one sampled pixel still holds the value the edit put there; napari's
    undo puts the old values back (every recorded pixel changed, so old != new), which takes the edit out of
    effect, and redo brings it back.
    """

    ids: set[int]
    ys: np.ndarray
    xs: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, ids: set[int], ys: np.ndarray, xs: np.ndarray, values: np.ndarray) -> UserEdit:
        """The edit of pixels (ys, xs) set to ``values``, keeping an evenly spaced sample of at most 1024 pixels."""
        if ys.size > _EDIT_SAMPLES:
            keep = np.linspace(0, ys.size - 1, _EDIT_SAMPLES).astype(np.intp)
            ys, xs, values = ys[keep], xs[keep], values[keep]
        ids = {i for i in ids if i != 0}
        return cls(ids, ys.astype(np.intp), xs.astype(np.intp), np.asarray(values, dtype=np.int64))

    def in_effect(self, plane: np.ndarray) -> bool:
        """Whether the (Y, X) ``plane`` still shows this edit (not undone) at one of its sampled pixels at least."""
        return bool(self.ys.size) and bool((plane[self.ys, self.xs] == self.values).any())


def _range_of(key: Any, size: int) -> range:
    """The indices an int or slice in a history atom's key covers on an axis of length ``size``."""
    if isinstance(key, slice):
        return range(size)[key]
    index = operator.index(key)
    return range(index, index + 1)


def edits_of(
    item: Any, shape: Sequence[int], frame_axis: int, fixed_index: Mapping[int, int]
) -> dict[int, UserEdit] | None:
    """Per frame of the tracked plane, what one history item (a list of atoms) changed; None if unreadable.

    ``shape`` is the layer's shape, ``frame_axis`` the tracked axis (non-negative) and ``fixed_index`` the index of
    every other leading axis, as in :class:`~napari_sam2.plugin.labels_writer.LabelsWriter`.
    """
    parts: dict[int, list[_Piece]] = {}
    for atom in item:
        if hasattr(atom, "slice_key") and hasattr(atom, "old_values") and hasattr(atom, "new_value"):
            _mask_atom_pieces(atom, shape, frame_axis, fixed_index, parts)
        elif isinstance(atom, tuple) and len(atom) == 3:
            if not _setitem_atom_pieces(atom, shape, frame_axis, fixed_index, parts):
                return None
        else:
            return None
    return {
        t: UserEdit.of(
            set().union(*(p[0] for p in pieces)),
            np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]),
            np.concatenate([p[3] for p in pieces]),
        )
        for t, pieces in parts.items()
    }


def _mask_atom_pieces(
    atom: Any, shape: Sequence[int], frame_axis: int, fixed_index: Mapping[int, int], parts: dict[int, list[_Piece]]
) -> None:
    """Mask-based edit (brush, fill, polygon): bounding box, mask (None: all of it), old values, new label."""
    lead = len(shape) - 2
    ranges = [_range_of(k, n) for k, n in zip(atom.slice_key, shape, strict=True)]
    if any(index not in ranges[axis] for axis, index in fixed_index.items()):
        return
    mask = None if atom.mask is None else np.asarray(atom.mask, dtype=bool)
    old_values = np.asarray(atom.old_values)
    if mask is not None:
        old_full = np.zeros(mask.shape, dtype=old_values.dtype)
        old_full[mask] = old_values.ravel()
    else:
        old_full = old_values
    for t in ranges[frame_axis]:
        select = tuple(ranges[axis].index(t if axis == frame_axis else fixed_index[axis]) for axis in range(lead))
        plane_old = old_full[select]
        plane_mask = np.ones(plane_old.shape, dtype=bool) if mask is None else mask[select]
        ys, xs = np.nonzero(plane_mask)
        if ys.size == 0:
            continue
        ids = {int(v) for v in np.unique(plane_old[plane_mask])} | {int(atom.new_value)}
        values = np.full(ys.size, int(atom.new_value), dtype=np.int64)
        ry, rx = ranges[-2], ranges[-1]
        parts.setdefault(t, []).append((ids, ys * ry.step + ry.start, xs * rx.step + rx.start, values))


def _setitem_atom_pieces(
    atom: tuple[Any, Any, Any],
    shape: Sequence[int],
    frame_axis: int,
    fixed_index: Mapping[int, int],
    parts: dict[int, list[_Piece]],
) -> bool:
    """data_setitem: (fancy indices, old values, new value(s)); False when the indices do not fit the layer."""
    indices, old, new = atom
    indices = [np.asarray(i).ravel() for i in indices]
    if len(indices) != len(shape):
        return False
    keep = np.ones(indices[0].shape, dtype=bool)
    for axis, index in fixed_index.items():
        keep &= indices[axis] == index
    old = np.asarray(old).ravel()
    new = np.asarray(new)
    new = np.broadcast_to(new, old.shape) if new.ndim == 0 else new.ravel()
    frames, ys, xs = indices[frame_axis][keep], indices[-2][keep], indices[-1][keep]
    old, new = old[keep], new[keep]
    for t in np.unique(frames):
        here = frames == t
        ids = {int(v) for v in np.unique(old[here])} | {int(v) for v in np.unique(new[here])}
        parts.setdefault(int(t), []).append((ids, ys[here], xs[here], new[here].astype(np.int64)))
    return True
