"""Unit tests for napari_sam2.engine.frames: lazy frame access and intensity mapping."""

import numpy as np
import pytest
import torch
from lazy_frames import LazyFrames

from napari_sam2.engine.frames import FrameError, FrameSource, IntensityMapping

MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
STD = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]


def _movie(t=4, y=6, x=5, seed=0, high=256, dtype=np.uint8):
    """Random (T, Y, X) movie of ``dtype`` with values in [0, high)."""
    return np.random.default_rng(seed).integers(0, high, size=(t, y, x)).astype(dtype)


# --------------------------------------------------------------------------- exact 8-bit path

def test_uint8_rgb_model_input_is_exact_imagenet_normalisation():
    """8-bit RGB at S x S with limits (0, 255): x / 255 in float64, then float32 ImageNet normalisation."""
    size = 16
    data = np.random.default_rng(1).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    data[1, 0, 0] = (0, 128, 255)
    src = FrameSource(data, contrast_limits=(0, 255))
    for t in range(2):
        got = src.model_input(t, size)
        scaled = torch.from_numpy((data[t].astype(np.float64) / 255.0).astype(np.float32))
        expected = ((scaled.permute(2, 0, 1)[None]) - MEAN) / STD
        assert got.shape == (1, 3, size, size)
        assert got.dtype == torch.float32
        assert torch.equal(got, expected)


def test_normalized_uint8_grey_is_three_equal_channels():
    """Grey frames become (Y, X, 3) float32 with identical channels equal to x / 255."""
    data = _movie()
    src = FrameSource(data, contrast_limits=(0, 255))
    out = src.normalized(2)
    assert out.shape == (6, 5, 3) and out.dtype == np.float32
    expected = (data[2].astype(np.float64) / 255).astype(np.float32)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


# --------------------------------------------------------------------------- 16-bit and dtypes

def test_uint16_not_clipped_with_full_range_limits():
    """Values above 255 keep their order and distinctness with contrast limits (0, 65535)."""
    data = np.zeros((1, 2, 3), dtype=np.uint16)
    data[0] = [[0, 300, 3000], [60000, 65535, 256]]
    out = FrameSource(data, contrast_limits=(0, 65535)).normalized(0)[..., 0]
    np.testing.assert_allclose(out, data[0] / 65535.0, rtol=1e-6, atol=0)
    assert out[0, 0] < out[1, 2] < out[0, 1] < out[0, 2] < out[1, 0] < out[1, 1] == 1.0
    assert len(np.unique(out)) == 6


def test_uint16_default_percentiles_use_unit_range():
    """Default robust percentiles on a 16-bit movie spread it over [0, 1] (not saturated, not squashed)."""
    rng = np.random.default_rng(2)
    data = rng.integers(1000, 60000, size=(5, 40, 40)).astype(np.uint16)
    src = FrameSource(data)
    assert src.mapping.low > 255 and src.mapping.high > 255
    lo, hi = np.percentile(data.astype(np.float64), (0.5, 99.5))
    assert src.mapping.low == pytest.approx(lo, rel=0.02)
    assert src.mapping.high == pytest.approx(hi, rel=0.02)
    out = np.stack([src.normalized(t) for t in range(5)])
    assert out.min() == 0.0 and out.max() == 1.0
    # the bulk of the pixels lie strictly inside (0, 1): not saturated
    inside = np.mean((out > 0) & (out < 1))
    assert inside > 0.95
    assert 0.4 < out.mean() < 0.6


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64, np.uint8])
def test_grey_dtypes_with_limits(dtype):
    """Integer and float grey stacks map by (x - low) / (high - low), clipped."""
    data = np.array([[[0, 10], [20, 30]], [[40, 50], [60, 70]]], dtype=dtype)
    src = FrameSource(data, contrast_limits=(10, 60))
    for t in range(2):
        out = src.normalized(t)
        expected = np.clip((data[t].astype(np.float64) - 10) / 50, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(out[..., 0], expected)
        np.testing.assert_array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64, np.uint8])
def test_grey_dtypes_default_percentiles(dtype):
    """Default percentiles on each dtype give a finite [0, 1] frame with the full range used."""
    data = (np.arange(3 * 8 * 8).reshape(3, 8, 8) % 97).astype(dtype)
    src = FrameSource(data)
    out = src.model_input(1, 8)
    assert out.shape == (1, 3, 8, 8) and torch.isfinite(out).all()
    norm = np.stack([src.normalized(t) for t in range(3)])
    assert norm.min() == 0.0 and norm.max() == 1.0


def test_bool_input():
    """Bool stacks map False -> 0 and True -> 1 (default mapping and explicit limits)."""
    data = np.zeros((2, 4, 4), dtype=bool)
    data[0, 1:3, 1:3] = True
    data[1, 0, :] = True
    for src in (FrameSource(data), FrameSource(data, contrast_limits=(0, 1))):
        assert src.mapping == IntensityMapping(0.0, 1.0)
        for t in range(2):
            np.testing.assert_array_equal(src.normalized(t)[..., 0], data[t].astype(np.float32))


def test_negative_floats_with_limits():
    """Negative float intensities map correctly with negative contrast limits."""
    data = np.array([[[-2.0, -1.0], [0.0, 1.0]]], dtype=np.float32)
    out = FrameSource(data, contrast_limits=(-1.0, 1.0)).normalized(0)[..., 0]
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0]], atol=0)


def test_flat_image_no_division_by_zero():
    """A constant movie gives finite output (no NaN from a zero span)."""
    for value, dtype in ((7, np.uint16), (0.25, np.float32), (0, np.uint8)):
        data = np.full((3, 5, 5), value, dtype=dtype)
        src = FrameSource(data)
        assert src.mapping.high > src.mapping.low
        out = src.normalized(0)
        assert np.isfinite(out).all()
        assert np.all(out == out.flat[0])
        assert torch.isfinite(src.model_input(2, 8)).all()


# --------------------------------------------------------------------------- one mapping for all frames

def test_same_mapping_for_every_frame():
    """A frame twice as bright gives twice the normalised value (no per-frame normalisation)."""
    base = np.random.default_rng(3).integers(100, 1000, size=(16, 16)).astype(np.uint16)
    data = np.stack([base, base, 2 * base, base])
    src = FrameSource(data, contrast_limits=(0, 4000))
    np.testing.assert_allclose(src.normalized(2), 2 * src.normalized(0), rtol=1e-6)

    # default percentiles: the same mapping too, so frame 2 is brighter wherever not clipped
    src = FrameSource(data)
    f0, f2 = src.normalized(0), src.normalized(2)
    assert not np.array_equal(f0, f2)
    low, high = src.mapping.low, src.mapping.high
    expected0 = np.clip((base - low) / (high - low), 0, 1)
    expected2 = np.clip((2.0 * base - low) / (high - low), 0, 1)
    np.testing.assert_allclose(f0[..., 0], expected0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(f2[..., 0], expected2, rtol=1e-6, atol=1e-7)
    assert f2.mean() > f0.mean() + 0.1


def test_mapping_estimated_from_at_most_eight_frames_and_one_read_per_frame():
    """Construction reads <= 8 frames of a 100-frame movie; each later frame access reads one frame."""
    lazy = LazyFrames(_movie(t=100, y=4, x=4))
    src = FrameSource(lazy)
    assert 1 <= src.reads <= 8
    assert src.reads == len(lazy.reads)
    assert len(set(lazy.reads)) == len(lazy.reads)
    assert lazy.reads[0] == 0 and lazy.reads[-1] == 99  # evenly spaced, ends included
    before = src.reads
    src.normalized(42)
    assert src.reads == before + 1 and lazy.reads[-1] == 42
    src.model_input(57, 8)
    assert src.reads == before + 2 and lazy.reads[-1] == 57

    # with explicit contrast limits nothing is read at construction
    lazy2 = LazyFrames(_movie(t=100, y=4, x=4))
    src2 = FrameSource(lazy2, contrast_limits=(0, 255))
    assert src2.reads == 0 and lazy2.reads == []


def test_few_frames_sample_all():
    """A movie shorter than 8 frames samples each frame once."""
    lazy = LazyFrames(_movie(t=3))
    src = FrameSource(lazy)
    assert sorted(lazy.reads) == [0, 1, 2] and src.reads == 3


# --------------------------------------------------------------------------- lazy array types

def test_lazy_array_like_never_materialised():
    """A custom array-like with only integer indexing works and matches numpy."""
    data = _movie(t=5, high=4000, dtype=np.uint16)
    lazy = LazyFrames(data)
    src, ref = FrameSource(lazy), FrameSource(data)
    assert src.mapping == ref.mapping
    for t in range(5):
        np.testing.assert_array_equal(src.normalized(t), ref.normalized(t))
    assert torch.equal(src.model_input(3, 8), ref.model_input(3, 8))


class SliceRecorder:
    """Backing store for dask that records which frames each read touches."""

    def __init__(self, data):
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads = []

    def __getitem__(self, key):
        out = self._data[key]
        first = key[0] if isinstance(key, tuple) else key
        frames = range(self.shape[0])[first] if isinstance(first, slice) else [first]
        if len(frames):
            self.reads.append(list(frames))
        return out


def test_dask_matches_numpy_and_computes_per_frame():
    """dask arrays chunked per frame give numpy's results and compute only the frame asked for."""
    da = pytest.importorskip("dask.array")
    data = _movie(t=6, y=8, x=7, high=5000, dtype=np.uint16)
    store = SliceRecorder(data)
    arr = da.from_array(store, chunks=(1, 8, 7), asarray=True)
    ref = FrameSource(data)
    src = FrameSource(arr)
    assert src.mapping == ref.mapping
    store.reads.clear()
    for t in range(6):
        np.testing.assert_array_equal(src.normalized(t), ref.normalized(t))
        assert store.reads and all(r == [t] for r in store.reads)
        store.reads.clear()


def _zarr_array(data, path):
    zarr = pytest.importorskip("zarr")
    chunks = (1,) + data.shape[1:]
    if hasattr(zarr, "create_array"):  # zarr 3
        z = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    else:  # zarr 2
        z = zarr.open(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype)
    z[:] = data
    return z


@pytest.mark.parametrize("kind", ["zarr", "memmap", "dask"])
def test_array_backends_match_numpy(kind, tmp_path):
    """zarr, numpy memmap and dask stacks give exactly numpy's normalised frames and model input."""
    data = _movie(t=5, y=9, x=11, high=40000, dtype=np.uint16)
    if kind == "zarr":
        arr = _zarr_array(data, tmp_path / "movie.zarr")
    elif kind == "memmap":
        arr = np.memmap(tmp_path / "movie.raw", dtype=data.dtype, mode="w+", shape=data.shape)
        arr[:] = data
        arr.flush()
        arr = np.memmap(tmp_path / "movie.raw", dtype=data.dtype, mode="r", shape=data.shape)
    else:
        da = pytest.importorskip("dask.array")
        arr = da.from_array(data, chunks=(1, 9, 11))
    ref, src = FrameSource(data), FrameSource(arr)
    assert src.shape == ref.shape == (5, 9, 11)
    assert src.mapping == ref.mapping
    for t in range(5):
        np.testing.assert_array_equal(src.normalized(t), ref.normalized(t))
    assert torch.equal(src.model_input(4, 16), ref.model_input(4, 16))
    assert src.reads == ref.reads


# --------------------------------------------------------------------------- channels

def test_rgb_stack():
    """(T, Y, X, 3) is colour by default: each channel mapped separately."""
    data = np.random.default_rng(4).integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    out = FrameSource(data, contrast_limits=(0, 255)).normalized(1)
    np.testing.assert_array_equal(out, (data[1].astype(np.float64) / 255).astype(np.float32))


def test_rgba_alpha_ignored():
    """(T, Y, X, 4) is RGBA; alpha does not affect the output."""
    data = np.random.default_rng(5).integers(0, 256, size=(2, 5, 6, 4), dtype=np.uint8)
    other = data.copy()
    other[..., 3] = 255 - other[..., 3]
    a = FrameSource(data, contrast_limits=(0, 255))
    b = FrameSource(other, contrast_limits=(0, 255))
    np.testing.assert_array_equal(a.normalized(0), (data[0, ..., :3] / 255).astype(np.float32))
    np.testing.assert_array_equal(a.normalized(0), b.normalized(0))
    # default percentiles ignore alpha as well
    np.testing.assert_array_equal(FrameSource(data).normalized(1), FrameSource(other).normalized(1))


def test_multichannel_needs_channel():
    """(T, Y, X, 5) without channel is refused with a message about 'channel'."""
    data = np.zeros((2, 4, 4, 5), dtype=np.uint16)
    with pytest.raises(FrameError, match="channel"):
        FrameSource(data)


def test_multichannel_channel_equals_grey_path():
    """channel=2 on (T, Y, X, 5) gives the same result as the (T, Y, X) stack of that channel."""
    data = np.random.default_rng(6).integers(0, 5000, size=(3, 6, 7, 5)).astype(np.uint16)
    src = FrameSource(data, channel=2)
    grey = FrameSource(np.ascontiguousarray(data[..., 2]))
    assert src.mapping == grey.mapping
    for t in range(3):
        np.testing.assert_array_equal(src.normalized(t), grey.normalized(t))
    # and a different channel gives a different result
    assert not np.array_equal(FrameSource(data, channel=0).normalized(0), src.normalized(0))


@pytest.mark.parametrize("channel", [5, -1, 1.0, True])
def test_channel_out_of_range_or_not_int(channel):
    """A channel outside 0..C-1 (or not an integer) is refused."""
    with pytest.raises(FrameError, match="channel"):
        FrameSource(np.zeros((2, 4, 4, 5), dtype=np.uint8), channel=channel)


def test_rgb_true_on_grey_stack_refused():
    """rgb=True on (T, Y, X) is refused."""
    with pytest.raises(FrameError, match="rgb"):
        FrameSource(np.zeros((2, 4, 4), dtype=np.uint8), rgb=True)


def test_rgb_true_with_wrong_channel_count_refused():
    """rgb=True on a last axis of size other than 3 or 4 is refused."""
    with pytest.raises(FrameError):
        FrameSource(np.zeros((2, 4, 4, 5), dtype=np.uint8), rgb=True)


def test_channel_on_grey_stack_refused():
    """channel on a (T, Y, X) stack is refused."""
    with pytest.raises(FrameError, match="channel"):
        FrameSource(np.zeros((2, 4, 4), dtype=np.uint8), channel=0)


def test_single_channel_axis():
    """(T, Y, X, 1) is treated as grey."""
    data = _movie(t=3, y=5, x=5)
    src = FrameSource(data[..., None], contrast_limits=(0, 255))
    ref = FrameSource(data, contrast_limits=(0, 255))
    out = src.normalized(1)
    assert out.shape == (5, 5, 3)
    np.testing.assert_array_equal(out, ref.normalized(1))


def test_rgb_false_on_three_channels_needs_channel():
    """rgb=False on (T, Y, X, 3) treats the axis as channels, so a channel must be chosen."""
    data = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(FrameError, match="channel"):
        FrameSource(data, rgb=False)
    assert FrameSource(data, rgb=False, channel=1).normalized(0).shape == (4, 4, 3)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("shape", [(8, 8), (2, 3, 4, 5, 3), (5,)])
def test_wrong_ndim_mentions_axis_order(shape):
    """Stacks that are not 3-D or 4-D are refused with the expected axis order in the message."""
    with pytest.raises(FrameError, match=r"\(T, Y, X\)"):
        FrameSource(np.zeros(shape, dtype=np.uint8))


def test_no_shape_refused():
    """Objects without a shape are refused."""
    with pytest.raises(FrameError):
        FrameSource([[[1, 2], [3, 4]]])


@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 1, 4), (2, 4, 1)])
def test_empty_or_tiny_refused(shape):
    """Empty stacks or frames smaller than 2 x 2 are refused."""
    with pytest.raises(FrameError):
        FrameSource(np.zeros(shape, dtype=np.uint8), contrast_limits=(0, 1))


@pytest.mark.parametrize("index", [4, 100, -1, 1.0, "1", None, True, np.float64(2)])
def test_bad_frame_index(index):
    """Out-of-range, negative or non-integer frame indices are refused, without reading."""
    src = FrameSource(_movie(t=4), contrast_limits=(0, 255))
    with pytest.raises(FrameError, match="frame index"):
        src.normalized(index)
    with pytest.raises(FrameError):
        src.model_input(index, 8)
    assert src.reads == 0


def test_numpy_integer_index_accepted():
    """numpy integers are valid frame indices."""
    data = _movie(t=4)
    src = FrameSource(data, contrast_limits=(0, 255))
    np.testing.assert_array_equal(src.normalized(np.int64(3)), src.normalized(3))
    assert src.check_index(np.uint8(2)) == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_frame_refused_naming_it(bad):
    """A NaN/inf frame raises a FrameError naming that frame; other frames still read fine."""
    data = np.random.default_rng(7).random((4, 5, 5)).astype(np.float32)
    data[2, 1, 1] = bad
    src = FrameSource(data)  # construction (sampling the bad frame too) must not fail
    assert np.isfinite(src.mapping.low) and np.isfinite(src.mapping.high)
    with pytest.raises(FrameError, match="frame 2"):
        src.normalized(2)
    with pytest.raises(FrameError, match="frame 2"):
        src.model_input(2, 8)
    for t in (0, 1, 3):
        assert np.isfinite(src.normalized(t)).all()


def test_all_nan_sample_refused():
    """If the sampled frames hold no finite value the mapping cannot be estimated."""
    data = np.full((2, 4, 4), np.nan, dtype=np.float32)
    with pytest.raises(FrameError, match="contrast_limits"):
        FrameSource(data)
    # with explicit limits the construction works, but reading refuses the frame
    src = FrameSource(data, contrast_limits=(0, 1))
    with pytest.raises(FrameError, match="frame 0"):
        src.normalized(0)


@pytest.mark.parametrize("limits", [(10, 10), (20, 10), (np.nan, 10), (0, np.nan), (0, np.inf)])
def test_bad_contrast_limits(limits):
    """Contrast limits with low >= high or non-finite values are refused."""
    with pytest.raises(FrameError, match="contrast_limits"):
        FrameSource(_movie(), contrast_limits=limits)


@pytest.mark.parametrize("dtype", ["<U3", object, np.complex64])
def test_non_numeric_dtype_refused(dtype):
    """String, object and complex stacks are refused."""
    with pytest.raises(FrameError, match="dtype"):
        FrameSource(np.zeros((2, 4, 4), dtype=dtype), contrast_limits=(0, 1))


# --------------------------------------------------------------------------- resizing

@pytest.mark.parametrize("size", [64, 32])
def test_resize_to_square_stays_in_normalised_range(size):
    """A 100 x 150 frame becomes (1, 3, S, S) with values inside the normalised image of [0, 1]."""
    data = np.random.default_rng(8).integers(0, 256, size=(2, 100, 150, 3), dtype=np.uint8)
    data[0, :10, :10] = 0
    data[0, -10:, -10:] = 255
    src = FrameSource(data, contrast_limits=(0, 255))
    out = src.model_input(0, size)
    assert out.shape == (1, 3, size, size) and out.dtype == torch.float32
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    eps = 1e-5
    assert (out >= low - eps).all() and (out <= high + eps).all()
    # near-black and near-white corners survive resizing
    assert torch.allclose(out[0, :, 0, 0], low[:, 0, 0], atol=1e-4)
    assert torch.allclose(out[0, :, -1, -1], high[:, 0, 0], atol=1e-4)


def test_resize_of_constant_frame_is_constant():
    """Resizing a uniform grey frame keeps the same value everywhere (bilinear resize is an average)."""
    data = np.full((1, 100, 150), 51, dtype=np.uint8)
    out = FrameSource(data, contrast_limits=(0, 255)).model_input(0, 64)
    expected = (torch.tensor(0.2, dtype=torch.float32) - MEAN) / STD
    assert torch.allclose(out[0], expected.expand(3, 64, 64), atol=1e-6)


def test_shape_property():
    """shape reports (T, Y, X) whatever the channel axis."""
    src = FrameSource(np.zeros((3, 5, 7, 4), dtype=np.uint8), contrast_limits=(0, 1))
    assert src.shape == (3, 5, 7)
    assert (src.num_frames, src.height, src.width) == (3, 5, 7)
