"""Hole filling against the reference's ``fill_holes_in_mask_scores`` (sam2==1.1.0, sam2/utils/misc.py).

The reference labels the background (scores <= 0) with ``get_connected_components`` from its CUDA extension
and, without the extension, warns and skips the filling. Here it gets a CPU function with the extension's
semantics instead (monkeypatched into sam2.utils.misc): for (N, 1, H, W) masks, int32 labels > 0 on the
mask's pixels (0 elsewhere) and int32 per-pixel areas of their 8-connected components (0 elsewhere); like
the kernel it wants even H and W. It is skimage's labelling, not the scipy one ours uses. In 1.1.0 the
reference only fills holes (background components of at most ``max_area`` pixels become 0.1); it does not
remove small foreground specks, and neither do we: the comparisons below are exact.

Compared: (a) crafted logits with holes of 1..20 pixels, diagonal links and holes on the borders;
(b) low-resolution logits of our model (tests/session_support.py); (c) the no-object path: planes of an
absent object (all -1024) alone and among others, and a video run, our session against the reference's
video predictor with hole filling on on both sides, where a mask prompt with holes is followed by frames
where the object is judged absent, and a clicked object is absent from the start; and the same run with
objects present, where tracking reads the memory of the filled mask and a correction the filled logits.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from reference_support import build_reference, randomize_state_dict
from session_support import cells_movie, small_model
from video_scenarios import Pair, synthetic_movie, write_jpeg_folder

from napari_sam2 import TrackingSession, build_model
from napari_sam2.engine.postprocess import HOLE_FILL_LOGIT, fill_holes
from napari_sam2.model.sam2 import NO_OBJECT_SCORE

pytestmark = pytest.mark.reference
misc = pytest.importorskip("sam2.utils.misc", reason="reference sam2==1.1.0 not installed")
FILL_HOLE_AREA = 8  # the reference's default (build_sam.py: ++model.fill_hole_area=8)


def cpu_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the reference's ``_C.get_connected_componnets`` returns, on the CPU: (N, 1, H, W) masks ->
    (labels, areas), both int32 (N, 1, H, W); 8-connectivity; labels > 0 and areas only on mask pixels."""
    from skimage.measure import label

    assert mask.ndim == 4 and mask.shape[1] == 1, "inputs must be [N, 1, H, W] shape"
    assert mask.shape[-2] % 2 == 0 and mask.shape[-1] % 2 == 0, "the CUDA kernel wants even sizes"
    planes = mask.to(torch.uint8).cpu().numpy()[:, 0]
    labels = np.zeros(planes.shape, dtype=np.int32)
    areas = np.zeros(planes.shape, dtype=np.int32)
    for i, plane in enumerate(planes):
        labels[i] = label(plane, connectivity=2, background=0)
        areas[i] = np.bincount(labels[i].ravel())[labels[i]] * (labels[i] > 0)
    return tuple(torch.from_numpy(a[:, None]).to(mask.device) for a in (labels, areas))


@pytest.fixture
def reference_fill(monkeypatch):
    """The reference's fill_holes_in_mask_scores with the CPU connected components in place of the CUDA op."""
    monkeypatch.setattr(misc, "get_connected_components", cpu_connected_components)
    return misc.fill_holes_in_mask_scores


def _compare(logits: torch.Tensor, reference_fill, max_area: int = FILL_HOLE_AREA) -> int:
    """Assert ours equals the reference bit for bit; return how many pixels were filled."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the reference warns when it skips the filling
        theirs = reference_fill(logits.clone(), max_area)
    ours = fill_holes(logits, max_area)
    assert ours.dtype == theirs.dtype == logits.dtype and ours.shape == theirs.shape
    assert torch.equal(ours, theirs), f"{int((ours != theirs).sum())} pixels differ"
    return int((ours != logits).sum())


def test_the_reference_skips_filling_without_its_extension():
    """Why the CPU function is needed: unpatched, the reference warns and returns the logits unchanged."""
    logits = torch.full((1, 1, 8, 8), 3.0)
    logits[0, 0, 3, 3] = -1.0
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="Skipping the post-processing"):
            assert torch.equal(misc.fill_holes_in_mask_scores(logits, 8), logits)
    else:
        pytest.skip("the reference's CUDA extension is installed here")


# ------------------------------------------------------------------------------------------- (a) crafted
def _crafted_planes() -> torch.Tensor:
    """(4, 1, 64, 64) logits: holes of every area 1..20 in different shapes, diagonal links, border holes."""
    rng = np.random.default_rng(3)
    planes = np.zeros((4, 64, 64), dtype=np.float32)
    planes[:] = rng.uniform(0.5, 4.0, planes.shape)  # foreground everywhere to start
    # Plane 0: a row of holes, area a = 1..20, as a vertical bar of a pixels (wrapping into columns of 5).
    for area in range(1, 21):
        top, left = 2 + 12 * ((area - 1) // 7), 2 + 9 * ((area - 1) % 7)
        pixels = [(top + k % 5, left + k // 5) for k in range(area)]
        for y, x in pixels:
            planes[0, y, x] = -rng.uniform(0.0, 3.0)
    planes[0, 60, 60] = 0.0  # exactly 0 is background
    # Plane 1: diagonal chains (one component with 8-connectivity) of 1..12 pixels, and 4-connected pairs.
    for length in range(1, 13):
        top, left = 2 + 15 * ((length - 1) // 4), 2 + 15 * ((length - 1) % 4)
        for k in range(length):
            planes[1, top + k, left + (k if length % 2 else -k + length)] = -1.0
    # Plane 2: holes touching the border and corners (areas 1, 3, 8, 9, 20), the rest foreground.
    planes[2, 0, 10] = -1
    planes[2, 0:3, 30] = -1
    planes[2, 60:64, 0:2] = -1                  # corner, 8 pixels
    planes[2, 0:3, 61:64] = -1                  # corner, 9 pixels
    planes[2, 30:34, 59:64] = -2                # right border, 20 pixels
    planes[2, 63, 40] = planes[2, 62, 41] = -1  # diagonal pair on the bottom border
    # Plane 3: smoothed noise around 0: blobs and holes of all sizes, specks of foreground too.
    noise = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.standard_normal((1, 1, 64, 64)).astype(np.float32)),
                                           3, 1, 1)
    planes[3] = noise[0, 0].numpy() + 0.15
    return torch.from_numpy(planes)[:, None]


@pytest.mark.parametrize("max_area", [FILL_HOLE_AREA, 1, 4, 9, 20])
def test_crafted_holes_are_filled_as_the_reference_fills_them(reference_fill, max_area):
    logits = _crafted_planes()
    filled = _compare(logits, reference_fill, max_area)
    print(f"max_area={max_area}: {filled} pixels filled, identical to the reference")
    assert filled > 0
    per_plane = [_compare(logits[i:i + 1], reference_fill, max_area) for i in range(len(logits))]
    assert sum(per_plane) == filled  # planes are independent
    assert (fill_holes(logits, max_area)[fill_holes(logits, max_area) != logits] == HOLE_FILL_LOGIT).all()


def test_background_specks_and_large_holes_stay(reference_fill):
    """1.1.0 fills holes only: a foreground speck stays, a hole above the area stays."""
    logits = torch.full((1, 1, 32, 32), -2.0)
    logits[0, 0, 10, 10] = 1.0  # a one-pixel speck of foreground
    logits[0, 0, 15:25, 15:25] = 2.0
    logits[0, 0, 18:21, 18:21] = -1.0  # a 9-pixel hole
    assert _compare(logits, reference_fill) == 0
    assert _compare(logits, reference_fill, 9) == 9


# -------------------------------------------------------------------------------------- (b) our model's
def _model_low_res() -> torch.Tensor:
    """(n, 1, 32, 32) low-resolution logits of several objects our small model produced on the cell movie."""
    session = TrackingSession(small_model(), cells_movie(3), fill_hole_area=0)
    session.add_points(0, 1, [(30, 25)], [1])
    session.add_box(0, 2, (50, 40, 80, 70))
    session.add_points(0, 3, [(10, 60), (20, 65)], [1, 0])
    session.add_points(1, 4, [(60, 50)], [1])
    list(session.propagate(max_frames=2))
    return torch.cat([session._objects[obj_id].latest(t).raw_logits
                      for obj_id in session.obj_ids for t in range(3) if session._objects[obj_id].latest(t)])


def test_our_models_logits_are_filled_as_the_reference_fills_them(reference_fill):
    low_res = _model_low_res()
    total = 0
    for level in (0.0, -2.0, -1.0, 1.0, 2.0, 4.0):  # the logits and shifted copies (more and fewer holes)
        total += _compare(low_res + level if level else low_res, reference_fill)
    print(f"{len(low_res)} low-res maps x 6 levels: {total} pixels filled, identical to the reference")
    assert total > 0


# ------------------------------------------------------------------------------------------ (c) no object
def test_absent_objects_are_left_as_the_reference_leaves_them(reference_fill):
    absent = torch.full((1, 1, 64, 64), NO_OBJECT_SCORE)
    assert _compare(absent, reference_fill) == 0
    mixed = torch.cat([_crafted_planes()[:2], absent, _crafted_planes()[3:]])
    assert _compare(mixed, reference_fill) > 0
    assert torch.equal(fill_holes(mixed, FILL_HOLE_AREA)[2], absent[0])
    tiny = torch.full((2, 1, 2, 2), NO_OBJECT_SCORE)  # a whole plane of at most max_area pixels is a hole
    assert _compare(tiny, reference_fill) == 8


class FilledPair(Pair):
    """Our session and the reference's video predictor, as :class:`Pair`, with hole filling on on both sides
    (the reference with :func:`cpu_connected_components`) and a chosen object-score bias of the random
    weights (negative: objects the heads see are judged absent)."""

    def __init__(self, config: str, image_size: int, movie: np.ndarray, tmp_path, object_score_bias: float,
                 fill_hole_area: int = FILL_HOLE_AREA) -> None:
        torch.manual_seed(0)
        self.reference = build_reference(config, image_size=image_size)
        state_dict = randomize_state_dict(self.reference.state_dict(), seed=0, object_score_bias=object_score_bias)
        self.reference.load_state_dict(state_dict, strict=True)
        self.reference.fill_hole_area = fill_hole_area
        frames = write_jpeg_folder(movie, tmp_path / "jpg")
        with torch.no_grad():
            self.state = self.reference.init_state(video_path=str(tmp_path / "jpg"))
        model = build_model(config, image_size=image_size, device="cpu")
        model.load_state_dict(state_dict, strict=True)
        self.ours = TrackingSession(model, frames, contrast_limits=(0, 255), fill_hole_area=fill_hole_area,
                                    precision="fp32")
        self.diffs: list[float] = []


def _mask_with_holes(size: int) -> np.ndarray:
    """A disc with square holes of 8 x 8 (2 x 2 = 4 low-res pixels: filled) and 16 x 16 frame pixels (4 x 4
    = 16: kept), and a small speck outside it."""
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - 90) ** 2 + (xx - 80) ** 2 <= 60 ** 2
    mask[72:80, 64:72] = False
    mask[96:112, 88:104] = False
    mask[200:204, 200:204] = True
    return mask


def test_a_disappearing_object_matches_the_reference_with_filling_on(reference_fill, tmp_path):
    pair = FilledPair("sam2.1_hiera_t", 256, synthetic_movie(5, 256), tmp_path, object_score_bias=-20.0)
    mask = _mask_with_holes(256)
    pair.mask(0, 1, mask)
    pair.points(0, 2, [[180, 170]], [1])  # the heads judge it absent, on its own prompt frame too
    ours_low = pair.ours._objects[1].latest(0).raw_logits
    theirs_low = pair.state["temp_output_dict_per_obj"][0]["cond_frame_outputs"][0]["pred_masks"]  # filled
    filled = fill_holes(ours_low, FILL_HOLE_AREA)
    assert int((filled != ours_low).sum()) == 4  # the 8 x 8 hole, not the 16 x 16 one
    assert int((theirs_low == np.float32(HOLE_FILL_LOGIT)).sum()) == 4
    assert (filled - theirs_low).abs().max() <= 1e-3
    assert pair.propagate() == [0, 1, 2, 3, 4]
    present, absent = pair.ours.frame_logits(0)[1]
    assert (present > 0).any() and np.all(absent == NO_OBJECT_SCORE)
    for t in range(1, 5):  # tracked: both objects judged absent
        assert np.all(pair.ours.frame_logits(t)[1] == NO_OBJECT_SCORE), t
    np.testing.assert_array_equal(pair.ours.label_image(0), (present > 0).astype(np.uint16))
    assert not pair.ours.label_image(2).any()
    pair.mask(3, 1, mask)  # back on frame 3, then tracked again from there
    assert pair.propagate(start=3) == [3, 4]
    assert np.all(pair.ours.frame_logits(4)[1] == NO_OBJECT_SCORE)
    print(f"{len(pair.diffs)} logit maps compared, max |diff| = {pair.max_diff:.3g}")
    assert pair.max_diff <= 1e-3


def _reference_filled_pixels(pair: Pair) -> int:
    """How many stored low-res pixels of the reference hold exactly the fill value (0.1)."""
    count = 0
    for per_obj in pair.state["output_dict_per_obj"].values():
        for outputs in per_obj.values():
            count += sum(int((out["pred_masks"] == np.float32(HOLE_FILL_LOGIT)).sum()) for out in outputs.values())
    return count


def test_memories_of_filled_masks_and_corrections_match_the_reference(reference_fill, tmp_path):
    """Objects present: tracking reads the memory of the hole-filled mask prompt, a correction click the
    filled previous logits; every output of both sides is compared."""
    pair = FilledPair("sam2.1_hiera_t", 256, synthetic_movie(5, 256), tmp_path, object_score_bias=8.0)
    pair.mask(0, 1, _mask_with_holes(256))
    pair.points(0, 2, [[180, 170]], [1])
    assert pair.propagate() == [0, 1, 2, 3, 4]
    pair.points(2, 1, [[90, 80], [150, 150]], [1, 0], clear_old_points=False)
    assert pair.propagate(start=2) == [2, 3, 4]
    print(f"{len(pair.diffs)} logit maps compared, max |diff| = {pair.max_diff:.3g}; "
          f"{_reference_filled_pixels(pair)} filled low-res pixels kept by the reference")
    assert _reference_filled_pixels(pair) >= 4
    assert pair.max_diff <= 1e-3
