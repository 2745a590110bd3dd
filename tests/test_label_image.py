"""Label images from low-resolution logits in tiles of rows (napari_sam2.engine.label_tiles) and through
ModelRuntime / TrackingSession.label_image: the same labels as labels_from_logits of the dense,
whole-frame F.interpolate logits, without ever holding (objects, Y, X) at frame resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from session_support import cells_movie, small_model
from torch.utils._python_dispatch import TorchDispatchMode

from napari_sam2 import TrackingSession, labels_from_logits
from napari_sam2.engine.label_tiles import TileResampler, axis_weights, row_tiles, tiled_label_image


def _dense(low_res: torch.Tensor, frame_shape: tuple[int, int]) -> np.ndarray:
    return F.interpolate(low_res[:, None], size=frame_shape, mode="bilinear", align_corners=False)[:, 0].numpy()


def _blobby(n: int, side: int, seed: int, offset: float = -0.5) -> torch.Tensor:
    """(n, side, side) smooth random logits: blobs above 0 on a background below it."""
    gen = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.randn(n, 1, side, side, generator=gen) * 5, 5, 1, 2)[:, 0] + offset


SHAPES = [(32, (96, 80)), (64, (300, 257)), (128, (1024, 1024)), (32, (20, 17)), (64, (64, 64)), (256, (200, 130))]


@pytest.mark.parametrize("src,dst", [(32, 96), (32, 80), (256, 1000), (256, 1333), (128, 1024), (64, 64),
                                     (256, 96), (5, 17), (1, 7)])
def test_axis_weights_are_the_ones_interpolate_uses(src, dst):
    """F.interpolate of one-hot rows gives its weights; ours are the same numbers exactly."""
    probe = F.interpolate(torch.eye(src)[:, None, :, None], size=(dst, 1), mode="bilinear",
                          align_corners=False)[:, 0, :, 0].T.numpy()  # (dst, src)
    w = axis_weights(src, dst)
    ours = np.zeros((dst, src), dtype=np.float32)
    np.add.at(ours, (np.arange(dst), w.first), w.w_first)
    np.add.at(ours, (np.arange(dst), w.second), w.w_second)
    np.testing.assert_array_equal(ours, probe)
    assert (w.first <= w.second).all() and (np.diff(w.first) >= 0).all() and w.second.max() < src


@pytest.mark.parametrize("side,frame_shape", SHAPES)
def test_tiles_resample_as_the_whole_frame_interpolation(side, frame_shape):
    low_res = _blobby(3, side, seed=side)
    dense = _dense(low_res, frame_shape)
    resampler = TileResampler(low_res, frame_shape)
    objects = np.arange(3)
    height = frame_shape[0]
    for top, bottom in ((0, height), (0, 1), (height // 3, height // 2 + 1), (height - 1, height)):
        values = resampler.values(objects, top, bottom).numpy()
        diff = np.abs(values - dense[:, top:bottom])
        assert diff.max() <= 1e-5 * np.abs(dense).max(), (top, bottom, diff.max())
    same = np.mean(resampler.values(objects, 0, height).numpy() == dense)
    print(f"{side} -> {frame_shape}: {same:.4%} of the values bit-identical to F.interpolate")


def _check_labels(low_res: torch.Tensor, ids: list[int], frame_shape, dtype, tile_bytes: int) -> None:
    labels = tiled_label_image(low_res, ids, frame_shape, dtype, tile_bytes=tile_bytes)
    expected = labels_from_logits(ids, _dense(low_res, frame_shape), dtype=dtype)
    assert labels.dtype == np.dtype(dtype) and labels.shape == tuple(frame_shape)
    differing = int((labels != expected).sum())
    assert differing == 0, f"{differing} pixels differ"


# One tile; many tiles; one row and object each (that last one only on frames of at most 300 rows: slow).
@pytest.mark.parametrize(("side", "frame_shape", "tile_bytes"),
                         [(side, shape, tile) for side, shape in SHAPES for tile in (32 * 2**20, 40_000, 1)
                          if tile != 1 or shape[0] <= 300])
def test_labels_equal_labels_from_the_dense_logits(side, frame_shape, tile_bytes):
    low_res = _blobby(12, side, seed=side + 1)
    _check_labels(low_res, [5, 3, 9, 1, 2, 7, 11, 4, 6, 8, 10, 12], frame_shape, np.uint16, tile_bytes)


def test_ties_go_to_the_first_object_and_zero_is_background():
    low_res = _blobby(4, 32, seed=9)
    low_res[2] = low_res[0]  # exact ties everywhere between objects 0 and 2: 0 wins
    low_res[3] = torch.where(low_res[1] > 0, low_res[1], torch.zeros(()))  # 0 exactly where 1 is not > 0
    low_res[3, :4] = 0.0
    for tile_bytes in (32 * 2**20, 5_000, 1):
        _check_labels(low_res, [10, 20, 30, 40], (96, 80), np.uint16, tile_bytes)
    labels = tiled_label_image(low_res, [10, 20, 30, 40], (96, 80), np.uint16)
    assert 30 not in labels and 10 in labels
    zeros = torch.zeros(2, 32, 32)
    assert not tiled_label_image(zeros, [1, 2], (96, 80), np.uint16).any()


def test_absent_objects_and_no_objects():
    low_res = torch.cat([_blobby(2, 32, seed=4), torch.full((3, 32, 32), -1024.0)])
    _check_labels(low_res, [1, 2, 3, 4, 5], (96, 80), np.uint8, 32 * 2**20)
    labels = tiled_label_image(low_res, [1, 2, 3, 4, 5], (96, 80), np.uint8)
    assert set(np.unique(labels)) <= {0, 1, 2}
    empty = tiled_label_image(torch.zeros(0, 32, 32), [], (96, 80), np.uint16)
    assert empty.shape == (96, 80) and empty.dtype == np.uint16 and not empty.any()
    with pytest.raises(ValueError, match="n_objects = 2"):
        tiled_label_image(torch.zeros(3, 32, 32), [1, 2], (96, 80), np.uint16)


def test_large_ids_and_dtypes():
    low_res = _blobby(3, 32, seed=5)
    ids = [70_000, 3, 4_000_000_000]
    _check_labels(low_res, ids, (96, 80), np.uint32, 32 * 2**20)
    _check_labels(low_res, ids, (96, 80), np.int64, 32 * 2**20)


def test_row_tiles_cover_the_live_rows_within_the_budget():
    rng = np.random.default_rng(0)
    live = np.zeros((30, 500), dtype=bool)
    for i in range(30):  # an object on a band of rows, two of them absent
        if i not in (7, 8):
            top = int(rng.integers(0, 450))
            live[i, top:top + int(rng.integers(1, 60))] = True
    row_bytes, budget = 1000, 200_000
    tiles = list(row_tiles(live, row_bytes, budget))
    covered = np.zeros_like(live)
    last = 0
    for top, bottom, objects in tiles:
        assert last <= top < bottom and (np.diff(objects) > 0).all() and len(objects) > 0
        assert len(objects) * (bottom - top) * row_bytes <= budget or bottom - top <= 8
        assert live[objects, top:bottom].any(axis=1).all()  # every member is live somewhere in its tile
        covered[objects, top:bottom] = True
        last = bottom
    assert (covered >= live).all()  # every live (object, row) is in a tile that computes it
    assert not any(7 in objects or 8 in objects for _, _, objects in tiles)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_all_objects_at_frame_resolution():
    n, frame_shape, tile_bytes = 40, (512, 512), 2 * 2**20
    low_res = _blobby(n, 64, seed=6, offset=2.0)  # large objects: every one is live on most rows
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiles in this thread (dispatch modes are per thread)
    try:
        with _LargestTensor() as mode:
            tiled_label_image(low_res, list(range(1, n + 1)), frame_shape, np.uint16, tile_bytes=tile_bytes)
    finally:
        torch.set_num_threads(before)
    dense = n * frame_shape[0] * frame_shape[1]
    print(f"largest tensor: {mode.largest} elements ({mode.largest / dense:.2%} of the dense logits)")
    assert mode.largest <= max(tile_bytes // 4 * 1.25, frame_shape[0] * frame_shape[1])


# ----------------------------------------------------------------------------------------------- session
@pytest.fixture(scope="module", params=[(96, 80), (300, 257)], ids=["frame 96x80", "frame 300x257"])
def session(request):
    session = TrackingSession(small_model(), cells_movie(4, shape=request.param))
    height, width = request.param
    session.add_points(0, 3, [(height * 0.3, width * 0.3)], [1])
    session.add_box(0, 1, (height * 0.5, width * 0.5, height * 0.8, width * 0.85))
    session.add_points(1, 2, [(height * 0.6, width * 0.6)], [1])
    session.add_points(0, 70_000, [(height * 0.4, width * 0.35)], [1])  # overlaps object 3: uint32 labels
    list(session.propagate(max_frames=2))
    return session


def test_session_label_image_equals_labels_from_frame_logits(session):
    assert session.label_dtype == np.uint32
    for frame in range(4):  # frame 3: no results
        labels = session.label_image(frame)
        ids, logits = session.frame_logits(frame)
        expected = labels_from_logits(ids, logits, dtype=session.label_dtype)
        assert labels.dtype == session.label_dtype and labels.shape == session.frame_shape
        assert int((labels != expected).sum()) == 0, frame
    assert not session.label_image(3).any()
    assert len(np.unique(session.label_image(1))) >= 4  # real overlaps are resolved, not a trivial image


def test_runtime_label_image_checks_its_arguments(session):
    with pytest.raises(ValueError, match="3 results for 2 object ids"):
        session._runtime.label_image([None, None, None], [1, 2], np.uint16)
    assert not session._runtime.label_image([None, None], [1, 2], np.uint16).any()
