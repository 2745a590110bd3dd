"""Results kept as the crop of their box (engine/compact_logits.py): what they cost, and that nothing a session
computes from them changes (masks, labels, hole filling, memory encoder input, clicks' mask input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from session_support import cells_movie, small_model

from napari_sam2 import TrackingSession, labels_from_logits
from napari_sam2.engine import compact_logits
from napari_sam2.engine.compact_logits import LOGIT_FLOOR, CompactLogits
from napari_sam2.engine.postprocess import fill_holes
from napari_sam2.model.sam2 import MEM_ENC_SIGMOID_BIAS, MEM_ENC_SIGMOID_SCALE, NO_OBJECT_SCORE


def cell_logits(size: int = 128, centre=(40.0, 70.0), radius: float = 9.0, depth: float = 60.0,
                seed: int = 0) -> torch.Tensor:
    """(1, 1, size, size) logits like a trained model's: positive inside a disc, falling off to ``-depth``
    with distance, with noise (a few small holes and sprinkles)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    distance = np.hypot(yy - centre[0], xx - centre[1]) - radius
    logits = np.clip(-1.5 * distance, -depth, 12.0) + rng.normal(0, 0.7, (size, size))
    return torch.from_numpy(logits.astype(np.float32))[None, None]


def test_an_absent_object_and_a_mask_prompt_keep_no_more_than_their_box_exactly():
    absent = CompactLogits.of(torch.full((1, 1, 64, 64), NO_OBJECT_SCORE))
    assert absent.box == (0, 0, 0, 0) and absent.nbytes == 16
    assert torch.equal(absent.dense(), torch.full((1, 1, 64, 64), NO_OBJECT_SCORE))
    mask = torch.full((1, 1, 64, 64), -10.0)
    mask[0, 0, 10:20, 30:33] = 10.0
    mask[0, 0, 9, 31] = 3.5  # an antialiased edge
    kept = CompactLogits.of(mask)
    assert kept.box == (9, 30, 20, 33) and kept.fill == -10.0
    assert torch.equal(kept.dense(), mask)


def test_a_cell_keeps_its_box_and_reads_back_the_logits_wherever_they_are_above_the_floor():
    logits = cell_logits()
    kept = CompactLogits.of(logits)
    assert kept.fill == LOGIT_FLOOR and kept.nbytes < logits.numel() * 4 / 4  # under a quarter of the map
    read = kept.dense()
    assert torch.equal(read.clamp(min=LOGIT_FLOOR), logits.clamp(min=LOGIT_FLOOR))
    plane = np.empty((128, 128), np.float32)
    kept.write_into(plane)
    assert np.array_equal(plane, read[0, 0].numpy())


@pytest.mark.parametrize("size", [(512, 512), (300, 517), (1000, 777), (97, 64)])
def test_resampled_logits_and_labels_are_unchanged_where_they_matter(size):
    logits = cell_logits(seed=1)
    read = CompactLogits.of(logits).dense()
    ours, theirs = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (read, logits))
    assert torch.equal(ours.clamp(min=LOGIT_FLOOR), theirs.clamp(min=LOGIT_FLOOR))
    assert np.array_equal(labels_from_logits([5], ours[0].numpy()), labels_from_logits([5], theirs[0].numpy()))


def test_hole_filling_memory_input_and_click_mask_input_see_the_same_values():
    logits = torch.cat([cell_logits(seed=s, radius=r) for s, r in ((2, 9.0), (3, 20.0), (4, 3.0))])
    read = torch.cat([CompactLogits.of(logits[i:i + 1]).dense() for i in range(3)])
    filled_ours, filled_theirs = fill_holes(read, 8), fill_holes(logits, 8)
    assert torch.equal(filled_ours.clamp(min=LOGIT_FLOOR), filled_theirs.clamp(min=LOGIT_FLOOR))
    # A click on the frame feeds the filled logits back clamped to +-32: identical.
    assert torch.equal(filled_ours.clamp(-32, 32), filled_theirs.clamp(-32, 32))
    ours, theirs = (F.interpolate(t, size=(512, 512), mode="bilinear", align_corners=False) for t in (read, logits))
    for encoder_input in (lambda t: (t > 0).float(), torch.sigmoid):  # prompted frames binarise, tracked ones not
        assert torch.equal(encoder_input(ours) * MEM_ENC_SIGMOID_SCALE + MEM_ENC_SIGMOID_BIAS,
                           encoder_input(theirs) * MEM_ENC_SIGMOID_SCALE + MEM_ENC_SIGMOID_BIAS)


def test_the_floor_is_exact_for_the_memory_encoders_constants():
    assert compact_logits.FLOOR_IS_EXACT
    x = torch.tensor([LOGIT_FLOOR, -40.0, -100.0, -1024.0])
    assert torch.all(torch.sigmoid(x) * MEM_ENC_SIGMOID_SCALE + MEM_ENC_SIGMOID_BIAS == MEM_ENC_SIGMOID_BIAS)


def _sharpened(model):
    """The random-weight model with its mask logits scaled up 40x, so that they span trained models' range
    (well below the floor away from an object) and the floor's crop is used."""
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
            mlp.layers[-1].bias.mul_(40.0)
    return model


def test_a_session_computes_the_same_with_compact_results_as_with_full_ones(monkeypatch):
    """Propagation (with dropped and re-encoded memories), a click on a tracked frame and labels: the same
    with results cropped to their boxes as with the whole maps kept."""
    movie = cells_movie(24)

    def run():
        session = TrackingSession(_sharpened(small_model()), movie, fill_hole_area=8)
        session.add_points(0, 1, [[30, 25]], [1])
        session.add_box(0, 2, (50, 40, 80, 70))
        outputs = [o.label_image() for o in session.propagate()]
        assert session._objects[1].tracked[15].maskmem is None  # dropped: the backward run re-encodes it
        outputs += [o.label_image() for o in session.propagate(start=14, direction="backward")]
        clicked = session.add_points(5, 1, [[32, 27]], [1], clear_old_points=False)  # refines a tracked result
        return session, outputs, clicked.logits

    compact_session, compact_labels, compact_click = run()
    kept = [r.compact_logits for o in compact_session._objects.values() for r in o.tracked.values()]
    assert any(k.fill == LOGIT_FLOOR for k in kept)  # the floor's crop was used
    held = sum(k.nbytes for k in kept) / len(kept)
    full_map = 4 * kept[0].shape[0] * kept[0].shape[1]
    assert held < 0.8 * full_map  # small frames: the cells fill much of them

    def whole_map(cls, t, floor=LOGIT_FLOOR):
        return cls(tuple(t.shape[-2:]), (0, 0, *t.shape[-2:]), t[0, 0].float().clone(), 0.0)

    monkeypatch.setattr(CompactLogits, "of", classmethod(whole_map))
    full_session, full_labels, full_click = run()
    for ours, theirs in zip(compact_labels, full_labels, strict=True):
        assert np.array_equal(ours, theirs)
    np.testing.assert_array_equal(np.maximum(compact_click, LOGIT_FLOOR), np.maximum(full_click, LOGIT_FLOOR))
    for obj_id in (1, 2):
        for frame, result in full_session._objects[obj_id].tracked.items():
            other = compact_session._objects[obj_id].tracked[frame]
            assert torch.equal(result.obj_ptr, other.obj_ptr)


def test_a_higher_floor_keeps_only_the_objects_box_and_the_same_labels():
    logits = cell_logits(depth=20.0)  # a background above -32: the default floor keeps the whole map
    assert CompactLogits.of(logits).box == (0, 0, 128, 128)
    kept = CompactLogits.of(logits, floor=0.0)
    inside = np.argwhere(logits[0, 0].numpy() > 0)
    (r0, c0), (r1, c1) = inside.min(axis=0), inside.max(axis=0)
    assert kept.box == (r0 - 1, c0 - 1, r1 + 2, c1 + 2) and kept.fill == 0.0
    read = kept.dense()
    assert torch.equal(read > 0, logits > 0)
    big = (700, 640)
    up = [F.interpolate(t, size=big, mode="bilinear", align_corners=False) for t in (read, logits)]
    assert torch.equal(up[0] > 0, up[1] > 0)


def test_a_session_with_a_higher_floor_writes_the_same_labels_and_rejects_a_positive_one():
    movie = cells_movie(4)
    labels = []
    for floor in (LOGIT_FLOOR, -4.0):
        session = TrackingSession(small_model(), movie, result_floor=floor)
        session.add_box(0, 1, (20, 15, 45, 40))
        labels.append([o.label_image() for o in session.propagate()])
    for ours, theirs in zip(*labels, strict=True):
        assert np.array_equal(ours, theirs)
    for bad in (0.5, float("nan"), "low"):
        with pytest.raises(ValueError, match="result_floor must be a number <= 0"):
            TrackingSession(small_model(), movie, result_floor=bad)
