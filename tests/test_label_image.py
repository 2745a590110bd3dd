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
from napari_sam2.engine.compact_logits import CompactLogits
from napari_sam2.engine.frames import FrameSource
from napari_sam2.engine.label_tiles import (
    TileResampler,
    axis_weights,
    check_window,
    output_span,
    reaches,
    row_tiles,
    source_span,
    tiled_label_image,
)
from napari_sam2.engine.object_state import FrameResult
from napari_sam2.engine.runtime import ModelRuntime
from napari_sam2.engine.storage import Storage


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


def test_session_label_image_window_and_object_box(session):
    height, width = session.frame_shape
    rng = np.random.default_rng(3)
    for frame in range(4):
        whole = session.label_image(frame)
        for _ in range(6):
            (row0, row1), (col0, col1) = np.sort(rng.integers(0, height + 1, 2)), np.sort(rng.integers(0, width + 1, 2))
            part = session.label_image(frame, window=(row0, col0, row1, col1))
            assert part.dtype == whole.dtype
            np.testing.assert_array_equal(part, whole[row0:row1, col0:col1])
        ids, logits = session.frame_logits(frame)
        for obj_id, plane in zip(ids, logits, strict=True):
            box = session.object_box(frame, obj_id)
            positive = plane > 0
            if box is None:
                assert not positive.any()
                continue
            outside = positive.copy()
            outside[box[0]:box[2], box[1]:box[3]] = False
            assert not outside.any() and positive.any(), (frame, obj_id, box)
    assert session.object_box(3, 1) is None  # no result on frame 3
    for frame in range(3):  # a label image of some objects: as if the others were not there
        ids, logits = session.frame_logits(frame, [70_000, 1])
        expected = labels_from_logits([1, 70_000], logits[::-1], dtype=session.label_dtype)  # in the session's order
        np.testing.assert_array_equal(session.label_image(frame, obj_ids=[70_000, 1]), expected)
        np.testing.assert_array_equal(session.label_image(frame, (10, 5, 60, 40), obj_ids=[1, 70_000]),
                                      expected[10:60, 5:40])
    with pytest.raises(ValueError, match="unknown object id 99"):
        session.label_image(0, obj_ids=[1, 99])
    with pytest.raises(ValueError, match="unknown object id 99"):
        session.object_box(0, 99)
    with pytest.raises(ValueError, match="not within the"):
        session.label_image(0, window=(0, 0, height + 1, 4))


@pytest.mark.parametrize("window", [(0, 0), (1, 2, 3), (0, 0, 5.0, 5), (3, 0, 2, 5), (-1, 0, 4, 4), "abcd", 7,
                                    (True, 0, 4, 4)])
def test_bad_windows_are_one_line_errors(window):
    with pytest.raises(ValueError) as error:
        check_window(window, (96, 80))
    assert "\n" not in str(error.value)


def test_window_spans_are_what_the_resampling_reads():
    for src, dst in ((32, 96), (64, 257), (128, 1000), (128, 100), (5, 17)):
        w = axis_weights(src, dst)
        for start, stop in ((0, dst), (0, 1), (dst - 1, dst), (dst // 3, dst // 2 + 1)):
            lo, hi = source_span(w, start, stop)
            read = np.concatenate([w.first[start:stop], w.second[start:stop]])
            assert lo == read.min() and hi == read.max() + 1
        for lo, hi in ((0, 1), (src - 1, src), (src // 2, src // 2 + 2), (0, src)):
            start, stop = output_span(w, lo, hi)
            reading = np.flatnonzero(((w.first >= lo) & (w.first < hi)) | ((w.second >= lo) & (w.second < hi)))
            assert (start, stop) == (int(reading[0]), int(reading[-1]) + 1)
            assert reading.size == stop - start  # contiguous


@pytest.mark.parametrize("side,frame_shape", [(32, (96, 80)), (64, (300, 257)), (32, (20, 17)), (64, (41, 200))])
def test_windows_of_tiled_label_image_equal_the_whole_image(side, frame_shape):
    low_res = _blobby(12, side, seed=side + 2)
    ids = [5, 3, 9, 1, 2, 7, 11, 4, 6, 8, 10, 12]
    whole = tiled_label_image(low_res, ids, frame_shape, np.uint16)
    height, width = frame_shape
    rng = np.random.default_rng(side)
    windows = [(0, 0, height, width), (0, 0, 1, 1), (height - 1, width - 1, height, width), (0, 0, 0, width),
               (2, 3, 2, 9), (0, width - 3, height, width)]
    for _ in range(20):
        (row0, row1), (col0, col1) = np.sort(rng.integers(0, height + 1, 2)), np.sort(rng.integers(0, width + 1, 2))
        windows.append((int(row0), int(col0), int(row1), int(col1)))
    for window in windows:
        for tile_bytes in (None, 3_000):
            part = tiled_label_image(low_res, ids, frame_shape, np.uint16, tile_bytes=tile_bytes, window=window)
            np.testing.assert_array_equal(part, whole[window[0]:window[2], window[1]:window[3]], err_msg=str(window))


# ------------------------------------------------------------------------------------- windows of many stored results
def _runtime(frame_shape: tuple[int, int], side: int, fill_hole_area: int = 8) -> ModelRuntime:
    """A ModelRuntime of a one-frame movie for a model of input 4 x ``side`` (no model runs)."""

    class NoModel:
        image_size = 4 * side

    source = FrameSource(np.zeros((1, *frame_shape), dtype=np.uint8), contrast_limits=(0, 255))
    cpu = torch.device("cpu")
    return ModelRuntime(NoModel(), source, cpu, Storage(cpu, None), "fp32", fill_hole_area=fill_hole_area,
                        feature_cache_size=1, prefetch_frames=0)


def _cells(n: int, side: int, seed: int) -> list[FrameResult | None]:
    """``n`` stored results like the model's cells on a ``side`` x ``side`` map: discs and rings (holes that hole
    filling closes, some larger ones it does not), overlapping, kept in both compact forms; plus absent objects,
    missing results, one object positive everywhere and one at a corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    results: list[FrameResult | None] = []
    for i in range(n):
        cy, cx = rng.uniform(-2, side + 2, 2)
        radius = rng.uniform(1.5, side / 8)
        distance = np.hypot(yy - cy, xx - cx)
        logits = np.where(distance <= radius, rng.uniform(1, 12), -rng.uniform(8, 60) - distance)
        logits = (logits + rng.normal(0, 0.5, logits.shape)).astype(np.float32)
        if i % 3 == 0:  # a hole of 1..12 pixels (at most 8 are filled)
            hole = distance <= rng.uniform(0.5, 2.0)
            logits[hole] = -3.0
        if i % 7 == 1:  # the constant-outside form: a mask prompt's -10 outside
            logits = np.where(distance <= radius, logits, np.float32(-10.0))
        results.append(FrameResult(torch.from_numpy(logits)[None, None], torch.zeros(1, 256), torch.ones(1, 1), False))
    results[1] = FrameResult(torch.full((1, 1, side, side), -1024.0), torch.zeros(1, 256), torch.ones(1, 1), False)
    results[4] = None
    everywhere = torch.full((1, 1, side, side), 0.25)
    everywhere[0, 0, side // 2, : side // 3] = 3.0
    results[6] = FrameResult(everywhere, torch.zeros(1, 256), torch.ones(1, 1), False)
    corner = torch.full((1, 1, side, side), -20.0)
    corner[0, 0, :2, :3] = 40.0  # an L of positives around a one-pixel hole at the map's corner
    corner[0, 0, 0, 0] = -1.0
    results[8] = FrameResult(corner, torch.zeros(1, 256), torch.ones(1, 1), True)
    return results


@pytest.mark.parametrize(("frame_shape", "side", "fill"), [((300, 257), 64, 8), ((1000, 1333), 128, 8),
                                                          ((97, 80), 32, 0), ((250, 250), 64, 30)])
def test_windows_with_many_objects_and_hole_filling_equal_the_whole_label_image(frame_shape, side, fill):
    runtime = _runtime(frame_shape, side, fill)
    results = _cells(150, side, seed=side + fill)
    assert any(r is not None and r.compact_logits.fill == -10.0 for r in results)  # both compact forms occur
    ids = list(range(2, 2 + len(results)))
    whole = runtime.label_image(results, ids, np.uint16)
    expected = labels_from_logits(ids, runtime.frame_logits(results), dtype=np.uint16)
    np.testing.assert_array_equal(whole, expected)
    assert len(np.unique(whole)) > 40 and ids[6] in whole and ids[8] in whole
    if fill:  # hole filling changed something (else this would not test it)
        assert (runtime.frame_logits(results) == np.float32(0.1)).any()
    height, width = frame_shape
    rng = np.random.default_rng(1)
    windows = [(0, 0, height, width), (0, 0, 3, 3), (height - 2, 0, height, width), (0, width - 1, height, width),
               (5, 5, 5, 50)]
    for _ in range(40):
        row0, col0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        size = int(rng.integers(1, max(height, width) // 3))
        windows.append((row0, col0, min(row0 + size, height), min(col0 + int(rng.integers(1, size + 1)), width)))
    for window in windows:
        part = runtime.label_image(results, ids, np.uint16, window=window)
        np.testing.assert_array_equal(part, whole[window[0]:window[2], window[1]:window[3]], err_msg=str(window))


def test_a_small_window_reads_only_the_objects_that_reach_it(monkeypatch):
    frame_shape, side = (512, 512), 128
    runtime = _runtime(frame_shape, side)
    results = _cells(300, side, seed=5)
    ids = list(range(1, 301))
    stacked = []
    original = runtime._filled_stack
    monkeypatch.setattr(runtime, "_filled_stack", lambda stored: stacked.append(len(stored)) or original(stored))
    whole = runtime.label_image(results, ids, np.uint16)
    part = runtime.label_image(results, ids, np.uint16, window=(200, 200, 240, 260))
    np.testing.assert_array_equal(part, whole[200:240, 200:260])
    assert stacked[0] == 298  # every result there but the absent object (and the missing one)
    assert stacked[1] < 50, stacked  # the objects whose crops reach the window (and the one positive everywhere)
    stored = [r.compact_logits for r in results if r is not None]
    assert reaches(stored, (0, 0, 0, 0), 8) == [False] * len(stored)


def test_reaches_reads_the_crop_near_the_region_and_the_fill():
    logits = [CompactLogits.of(torch.full((1, 1, 16, 16), -5.0)), CompactLogits.of(torch.full((1, 1, 16, 16), 1.0))]
    spot = torch.full((1, 1, 16, 16), -40.0)
    spot[0, 0, 10, 10] = 2.0
    logits.append(CompactLogits.of(spot))
    assert reaches(logits, (0, 0, 4, 4), 0) == [False, True, False]
    assert reaches(logits, (0, 0, 4, 4), 8) == [False, True, True]  # a hole next to (10, 10) could reach (3, 3)
    assert reaches(logits, (10, 10, 11, 11), 0) == [False, True, True]


@pytest.mark.parametrize("overhead", [0.0, float("inf")], ids=["always bands", "never bands"])
def test_bands_of_columns_give_the_same_labels(monkeypatch, overhead):
    from napari_sam2.engine import label_tiles

    monkeypatch.setattr(label_tiles, "BAND_OVERHEAD", overhead)
    monkeypatch.setattr(label_tiles, "BAND_COLUMNS", 48)
    low_res = _blobby(10, 64, seed=11, offset=-3.0)  # small blobs: each reaches a few bands
    ids = list(range(1, 11))
    for frame_shape in ((300, 257), (129, 1000)):
        _check_labels(low_res, ids, frame_shape, np.uint16, 32 * 2**20)
        _check_labels(low_res, ids, frame_shape, np.uint16, 20_000)
        whole = tiled_label_image(low_res, ids, frame_shape, np.uint16)
        part = tiled_label_image(low_res, ids, frame_shape, np.uint16, window=(7, 30, 120, 251))
        np.testing.assert_array_equal(part, whole[7:120, 30:251])
