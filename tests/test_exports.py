"""Exports: label TIFF, Cell Tracking Challenge results (scored by the independent py-ctcmetrics),
napari Tracks data. Label stacks are (T, Y, X), coordinates (row, col) = (y, x)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from ctc_support import score, write_gt
from lazy_frames import LazyFrames
from scipy import ndimage

from napari_sam2.exports import (
    CTCTrack,
    ctc_mask_name,
    label_dtype,
    tracks_from_labels,
    write_ctc,
    write_label_tiff,
)

T, H, W = 10, 64, 64
GONE = (4, 5)  # object 2 is absent on these frames and comes back on frame 6


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def make_stack() -> np.ndarray:
    """Discs: 1 moves right, 2 moves down (gone on GONE), 3 sits still, 7 appears on frame 3."""
    stack = np.zeros((T, H, W), np.uint16)
    for t in range(T):
        stack[t][_disc(12, 8 + 4 * t, 6)] = 1
        if t not in GONE:
            stack[t][_disc(8 + 4 * t, 50, 5)] = 2
        stack[t][_disc(50, 16, 7)] = 3
        if t >= 3:
            stack[t][_disc(48, 44, 5)] = 7
    return stack


def read_tracks(res: Path) -> list[tuple[int, ...]]:
    return [tuple(map(int, line.split())) for line in (res / "res_track.txt").read_text().splitlines()]


# --- label TIFF --------------------------------------------------------------------------------


def test_tiff_round_trip_uint16_axes_and_compression(tmp_path):
    stack = make_stack()
    path = write_label_tiff(tmp_path / "labels.tif", stack)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "TYX"
        assert len(tif.pages) == T
        assert tif.pages[0].compression != tifffile.COMPRESSION.NONE
        back = tif.asarray()
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, stack)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]  # no temp file left


def test_tiff_uint32_for_large_ids_and_other_axes(tmp_path):
    stack = make_stack().astype(np.int64)
    stack[stack == 3] = 70000
    assert label_dtype(stack) == np.uint32
    path = write_label_tiff(tmp_path / "vol.tif", stack, axes="ZYX")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "ZYX"
        back = tif.asarray()
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, stack)


def test_tiff_lazy_stack_read_once_per_frame(tmp_path):
    stack = make_stack()
    lazy = LazyFrames(stack)
    write_label_tiff(tmp_path / "lazy.tif", lazy)
    assert lazy.reads == list(range(T))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "lazy.tif"), stack)
    # a lazy stack is judged by its dtype alone
    assert label_dtype(LazyFrames(stack.astype(np.uint8))) == np.uint16
    assert label_dtype(LazyFrames(stack.astype(np.int32))) == np.uint32


def test_tiff_refuses_to_overwrite(tmp_path):
    path = tmp_path / "labels.tif"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_label_tiff(path, make_stack())
    assert path.read_bytes() == b"precious"
    write_label_tiff(path, make_stack(), overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(path), make_stack())


def test_tiff_rejects_negative_and_float(tmp_path):
    with pytest.raises(ValueError, match="non-negative"):
        write_label_tiff(tmp_path / "neg.tif", -make_stack().astype(np.int16))
    with pytest.raises(ValueError, match="integers"):
        write_label_tiff(tmp_path / "float.tif", make_stack().astype(np.float32))
    with pytest.raises(ValueError, match="no frames"):
        write_label_tiff(tmp_path / "empty.tif", np.zeros((0, 4, 4), np.uint16))
    # a lazy stack only shows negative values mid-write: nothing may be left behind
    bad = make_stack().astype(np.int16)
    bad[7, 0, 0] = -1
    with pytest.raises(ValueError, match="frame 7"):
        write_label_tiff(tmp_path / "lazy.tif", LazyFrames(bad))
    assert list(tmp_path.iterdir()) == []


# --- Cell Tracking Challenge ---------------------------------------------------------------------


def test_ctc_split_labels_and_masks(tmp_path):
    stack = make_stack()
    tracks = write_ctc(tmp_path / "res", stack)
    # object 2 comes back on frame 6 as a new track labelled above the largest id (7)
    assert read_tracks(tmp_path / "res") == [
        (1, 0, 9, 0), (2, 0, 3, 0), (3, 0, 9, 0), (7, 3, 9, 0), (8, 6, 9, 0)
    ]
    assert tracks[-1] == CTCTrack(label=8, begin=6, end=9, parent=0, obj_id=2)
    masks = [tifffile.imread(tmp_path / "res" / f"mask{t:03d}.tif") for t in range(T)]
    assert all(m.dtype == np.uint16 for m in masks)
    for t, m in enumerate(masks):
        expected = stack[t].copy()
        if t >= 6:
            expected[expected == 2] = 8
        np.testing.assert_array_equal(m, expected)


def test_ctc_scores_perfect_on_identical_result(tmp_path):
    stack = make_stack()
    write_gt(tmp_path / "01_GT", stack)
    write_ctc(tmp_path / "01_RES", stack)
    result = score(tmp_path / "01_RES", tmp_path / "01_GT")
    assert result["Valid"] == 1
    assert result["DET"] == 1.0 and result["SEG"] == 1.0 and result["TRA"] == 1.0


def test_ctc_link_gaps_is_valid(tmp_path):
    tracks = write_ctc(tmp_path / "res", make_stack(), link_gaps=True)
    assert tracks[-1].parent == 2
    write_gt(tmp_path / "gt", make_stack())
    assert score(tmp_path / "res", tmp_path / "gt")["Valid"] == 1


def _drop_object(stack):
    out = stack.copy()
    out[6:8][out[6:8] == 1] = 0
    return out


def _swap_ids(stack):
    out = stack.copy()
    later = out[5:]
    one, three = later == 1, later == 3
    later[one], later[three] = 3, 1
    return out


def _erode(stack):
    return np.stack([
        sum((ndimage.binary_erosion(f == i) * i).astype(f.dtype) for i in (1, 2, 3, 7))
        for f in stack
    ])


@pytest.mark.parametrize(
    ("perturb", "lower"),
    [(_drop_object, ("DET", "SEG", "TRA")), (_swap_ids, ("TRA",)), (_erode, ("SEG",))],
)
def test_ctc_scores_drop_on_perturbed_result(tmp_path, perturb, lower):
    stack = make_stack()
    write_gt(tmp_path / "gt", stack)
    write_ctc(tmp_path / "res", perturb(stack))
    result = score(tmp_path / "res", tmp_path / "gt")
    assert result["Valid"] == 1
    for metric in ("DET", "SEG", "TRA"):
        if metric in lower:
            assert result[metric] < 0.99, (metric, result)
        else:
            assert result[metric] == 1.0, (metric, result)


def test_ctc_lazy_reads_and_max_label(tmp_path):
    stack = make_stack()
    lazy = LazyFrames(stack)
    write_ctc(tmp_path / "a", lazy)
    assert lazy.reads == list(range(T)) * 2  # a cheap max pass, then the writing pass
    lazy = LazyFrames(stack)
    tracks = write_ctc(tmp_path / "b", lazy, max_label=20)
    assert lazy.reads == list(range(T))
    assert tracks[-1].label == 21
    with pytest.raises(ValueError, match="max_label"):
        write_ctc(tmp_path / "c", stack, max_label=5)


def test_ctc_refuses_existing_results_and_removes_stale_frames(tmp_path):
    res = tmp_path / "res"
    write_ctc(res, np.concatenate([make_stack(), make_stack()]))  # 20 frames
    before = {p.name: p.read_bytes() for p in res.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_ctc(res, make_stack())
    assert {p.name: p.read_bytes() for p in res.iterdir()} == before
    write_ctc(res, make_stack(), overwrite=True)
    assert sorted(p.name for p in res.iterdir()) == sorted(
        [f"mask{t:03d}.tif" for t in range(T)] + ["res_track.txt"]
    )


def test_ctc_labels_must_fit_uint16(tmp_path):
    big = make_stack().astype(np.int32)
    big[big == 3] = 70000
    with pytest.raises(ValueError, match="65535"):
        write_ctc(tmp_path / "a", big)
    # the reappearing object would need label 65536
    edge = make_stack().astype(np.int32)
    edge[edge == 1] = 65535
    with pytest.raises(ValueError, match="65535"):
        write_ctc(tmp_path / "b", edge)
    assert list((tmp_path / "b").iterdir()) == []  # nothing half-written


def test_ctc_mask_names():
    assert ctc_mask_name(7, 10) == "mask007.tif"
    assert ctc_mask_name(999, 1000) == "mask999.tif"
    assert ctc_mask_name(0, 1001) == "mask0000.tif"
    assert ctc_mask_name(1000, 1001) == "mask1000.tif"


def test_ctc_four_digit_names_when_over_1000_frames(tmp_path):
    stack = np.zeros((1001, 2, 2), np.uint8)
    stack[:, 0, 0] = 1
    write_ctc(tmp_path, stack)
    names = sorted(p.name for p in tmp_path.glob("mask*.tif"))
    assert names[0] == "mask0000.tif" and names[-1] == "mask1000.tif" and len(names) == 1001
    assert read_tracks(tmp_path) == [(1, 0, 1000, 0)]


# --- napari Tracks ---------------------------------------------------------------------------


def test_tracks_centroids_and_order():
    stack = make_stack()
    data = tracks_from_labels(stack)
    assert data.shape == (int(sum(len(np.unique(f)) - 1 for f in stack)), 4)
    assert data.dtype == float
    order = np.lexsort((data[:, 1], data[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(data)))
    # a symmetric disc's centroid is its centre, in (row, col) = (y, x)
    row = data[(data[:, 0] == 1) & (data[:, 1] == 2)][0]
    np.testing.assert_allclose(row[2:], (12, 16))
    row = data[(data[:, 0] == 2) & (data[:, 1] == 1)][0]
    np.testing.assert_allclose(row[2:], (12, 50))
    assert not ((data[:, 0] == 2) & np.isin(data[:, 1], GONE)).any()
    for obj, t, y, x in data[::7]:
        np.testing.assert_allclose((y, x), ndimage.center_of_mass(stack[int(t)] == obj))


def test_tracks_split_gaps_match_ctc_labels(tmp_path):
    stack = make_stack()
    lazy = LazyFrames(stack)
    data = tracks_from_labels(lazy, split_gaps=True)
    assert lazy.reads == list(range(T))
    tracks = write_ctc(tmp_path, stack)
    for track in tracks:
        times = data[data[:, 0] == track.label, 1]
        np.testing.assert_array_equal(times, np.arange(track.begin, track.end + 1))
    assert set(data[:, 0].astype(int)) == {k.label for k in tracks}
    # the same max_label gives the same ids as the CTC export
    assert set(tracks_from_labels(stack, split_gaps=True, max_label=20)[:, 0]) == {1, 2, 3, 7, 21}
    np.testing.assert_array_equal(tracks_from_labels(lazy), tracks_from_labels(stack))


def test_tracks_empty_stack():
    assert tracks_from_labels(np.zeros((3, 8, 8), np.uint16)).shape == (0, 4)
