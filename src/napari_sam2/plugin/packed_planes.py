"""Compressed (Y, X) label planes: what :class:`~napari_sam2.plugin.labels_writer.LabelsWriter` last wrote per frame.

The writer keeps one record per frame so that it can tell later where the user changed a tracked object. A record
must stay small (a 2048 x 2048 int32 plane is 16 MiB, a record a few kB), so only the bounding box of the non-zero
pixels is kept, zlib-compressed in the narrowest unsigned dtype that holds its labels. Qt-free, numpy and zlib only.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PackedPlane:
    """One (Y, X) label plane, stored as the zlib-compressed bounding box of its non-zero pixels."""

    box: tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)
    dtype: str
    payload: bytes
    ids: frozenset[int]  # the labels it may hold (a superset: lets a write skip decompressing it)

    @property
    def nbytes(self) -> int:
        return len(self.payload) + 64  # payload plus a rough allowance for the object itself


def pack_plane(plane: np.ndarray, ids: Iterable[int]) -> PackedPlane | None:
    """Compress a non-negative (Y, X) label plane whose labels are among ``ids``; None when it is all 0.

    zlib level 6: for a 2048 x 2048 frame with five cells of 30-50 px radius spread over the frame, about 3.5 kB
    (level 1 gives 13 kB) in about 10 ms.
    """
    nonzero = plane != 0
    rows = np.flatnonzero(nonzero.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(nonzero.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = plane[y0:y1, x0:x1]
    top = int(crop.max())
    dtype = next((d for d in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(d).max), np.int64)
    payload = zlib.compress(np.ascontiguousarray(crop, dtype=dtype).tobytes(), 6)
    return PackedPlane((y0, y1, x0, x1), np.dtype(dtype).str, payload, frozenset(int(i) for i in ids))


def unpack_plane(packed: PackedPlane | None, shape: tuple[int, int]) -> np.ndarray:
    """The (Y, X) plane that :func:`pack_plane` compressed (all 0 for None)."""
    if packed is None:
        return np.zeros(shape, dtype=np.uint8)
    y0, y1, x0, x1 = packed.box
    dtype = np.dtype(packed.dtype)
    plane = np.zeros(shape, dtype=dtype)
    plane[y0:y1, x0:x1] = np.frombuffer(zlib.decompress(packed.payload), dtype=dtype).reshape(y1 - y0, x1 - x0)
    return plane
