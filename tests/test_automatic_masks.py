"""Segmenting a whole frame: ``engine/automatic.py`` and ``engine/mask_geometry.py`` against SAM 2's reference.

The parity tests run the reference's ``SAM2AutomaticMaskGenerator`` (sam2 1.1.0, with the stand-in
torchvision of ``torchvision_stub``) and our :func:`generate_masks` on the same random ``sam2.1_hiera_t``
weights and the same uint8 frame (non-square, so that the stretch to S x S and back is exercised). Run with
``-s`` to see the measured differences.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from collections import deque

import numpy as np
import pytest
import torch
from reference_support import reference_with_random_weights
from scipy import ndimage
from torchvision_stub import nms as torchvision_nms
from torchvision_stub import reference_generator_module

from napari_sam2 import build_model
from napari_sam2.engine.automatic import (
    AutomaticMask,
    AutomaticMaskOptions,
    crop_model_input,
    generate_masks,
    postprocess_small_regions,
)
from napari_sam2.engine.compact_mask import CompactMask
from napari_sam2.engine.frames import FrameSource
from napari_sam2.engine.mask_geometry import (
    box_nms,
    crop_boxes,
    fill_small_regions,
    layer_point_grids,
    mask_boxes,
    near_crop_edge,
    point_grid,
    remove_small_regions,
    small_components,
    stability_score,
)
from napari_sam2.model.interrupt import Interrupted, stop_when

IMAGE_SIZE = 256
SEED = 2
IOU_TOL = 1e-4
STABILITY_TOL = 1e-4  # plus what the pixels that differ (logits tied at a threshold) can move it by
MAX_PIXEL_DIFF = 10  # per mask


def blob_image(shape: tuple[int, int], count: int = 6, seed: int = 0) -> np.ndarray:
    """(Y, X, 3) uint8 frame: ``count`` flat-coloured discs on black (random weights then give varied masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.zeros((*shape, 3))
    for _ in range(count):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(10, 40)
        image = np.where((((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None], rng.uniform(0, 255, 3), image)
    return image.astype(np.uint8)


def normalized(image: np.ndarray) -> np.ndarray:
    """The frame as the engine reads it: FrameSource's [0, 1] mapping of 8-bit data (/ 255, as the reference)."""
    return FrameSource(image[None], contrast_limits=(0, 255)).normalized(0)


# ---------------------------------------------------------------------- pieces against the reference's amg.py
@pytest.fixture(scope="module")
def ref_amg():
    return pytest.importorskip("sam2.utils.amg", reason="reference sam2==1.1.0 not installed")


@pytest.mark.reference
def test_point_grids_match_the_reference(ref_amg):
    for n in (1, 2, 5, 8, 32):
        np.testing.assert_array_equal(point_grid(n)[:, ::-1], ref_amg.build_point_grid(n))
    ours = layer_point_grids(16, 3, 2)
    theirs = ref_amg.build_all_layer_point_grids(16, 3, 2)
    assert [len(g) for g in ours] == [256, 64, 16, 4]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a[:, ::-1], b)


@pytest.mark.reference
@pytest.mark.parametrize("shape", [(200, 300), (300, 200), (1024, 1024), (97, 61)])
@pytest.mark.parametrize("overlap", [512 / 1500, 0.0, 0.5])
def test_crop_boxes_match_the_reference(ref_amg, shape, overlap):
    for layers in range(4):
        ours = crop_boxes(shape, layers, overlap)
        boxes, layer_idxs = ref_amg.generate_crop_boxes(shape, layers, overlap)
        assert [[x0, y0, x1, y1] for (y0, x0, y1, x1), _ in ours] == boxes
        assert [layer for _, layer in ours] == layer_idxs


@pytest.mark.reference
def test_mask_boxes_match_the_reference(ref_amg):
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 23, 31, generator=gen) > 0.995  # sparse: boxes of all sizes
    masks[0] = False  # empty
    masks[1] = True  # full
    masks[2] = False
    masks[2, 22, 30] = True  # one corner pixel
    ours = mask_boxes(masks)
    np.testing.assert_array_equal(ours[:, [1, 0, 3, 2]].numpy(), ref_amg.batched_mask_to_box(masks).numpy())
    assert ours.dtype == torch.int64 and mask_boxes(masks[:0]).shape == (0, 4)


@pytest.mark.reference
def test_stability_score_matches_the_reference(ref_amg):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 40, 50, generator=gen) * 3
    logits[0] = -5.0  # both masks empty: NaN in both
    for threshold, offset in ((0.0, 1.0), (0.5, 0.25), (-1.0, 2.0)):
        ours = stability_score(logits, threshold, offset)
        theirs = ref_amg.calculate_stability_score(logits, threshold, offset)
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(stability_score(logits, 0.0, 1.0)[0])


@pytest.mark.reference
def test_near_crop_edge_matches_the_reference(ref_amg):
    gen = torch.Generator().manual_seed(2)
    frame = (0, 0, 200, 300)
    for crop in ((0, 0, 200, 300), (0, 66, 134, 300), (60, 0, 200, 184), (40, 50, 150, 250)):
        y0, x0, y1, x1 = crop
        boxes = torch.stack([torch.randint(0, y1 - y0, (60,), generator=gen),
                             torch.randint(0, x1 - x0, (60,), generator=gen)], dim=1)
        boxes = torch.cat([boxes, boxes + torch.randint(0, 60, (60, 2), generator=gen)], dim=1)  # crop coords
        offset = torch.tensor([y0, x0, y0, x0])
        ours = near_crop_edge(boxes + offset, crop, frame)
        theirs = ref_amg.is_box_near_crop_edge(boxes[:, [1, 0, 3, 2]], [x0, y0, x1, y1], [0, 0, 300, 200])
        assert torch.equal(ours, theirs)
        if crop != frame:
            assert ours.any() and not ours.all()
        else:
            assert not ours.any()


# ---------------------------------------------------------------------- NMS and small regions
def test_box_nms_matches_a_brute_force_greedy_nms():
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        n = int(torch.randint(1, 120, (1,), generator=gen))
        low = torch.randint(0, 40, (n, 2), generator=gen)
        boxes = torch.cat([low, low + torch.randint(0, 25, (n, 2), generator=gen)], dim=1).float()
        boxes[: n // 4] = boxes[0]  # exact duplicates
        scores = torch.randint(0, 6, (n,), generator=gen).float() / 5  # many ties
        for threshold in (0.0, 0.3, 0.5, 0.7, 0.95):
            ours = box_nms(boxes, scores, threshold)
            assert ours.tolist() == torchvision_nms(boxes, scores, threshold).tolist(), (trial, threshold)
    assert box_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


def test_box_nms_thresholds_compare_as_torchvision_does():
    # IoU 3/5: in float32 0.6000000238 > 0.6, so torchvision (float IoU against a double threshold) suppresses;
    # IoU 7/10: float32 0.69999999 < 0.7, so it does not.
    boxes = torch.tensor([[0.0, 0, 1, 4], [0, 1, 1, 5]])
    assert box_nms(boxes, torch.tensor([1.0, 0.5]), 0.6).tolist() == [0]
    boxes = torch.tensor([[0.0, 0, 1, 17], [0, 3, 1, 20]])  # inter 14, union 20
    assert box_nms(boxes, torch.tensor([0.5, 1.0]), 0.7).tolist() == [1, 0]
    # Equal scores keep their order; a one-pixel-wide box has zero area and suppresses nothing.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 10], [0, 0, 0, 10]])
    assert box_nms(boxes, torch.ones(4), 0.5).tolist() == [0, 2, 3]


def _flood_components(plane: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of the True pixels, by breadth-first search."""
    seen = np.zeros_like(plane)
    components = []
    for start in zip(*np.nonzero(plane), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < plane.shape[0] and 0 <= nx < plane.shape[1] and plane[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        components.append(pixels)
    return components


def test_small_components_match_a_flood_fill():
    rng = np.random.default_rng(4)
    planes = rng.random((6, 14, 17)) < 0.35
    for max_area in (0, 1, 3, 8, 400):
        expected = np.zeros_like(planes)
        for plane, out in zip(planes, expected, strict=True):
            for pixels in _flood_components(plane):
                if len(pixels) <= max_area:
                    out[tuple(np.array(pixels).T)] = True
        np.testing.assert_array_equal(small_components(planes, max_area), expected)


def test_fill_small_regions_fills_holes_and_removes_islands_of_the_given_logits():
    logits = torch.full((1, 1, 12, 12), -3.0)
    logits[..., 1:8, 1:8] = 2.0
    logits[..., 3, 3] = -1.0  # a 1-pixel hole
    logits[..., 5:7, 5:7] = 0.0  # a 4-pixel hole (0 is background: logit <= threshold)
    logits[..., 10, 10] = 5.0  # a 1-pixel island
    out = fill_small_regions(logits, max_hole_area=1, max_sprinkle_area=1)
    assert out[0, 0, 3, 3] == 10.0 and out[0, 0, 10, 10] == -10.0
    assert torch.equal(out[..., 5:7, 5:7], logits[..., 5:7, 5:7])  # hole larger than 1 pixel stays
    changed = out != logits
    assert changed.sum() == 2
    # Islands are found on the given logits: the square is an island of 49 - 1 - 4 = 44 pixels, even where
    # its holes are filled (as the reference's predictor does it).
    both = fill_small_regions(logits, max_hole_area=4, max_sprinkle_area=44)
    assert torch.all(both[..., 5:7, 5:7] == 10.0) and both[0, 0, 3, 3] == 10.0
    assert both[0, 0, 1, 1] == -10.0 and both[0, 0, 10, 10] == -10.0
    assert fill_small_regions(logits, max_hole_area=4, max_sprinkle_area=43)[0, 0, 1, 1] == 2.0
    assert fill_small_regions(logits, 0, 0) is logits
    shifted = fill_small_regions(logits, 1, 0, threshold=2.5)  # background is now <= 2.5
    assert shifted[0, 0, 10, 10] == 5.0 and (shifted == 12.5).sum() == 0  # no background component of size 1


def test_remove_small_regions_semantics():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # hole of 1
    mask[8:10, 8:10] = False  # hole of 4
    mask[15, 15] = True  # island of 1
    filled, changed = remove_small_regions(mask, 4, "holes")  # fewer than 4 pixels: the 1-pixel hole only
    assert changed and filled[5, 5] and not filled[8:10, 8:10].any()
    same, changed = remove_small_regions(mask, 1, "holes")
    assert not changed and same is mask
    cleaned, changed = remove_small_regions(mask, 2, "islands")
    assert changed and not cleaned[15, 15] and cleaned[2, 2]
    dots = np.zeros((9, 9), dtype=bool)
    dots[1, 1] = True
    dots[5:7, 5] = True  # islands of 1 and 2 pixels, both small: the largest stays
    largest, changed = remove_small_regions(dots, 10, "islands")
    assert changed and largest.sum() == 2 and largest[5:7, 5].all()
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(mask, 3, "specks")


# ---------------------------------------------------------------------- options and inputs
def test_crop_model_input_of_the_whole_frame_is_the_frame_source_model_input():
    image = blob_image((70, 110))
    source = FrameSource(image[None], contrast_limits=(0, 255))
    frame = source.normalized(0)
    assert torch.equal(crop_model_input(frame, (0, 0, 70, 110), 128), source.model_input(0, 128))
    crop = crop_model_input(frame, (10, 20, 50, 90), 64)
    assert crop.shape == (1, 3, 64, 64)


def test_options_check_their_values():
    assert len(AutomaticMaskOptions().grids()) == 1 and len(AutomaticMaskOptions().grids()[0]) == 1024
    with pytest.raises(ValueError, match="exactly one"):
        AutomaticMaskOptions(points_per_side=None)
    with pytest.raises(ValueError, match="exactly one"):
        AutomaticMaskOptions(point_grids=[point_grid(4)])
    with pytest.raises(ValueError, match="needs 2"):
        AutomaticMaskOptions(points_per_side=None, point_grids=[point_grid(4)], crop_n_layers=1)
    with pytest.raises(ValueError, match="points_per_batch"):
        AutomaticMaskOptions(points_per_batch=0)
    grids = AutomaticMaskOptions(points_per_side=None, point_grids=[point_grid(3)]).grids()
    np.testing.assert_array_equal(grids[0], point_grid(3))


# ---------------------------------------------------------------------- parity with the reference generator
@pytest.fixture(scope="module")
def pair():
    """(reference SAM 2 model, our model) with the same random weights, image size 256."""
    reference, state_dict = reference_with_random_weights("sam2.1_hiera_t", image_size=IMAGE_SIZE, seed=SEED)
    ours = build_model("sam2.1_hiera_t", image_size=IMAGE_SIZE, device="cpu")
    ours.load_state_dict(state_dict, strict=True)
    return reference, ours


@pytest.fixture(scope="module")
def reference_amg(pair):
    with reference_generator_module() as module:
        yield module


def reference_generator(module: types.ModuleType, reference, **kwargs):
    generator = module.SAM2AutomaticMaskGenerator(reference, **kwargs)
    size = reference.image_size  # the image predictor's feature sizes are written for 1024 inputs
    generator.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
    return generator


def assert_same_masks(ours: list[AutomaticMask], theirs: list[dict], tag: str) -> None:
    """Same masks in the same order: records equal, segmentations up to a few tied pixels."""
    assert len(ours) == len(theirs), f"{tag}: {len(ours)} masks, the reference {len(theirs)}"
    pixels, iou_diff, stability_diff = [], 0.0, 0.0
    for i, (mask, record) in enumerate(zip(ours, theirs, strict=True)):
        mine = mask.as_sam_record()
        assert mine["segmentation"].shape == record["segmentation"].shape and mine["segmentation"].dtype == bool
        differ = int((mine["segmentation"] != record["segmentation"]).sum())
        pixels.append(differ)
        assert differ <= MAX_PIXEL_DIFF, f"{tag} mask {i}: {differ} pixels differ"
        assert abs(mine["area"] - record["area"]) <= differ
        assert mine["area"] == int(mask.segmentation.sum())
        if differ:
            assert np.abs(np.subtract(mine["bbox"], record["bbox"])).max() <= 1
        else:
            assert mine["bbox"] == record["bbox"], f"{tag} mask {i}"
        assert mine["point_coords"] == record["point_coords"] and mine["crop_box"] == record["crop_box"]
        iou_diff = max(iou_diff, abs(mine["predicted_iou"] - record["predicted_iou"]))
        allowed = STABILITY_TOL + 2 * differ / max(record["area"], 1)
        stability = abs(mine["stability_score"] - record["stability_score"])
        assert stability <= allowed, f"{tag} mask {i}: stability differs by {stability}"
        stability_diff = max(stability_diff, stability)
        if mask.area:
            y0, x0, y1, x1 = mask.bbox
            assert mask.segmentation[y0:y1, x0:x1].sum() == mask.area
    assert iou_diff <= IOU_TOL
    print(f"{tag}: {len(ours)} masks; pixels differ in {sum(p > 0 for p in pixels)} masks (max {max(pixels, default=0)},"
          f" total {sum(pixels)}); max|d iou| = {iou_diff:.2g}, max|d stability| = {stability_diff:.2g}")


OPEN = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}  # random weights: let every mask through
CASES = {
    "all_candidates": ((200, 300), dict(OPEN, box_nms_thresh=1.0)),
    "filters": ((200, 300), {"pred_iou_thresh": 0.24, "stability_score_thresh": 0.5, "mask_threshold": 0.5,
                             "box_nms_thresh": 1.0}),
    "default_nms": ((200, 300), dict(OPEN)),
    "crop_layer": ((240, 160), dict(OPEN, box_nms_thresh=0.9, crop_nms_thresh=0.9, crop_n_layers=1,
                                    crop_n_points_downscale_factor=2)),
    "m2m": ((200, 300), dict(OPEN, box_nms_thresh=1.0, use_m2m=True, points_per_batch=50)),
    "single_mask": ((200, 300), dict(OPEN, box_nms_thresh=0.95, multimask_output=False)),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_the_reference(pair, reference_amg, case):
    reference, ours = pair
    shape, kwargs = CASES[case]
    image = blob_image(shape)
    theirs = reference_generator(reference_amg, reference, points_per_side=8, **kwargs).generate(image)
    mine = generate_masks(ours, normalized(image), AutomaticMaskOptions(points_per_side=8, **kwargs))
    assert_same_masks(mine, theirs, case)
    assert len(mine) >= 1
    if case == "crop_layer":
        assert len({m.crop_box for m in mine}) > 1  # masks from the whole frame and from crops


def _scipy_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the reference's CUDA ``get_connected_components`` returns, on the CPU: (N, 1, H, W) labels and
    the area of each pixel's 8-connected component (0 on background)."""
    planes = mask.to(torch.bool).cpu().numpy()
    labels = np.zeros(planes.shape, dtype=np.int32)
    areas = np.zeros(planes.shape, dtype=np.int32)
    for i in range(planes.shape[0]):
        labels[i, 0], _ = ndimage.label(planes[i, 0], structure=np.ones((3, 3)))
        counts = np.bincount(labels[i, 0].ravel())
        counts[0] = 0
        areas[i, 0] = counts[labels[i, 0]]
    return torch.from_numpy(labels), torch.from_numpy(areas)


@pytest.mark.reference
def test_min_mask_region_area_matches_the_reference(pair, reference_amg, monkeypatch):
    """The reference fills holes and removes islands of the low-resolution masks only with its CUDA extension
    (elsewhere it warns and skips); here its connected components are computed with scipy instead."""
    import sam2.utils.misc

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _scipy_connected_components)
    reference, ours = pair
    image = blob_image((200, 300))
    kwargs = dict(OPEN, box_nms_thresh=1.0, points_per_side=8, min_mask_region_area=20)
    theirs = reference_generator(reference_amg, reference, **kwargs).generate(image)
    mine = generate_masks(ours, normalized(image), AutomaticMaskOptions(**kwargs))
    assert_same_masks(mine, theirs, "min_mask_region_area")
    plain = generate_masks(ours, normalized(image), AutomaticMaskOptions(**dict(kwargs, min_mask_region_area=0)))
    changed = sum(int((a.segmentation != b.segmentation).any()) for a, b in zip(mine, plain, strict=True))
    assert changed > 0  # the option did something


def _cv2_stub() -> types.ModuleType:
    """``cv2.connectedComponentsWithStats`` (8-connected) for the reference's ``remove_small_regions``."""
    def connected_components_with_stats(image: np.ndarray, connectivity: int):
        assert connectivity == 8
        labels, count = ndimage.label(image > 0, structure=np.ones((3, 3)))
        stats = np.zeros((count + 1, 5), dtype=np.int32)
        stats[:, -1] = np.bincount(labels.ravel(), minlength=count + 1)
        return count + 1, labels.astype(np.int32), stats, np.zeros((count + 1, 2))

    module = types.ModuleType("cv2")
    module.connectedComponentsWithStats = connected_components_with_stats
    return module


@pytest.mark.reference
def test_postprocess_small_regions_matches_the_reference(pair, reference_amg, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", _cv2_stub())
    from sam2.utils.amg import MaskData, mask_to_rle_pytorch, rle_to_mask

    _, ours = pair
    image = blob_image((200, 300))
    masks = generate_masks(ours, normalized(image), AutomaticMaskOptions(points_per_side=8, box_nms_thresh=1.0, **OPEN))
    yy, xx = np.mgrid[:200, :300]
    for cy, cx in ((60, 80), (140, 220)):  # two clean discs of ~700 pixels: the NMS prefers them
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2
        rows, cols = np.nonzero(disc)
        masks.append(dataclasses.replace(masks[0], mask=CompactMask.of(disc), area=int(disc.sum()),
                                         bbox=(rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)))
    for min_area, nms_thresh in ((30, 0.7), (400, 0.9)):
        data = MaskData(rles=mask_to_rle_pytorch(torch.from_numpy(np.stack([m.segmentation for m in masks]))),
                        boxes=mask_boxes(torch.from_numpy(np.stack([m.segmentation for m in masks])))[:, [1, 0, 3, 2]],
                        iou_preds=torch.tensor([m.predicted_iou for m in masks]))
        theirs = reference_amg.SAM2AutomaticMaskGenerator.postprocess_small_regions(data, min_area, nms_thresh)
        mine = postprocess_small_regions(masks, min_area, nms_thresh)
        assert len(mine) == len(theirs["rles"])
        assert [m.predicted_iou for m in mine] == theirs["iou_preds"].tolist()
        for mask, rle, box in zip(mine, theirs["rles"], theirs["boxes"].tolist(), strict=True):
            np.testing.assert_array_equal(mask.segmentation, rle_to_mask(rle))
            assert mask.as_sam_record()["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            assert mask.area == int(mask.segmentation.sum())
        assert [id(m.segmentation) for m in mine[:2]] == [id(m.segmentation) for m in masks[-2:]]
        originals = {id(m.segmentation) for m in masks}
        changed = sum(id(m.segmentation) not in originals for m in mine)
        print(f"postprocess_small_regions({min_area}, {nms_thresh}): {len(masks)} -> {len(mine)} masks, {changed} changed")
    assert postprocess_small_regions([], 10) == []


@pytest.mark.reference
def test_options_defaults_are_the_reference_constructor_defaults(reference_amg):
    parameters = inspect.signature(reference_amg.SAM2AutomaticMaskGenerator.__init__).parameters
    ours = {f.name: f.default for f in dataclasses.fields(AutomaticMaskOptions)}
    assert set(ours) <= set(parameters)
    for name, default in ours.items():
        assert parameters[name].default == default, name
    assert set(parameters) - set(ours) == {"self", "model", "output_mode", "kwargs"}


@pytest.mark.reference
def test_model_inputs_of_crops_are_the_reference_predictor_inputs(pair, reference_amg):
    reference, _ = pair
    image = blob_image((200, 300))
    transforms = reference_generator(reference_amg, reference).predictor._transforms
    for y0, x0, y1, x1 in ((0, 0, 200, 300), (0, 66, 134, 300), (66, 0, 200, 184)):
        theirs = transforms(image[y0:y1, x0:x1])[None]
        assert torch.equal(crop_model_input(normalized(image), (y0, x0, y1, x1), IMAGE_SIZE), theirs)


# ---------------------------------------------------------------------- engine integration
def test_cached_features_progress_and_stopping(model):
    """``model`` is the shared small (128) random model of conftest.py."""
    frame = normalized(blob_image((90, 140)))
    options = AutomaticMaskOptions(points_per_side=6, points_per_batch=10, **OPEN)
    calls = []
    masks = generate_masks(model, frame, options, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 4) for i in range(1, 5)]  # 36 prompts, 10 a batch
    features = model.encode_image(crop_model_input(frame, (0, 0, 90, 140), model.image_size))
    again = generate_masks(model, frame, options, features=features)
    assert [m.as_sam_record()["bbox"] for m in again] == [m.as_sam_record()["bbox"] for m in masks]
    assert all(np.array_equal(a.segmentation, b.segmentation) for a, b in zip(again, masks, strict=True))
    with stop_when(lambda: True), pytest.raises(Interrupted):
        generate_masks(model, frame, options)
    with pytest.raises(ValueError, match=r"\(Y, X, 3\)"):
        generate_masks(model, frame[..., 0], options)


def test_runs_under_bf16_autocast(model):
    frame = normalized(blob_image((90, 140)))
    options = AutomaticMaskOptions(points_per_side=4, **OPEN)
    entered = []

    def autocast():
        entered.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    masks = generate_masks(model, frame, options, autocast=autocast)
    assert entered and masks
    assert all(m.segmentation.shape == (90, 140) and m.segmentation.dtype == bool for m in masks)
    assert all(isinstance(m.predicted_iou, float) and 0 <= m.predicted_iou <= 1 for m in masks)
