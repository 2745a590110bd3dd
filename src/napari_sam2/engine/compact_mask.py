"""A mask prompt as kept by a session: the bool mask cropped to its bounding box, and where that box sits.

A session keeps every mask prompt so that it can be saved and replayed exactly. A full-resolution copy of
each would cost Y x X bytes per prompt (4 MiB on a 2048 x 2048 frame, 2 GiB for 500 seeded cells) although
a cell covers a few thousand pixels; the crop costs its bounding box only, and the full (Y, X) mask is
rebuilt on demand. Coordinates are napari's: frames (Y, X), offsets (row, col) = (y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class CompactMask:
    """A bool (Y, X) mask of a frame of ``shape``, stored as ``crop`` (h, w), its tight bounding box, whose
    pixel [0, 0] is the frame's pixel ``offset`` = (row, col). An empty mask has a (0, 0) crop at (0, 0).

    Build one with :meth:`of` (from a full mask) or :meth:`cropped` (from a box of a frame); the crop is
    read-only, so one CompactMask can be shared by several prompts and sessions.
    """

    shape: tuple[int, int]
    offset: tuple[int, int]
    crop: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray | CompactMask) -> CompactMask:
        """The compact form of a bool (Y, X) mask (a CompactMask is returned as it is)."""
        if isinstance(mask, CompactMask):
            return mask
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"a mask is (Y, X), got shape {mask.shape}")
        return cls.cropped(mask, (0, 0), mask.shape)

    @classmethod
    def cropped(cls, crop: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> CompactMask:
        """The mask that is ``crop`` at ``offset`` (row, col) of a frame of ``shape`` (Y, X) and False
        elsewhere; the crop is trimmed to its bounding box (and copied)."""
        crop = np.asarray(crop, dtype=bool)
        rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
        if rows.size == 0:
            tight, at = np.zeros((0, 0), dtype=bool), (0, 0)
        else:
            tight = crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy()
            at = (int(offset[0]) + int(rows[0]), int(offset[1]) + int(cols[0]))
        height, width = (int(n) for n in shape)
        if at[0] + tight.shape[0] > height or at[1] + tight.shape[1] > width or min(at) < 0:
            raise ValueError(f"a crop of shape {tight.shape} at (row, col) = {at} does not fit a frame of "
                             f"shape (Y, X) = {(height, width)}")
        tight.flags.writeable = False
        return cls((height, width), at, tight)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored pixels (the crop); the full mask would take Y * X."""
        return int(self.crop.nbytes)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1) of the bounding box in the frame, ends exclusive (all 0 when empty)."""
        (row, col), (height, width) = self.offset, self.crop.shape
        return row, col, row + height, col + width

    @property
    def empty(self) -> bool:
        return self.crop.size == 0

    def full(self) -> np.ndarray:
        """The bool (Y, X) mask at the frame's resolution (a new array)."""
        mask = np.zeros(self.shape, dtype=bool)
        row0, col0, row1, col1 = self.bounds
        mask[row0:row1, col0:col1] = self.crop
        return mask

    def rle(self) -> list[int]:
        """Run lengths of the full mask in row-major order, starting with a (possibly empty) False run:
        exactly :func:`~napari_sam2.engine.session_file.encode_mask_rle` of :meth:`full`, computed from the
        crop alone."""
        size = self.shape[0] * self.shape[1]
        if size == 0:
            return []
        if self.empty:
            return [size]
        height, width = self.crop.shape
        padded = np.zeros((height, width + 2), dtype=np.int8)
        padded[:, 1:-1] = self.crop
        edges = np.diff(padded, axis=1)  # +1 where a run of True starts, -1 just after it ends (crop columns)
        first = (self.offset[0] + np.arange(height)) * self.shape[1] + self.offset[1]  # flat index of crop[r, 0]
        start_rows, start_cols = np.nonzero(edges == 1)
        end_rows, end_cols = np.nonzero(edges == -1)
        starts = first[start_rows] + start_cols
        ends = first[end_rows] + end_cols
        # A run that ends at a row's last pixel continues on the next row when that one starts with True.
        separate = starts[1:] != ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][separate]])
        ends = np.concatenate([ends[:-1][separate], ends[-1:]])
        gaps = starts - np.concatenate([[0], ends[:-1]])
        runs = np.stack([gaps, ends - starts], axis=1).ravel().tolist()
        tail = size - int(ends[-1])
        return [*runs, tail] if tail else runs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactMask):
            return NotImplemented
        return (self.shape == other.shape and self.offset == other.offset
                and np.array_equal(self.crop, other.crop))

    __hash__ = None  # mutable-looking contents (an array): not hashable, like the full mask

    def __repr__(self) -> str:
        return f"CompactMask(shape={self.shape}, offset={self.offset}, crop shape={self.crop.shape})"
