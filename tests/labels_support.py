"""Shared pieces of the LabelsWriter tests: small label images and a viewer with a (T, Y, X) Labels layer.

Arrays are (T, Y, X) or (T, Z, Y, X); pixel coordinates are (row, col) = (y, x).
"""

import numpy as np
import pytest

T, H, W = 5, 40, 40


def disc(center, radius, label, shape=(H, W), dtype=np.int32):
    """A (Y, X) plane holding ``label`` in the disc of ``radius`` around ``center`` = (y, x), 0 elsewhere."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    out = np.zeros(shape, dtype=dtype)
    out[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2] = label
    return out


def two_cells(t):
    """Engine output of frame t: object 1 moving right, object 2 still."""
    return np.maximum(disc((12, 8 + 3 * t), 5, 1), disc((30, 30), 4, 2))


@pytest.fixture
def viewer_layer(make_napari_viewer):
    """A viewer and its empty int32 (T, Y, X) Labels layer "tracks"."""
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((T, H, W), dtype=np.int32), name="tracks")
    return viewer, layer
