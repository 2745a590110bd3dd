"""A test stand-in for a lazily loaded movie (dask, zarr, memmap ...)."""

from __future__ import annotations

import numpy as np


class LazyFrames:
    """Array-like that records every frame read, allows only integer frame reads and refuses to be
    materialised as a whole."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[int] = []

    def __getitem__(self, index):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise AssertionError(f"only single integer frame reads are allowed, got {index!r}")
        self.reads.append(int(index))
        return self._data[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack must never be materialised")

    def __len__(self) -> int:
        return self.shape[0]
