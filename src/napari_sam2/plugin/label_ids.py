"""Object ids and labels: checked id lists, id membership masks, and the next free label of a Labels layer.

Qt-free, numpy only; used by :class:`~napari_sam2.plugin.labels_writer.LabelsWriter` and the widget.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import numpy as np

# Elements per block when a non-numpy (dask, zarr, ...) layer is scanned for its largest label.
_MAX_BLOCK_ELEMENTS = 1 << 25


def as_ids(obj_ids: Iterable[int]) -> np.ndarray:
    """Sorted unique int64 array of object ids; each must be an integer >= 1."""
    if isinstance(obj_ids, np.ndarray):
        obj_ids = obj_ids.ravel().tolist()
    ids = sorted({operator.index(i) for i in obj_ids})
    if ids and ids[0] < 1:
        raise ValueError(f"object ids must be >= 1 (0 is the background), got {ids[0]}")
    return np.asarray(ids, dtype=np.int64)


def isin_ids(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Bool mask of the pixels of ``values`` whose label is one of ``ids`` (an array from :func:`as_ids`)."""
    if ids.size == 0:
        return np.zeros(values.shape, dtype=bool)
    lo, hi = int(ids[0]), int(ids[-1])
    dtype = values.dtype
    if hi - lo + 1 == ids.size and dtype.kind in "iu" and np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
        # Consecutive ids (the usual 1..n): one subtraction and one comparison, twice as fast as np.isin. The
        # subtraction wraps, so viewed as unsigned, values below lo become large: v - lo <= hi - lo iff lo <= v <= hi.
        shifted = np.subtract(values, dtype.type(lo))
        return shifted.view(f"u{dtype.itemsize}") <= hi - lo
    return np.isin(values, ids)


def next_free_label(layer: Any) -> int:
    """The largest label in ``layer`` (a napari Labels layer, or a bare array) plus 1; 1 for an empty layer.

    A numpy layer is reduced in one ``max()``; any other array (dask, zarr, xarray, tensorstore, ...) is read in
    blocks along its first axis of at most 2**25 elements, so the pass needs bounded memory. A multiscale layer
    is read at full resolution (level 0), since downsampling can drop small labels.
    """
    data = getattr(layer, "data", layer)
    if getattr(layer, "multiscale", False):
        data = data[0]
    if isinstance(data, np.ndarray):
        top = int(data.max()) if data.size else 0
        return max(top, 0) + 1
    shape = tuple(int(n) for n in data.shape)
    if 0 in shape:
        return 1
    if len(shape) == 0:
        return max(int(np.asarray(data)), 0) + 1
    per_index = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, _MAX_BLOCK_ELEMENTS // max(per_index, 1))
    top = 0
    for start in range(0, shape[0], step):
        block = np.asarray(data[start : start + step])
        if block.size:
            top = max(top, int(block.max()))
    return top + 1
