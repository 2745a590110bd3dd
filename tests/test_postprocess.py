"""Unit tests for napari_sam2.engine.postprocess: hole filling and label images from logits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam2.engine.postprocess import HOLE_FILL_LOGIT, fill_holes, labels_from_logits

FG, BG = 4.0, -3.0


def _disc_with_holes(size=40):
    """(1, 1, H, W) logits: a foreground disc on background, with interior holes of 4, 8 and 9 pixels.

    Returns the logits and boolean masks (H, W) of the three holes.
    """
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= (size // 2 - 3) ** 2
    logits = np.where(disc, FG, BG).astype(np.float32)
    # some variation so that "unchanged" is meaningful
    logits += np.random.default_rng(0).uniform(0, 0.5, size=logits.shape).astype(np.float32)
    holes = {area: np.zeros((size, size), dtype=bool) for area in (4, 8, 9)}
    holes[4][12:14, 12:14] = True            # 2 x 2
    holes[8][12:14, 22:26] = True            # 2 x 4
    holes[9][24:27, 16:19] = True            # 3 x 3
    for mask in holes.values():
        assert disc[mask].all()
        logits[mask] = BG
    logits[13, 13] = 0.0  # a logit of exactly 0 is background too
    return torch.from_numpy(logits)[None, None], holes


# --------------------------------------------------------------------------- fill_holes

def test_fill_holes_fills_small_interior_holes_only():
    """Holes of area <= max_area become exactly 0.1; a larger hole and everything else stay."""
    logits, holes = _disc_with_holes()
    out = fill_holes(logits, max_area=8)
    assert out.shape == logits.shape and out.dtype == logits.dtype
    o, i = out[0, 0].numpy(), logits[0, 0].numpy()
    filled = holes[4] | holes[8]
    assert (o[filled] == np.float32(HOLE_FILL_LOGIT)).all()
    assert HOLE_FILL_LOGIT == 0.1
    np.testing.assert_array_equal(o[~filled], i[~filled])  # the 9-pixel hole and the outside unchanged
    assert (o[holes[9]] == BG).all()


def test_fill_holes_area_threshold_inclusive():
    """max_area=9 fills the 9-pixel hole as well; max_area=3 fills nothing."""
    logits, holes = _disc_with_holes()
    out = fill_holes(logits, max_area=9)[0, 0].numpy()
    for mask in holes.values():
        assert (out[mask] == np.float32(0.1)).all()
    assert torch.equal(fill_holes(logits, max_area=3), logits)


def test_fill_holes_uses_eight_connectivity():
    """Two 2x2 background blocks touching only at a corner are one 8-pixel component."""
    logits = torch.full((1, 1, 12, 12), FG)
    logits[0, 0, 3:5, 3:5] = BG
    logits[0, 0, 5:7, 5:7] = BG  # diagonal neighbour of (4, 4)
    # 8-connected: one component of area 8 > 5 -> kept; 4-connected would give two of area 4 -> filled
    assert torch.equal(fill_holes(logits, max_area=5), logits)
    out = fill_holes(logits, max_area=8)
    assert (out[0, 0, 3:7, 3:7][logits[0, 0, 3:7, 3:7] <= 0] == np.float32(0.1)).all()


def test_fill_holes_diagonal_link_to_outside_background():
    """A background pixel touching the large outer background only diagonally is part of it, not a hole."""
    logits = torch.full((1, 1, 12, 12), FG)
    logits[0, 0, :, :2] = BG          # large background strip on the left (24 pixels)
    logits[0, 0, 5, 3] = BG           # all 8 neighbours foreground: an isolated 1-pixel hole
    out = fill_holes(logits, max_area=4)
    assert out[0, 0, 5, 3] == np.float32(0.1)
    assert (out[0, 0, :, :2] == BG).all()
    # (4, 2) joins the strip (4-connected); (5, 3) now touches it diagonally only
    linked = logits.clone()
    linked[0, 0, 4, 2] = BG
    assert torch.equal(fill_holes(linked, max_area=4), linked)


def test_fill_holes_border_component_counts():
    """A small background region touching the image border is filled like any small component."""
    logits = torch.full((1, 1, 10, 10), FG)
    logits[0, 0, :2, :2] = BG   # 4 pixels in the corner
    logits[0, 0, 9, 4:7] = BG   # 3 pixels along the bottom edge
    out = fill_holes(logits, max_area=8)
    assert (out[0, 0, :2, :2] == np.float32(0.1)).all()
    assert (out[0, 0, 9, 4:7] == np.float32(0.1)).all()
    assert (out > 0).all()


def test_fill_holes_max_area_zero_unchanged():
    """max_area <= 0 returns the logits unchanged."""
    logits, _ = _disc_with_holes()
    for max_area in (0, -5):
        out = fill_holes(logits, max_area=max_area)
        assert torch.equal(out, logits)


def test_fill_holes_all_foreground_or_all_background():
    """No background -> unchanged; an all-background plane larger than max_area -> unchanged."""
    fg = torch.full((1, 1, 6, 6), 2.0)
    assert torch.equal(fill_holes(fg, 8), fg)
    bg = torch.full((1, 1, 6, 6), -2.0)
    assert torch.equal(fill_holes(bg, 8), bg)
    # but an all-background plane within max_area is one small component: filled
    assert (fill_holes(bg, 36) == np.float32(0.1)).all()


def test_fill_holes_batch_independent():
    """Each item of a (B, 1, H, W) batch is processed on its own."""
    a, _ = _disc_with_holes()
    b = torch.full_like(a, FG)
    b[..., 5:8, 5:8] = BG  # a 9-pixel hole, kept at max_area=8 ...
    b[..., 20:22, 20:21] = BG  # ... and a 2-pixel hole, filled
    c = torch.full_like(a, -1.0)  # all background: one large component, kept
    batch = torch.cat([a, b, c])
    out = fill_holes(batch, max_area=8)
    assert out.shape == (3, 1, 40, 40)
    for k, item in enumerate((a, b, c)):
        assert torch.equal(out[k:k + 1], fill_holes(item, max_area=8))
    assert (out[1, 0, 5:8, 5:8] == BG).all()
    assert (out[1, 0, 20:22, 20] == np.float32(0.1)).all()
    assert torch.equal(out[2], c[0])


def _plane_by_plane(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """The definition, one whole plane at a time: every 8-connected background component is labelled."""
    from scipy import ndimage

    planes = logits.reshape(-1, *logits.shape[-2:]).numpy()
    out = planes.copy()
    for plane, filled in zip(planes, out, strict=True):
        components, _ = ndimage.label(plane <= 0, structure=np.ones((3, 3), dtype=bool))
        small = np.bincount(components.ravel()) <= max_area
        small[0] = False
        filled[small[components]] = HOLE_FILL_LOGIT
    return torch.from_numpy(out.reshape(logits.shape))


def _many_planes(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(n, 1, H, W): small objects with holes anywhere (on borders and corners too), narrow and wide ones,
    absent objects (all -1024), all-foreground planes and smoothed noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    planes = np.full((n, height, width), -1024.0, dtype=np.float32)
    for i in range(n):
        kind = i % 5
        if kind == 1:  # an absent object
            continue
        if kind == 4:  # smoothed noise around 0
            noise = torch.from_numpy(rng.standard_normal((1, 1, height, width)).astype(np.float32))
            planes[i] = F.avg_pool2d(noise, 3, 1, 1)[0, 0].numpy() + rng.uniform(-0.3, 0.3)
            continue
        if kind == 3 and i % 2:  # foreground everywhere but a few pixels
            planes[i] = 2.0
        for _ in range(int(rng.integers(1, 4))):
            top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
            tall, wide = int(rng.integers(1, 12)), int(rng.integers(1, 12))
            planes[i, top:top + tall, left:left + wide] = rng.uniform(0.5, 3.0)
        holes = rng.random((height, width)) < 0.05  # specks of background (holes inside the objects)
        planes[i][holes] = -rng.uniform(0, 2)
    return torch.from_numpy(planes)[:, None]


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (6, 40), (3, 3)])
@pytest.mark.parametrize("max_area", [1, 8, 20])
def test_fill_holes_of_a_stack_equals_the_definition_plane_by_plane(size, max_area):
    """One call for a whole stack (windows around each plane's foreground) equals labelling every whole
    plane on its own, bit for bit, also where the side is at most max_area (whole planes are labelled)."""
    logits = _many_planes(60, size, seed=size[0] + max_area)
    out = fill_holes(logits, max_area)
    expected = _plane_by_plane(logits, max_area)
    assert torch.equal(out, expected)
    assert int((expected != logits).sum()) > 0
    for i in range(0, 60, 7):
        assert torch.equal(fill_holes(logits[i:i + 1], max_area), expected[i:i + 1])


def test_fill_holes_near_a_border_with_a_narrow_object():
    """Background on the ring of the window at the plane's border belongs to the large outside component
    (a window one pixel from the top, three pixels wide, would hold only 3 of its pixels)."""
    logits = torch.full((1, 1, 32, 32), -1.0)
    logits[0, 0, 1:6, 10] = 2.0
    logits[0, 0, 3, 11] = 2.0
    assert torch.equal(fill_holes(logits, 8), logits)
    logits[0, 0, 0, 10] = -1.0
    assert torch.equal(fill_holes(logits, 8), _plane_by_plane(logits, 8))


def test_fill_holes_on_an_accelerator_path_equals_the_numpy_path():
    """Logits that are not CPU float32 / float64 (here float16, and ones requiring grad) go through torch."""
    logits = _many_planes(20, (40, 40), seed=1)
    expected = fill_holes(logits, 8)
    assert torch.equal(fill_holes(logits.half(), 8), expected.half())
    assert torch.equal(fill_holes(logits.clone().requires_grad_(True), 8).detach(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fill_holes_in_place_fills_the_callers_stack(dtype):
    """in_place: a contiguous stack is filled itself (numpy and torch paths), anything else is copied."""
    logits = _many_planes(10, (40, 40), seed=2).to(dtype)
    expected = fill_holes(logits, 8)
    stack = logits.clone()
    out = fill_holes(stack, 8, in_place=True)
    assert out.data_ptr() == stack.data_ptr() and torch.equal(stack, expected)
    strided = logits.clone().transpose(-1, -2)  # not contiguous: left as it is
    before = strided.clone()
    assert torch.equal(fill_holes(strided, 8, in_place=True), fill_holes(before, 8)) and torch.equal(strided, before)


def test_fill_holes_leading_dims():
    """Any (..., H, W) shape works, each plane independently."""
    logits = torch.full((2, 3, 8, 8), FG)
    logits[1, 2, 3, 3] = BG
    out = fill_holes(logits, max_area=1)
    expected = logits.clone()
    expected[1, 2, 3, 3] = 0.1
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
def test_fill_holes_dtype_device_preserved_and_not_in_place(dtype):
    """Output keeps dtype and device; the input tensor is not modified."""
    logits, holes = _disc_with_holes()
    logits = logits.to(dtype)
    before = logits.clone()
    out = fill_holes(logits, max_area=8)
    assert out.dtype == dtype and out.device == logits.device
    assert torch.equal(logits, before)
    assert not torch.equal(out, logits)
    assert (out[0, 0][torch.from_numpy(holes[4])] == torch.tensor(0.1, dtype=dtype)).all()


# --------------------------------------------------------------------------- labels_from_logits

def test_labels_higher_logit_wins_and_ids_used():
    """Overlapping objects: the larger logit wins; label values are the object ids."""
    logits = np.full((2, 4, 5), -5.0, dtype=np.float32)
    logits[0, :, :3] = 2.0   # object 3 on columns 0..2
    logits[1, :, 2:] = 1.0   # object 7 on columns 2..4
    logits[1, 0, 2] = 3.0    # except at (0, 2) object 7 is stronger
    labels = labels_from_logits([3, 7], logits)
    expected = np.array([[3, 3, 7, 7, 7]] + [[3, 3, 3, 7, 7]] * 3)
    np.testing.assert_array_equal(labels, expected)
    assert labels.shape == (4, 5)


def test_labels_background_below_threshold():
    """Pixels where all logits are <= threshold are 0."""
    logits = np.array([[[0.0, -1.0, 0.5, 2.0]], [[-0.1, 0.0, 0.2, 1.5]]], dtype=np.float32)
    np.testing.assert_array_equal(labels_from_logits([1, 2], logits), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(labels_from_logits([1, 2], logits, threshold=0.5), [[0, 0, 0, 1]])
    np.testing.assert_array_equal(labels_from_logits([1, 2], logits, threshold=-0.5), [[1, 2, 1, 1]])


def test_labels_single_object():
    """One object: its id where the logit is positive."""
    logits = np.array([[[1.0, -1.0], [-2.0, 0.01]]])
    np.testing.assert_array_equal(labels_from_logits([5], logits), [[5, 0], [0, 5]])


@pytest.mark.parametrize("ids, dtype", [([3, 7], np.uint8), ([255], np.uint8), ([1, 256], np.uint16),
                                        ([300], np.uint16), ([70000, 2], np.uint32)])
def test_labels_default_dtype(ids, dtype):
    """The default dtype is the smallest unsigned type that holds the largest id."""
    logits = np.ones((len(ids), 3, 3), dtype=np.float32)
    logits[-1] = 2.0
    labels = labels_from_logits(ids, logits)
    assert labels.dtype == dtype
    assert (labels == ids[-1]).all()


def test_labels_explicit_dtype():
    """An explicit dtype is honoured."""
    logits = np.ones((2, 3, 3), dtype=np.float32)
    logits[1, 0, 0] = 5.0
    for dtype in (np.int32, np.uint16, np.int64):
        labels = labels_from_logits([3, 7], logits, dtype=dtype)
        assert labels.dtype == dtype
        assert labels[0, 0] == 7 and labels[1, 1] == 3


def test_labels_empty_object_list():
    """No objects: an all-zero label image of the frame size."""
    labels = labels_from_logits([], np.zeros((0, 4, 6), dtype=np.float32))
    assert labels.shape == (4, 6) and not labels.any()
    assert labels.dtype == np.uint8


def test_labels_accepts_torch_and_tuple_ids():
    """CPU torch logits and tuple ids work like numpy and lists."""
    logits = torch.tensor([[[1.0, -1.0]], [[0.5, 2.0]]])
    np.testing.assert_array_equal(labels_from_logits((4, 9), logits), [[4, 9]])


@pytest.mark.parametrize("ids, shape", [([1, 2, 3], (2, 4, 4)), ([1], (4, 4)), ([1], (1, 1, 4, 4)),
                                        ([], (1, 4, 4))])
def test_labels_shape_mismatch(ids, shape):
    """logits that are not (len(ids), Y, X) raise ValueError."""
    with pytest.raises(ValueError):
        labels_from_logits(ids, np.zeros(shape, dtype=np.float32))
