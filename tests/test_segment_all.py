"""TrackingSession.segment_all: every mask the automatic generator finds becomes a new object."""

from __future__ import annotations

import numpy as np
import pytest
from session_support import cells_movie, small_model

from napari_sam2 import AutomaticMaskOptions, TrackingSession
from napari_sam2.engine.automatic import generate_masks
from napari_sam2.engine.compact_mask import CompactMask

OPEN = AutomaticMaskOptions(points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0,
                            stability_score_thresh=0.0, box_nms_thresh=0.95)


def test_segment_all_seeds_each_generated_mask_as_a_new_object_and_tracks_them():
    model = small_model()
    session = TrackingSession(model, cells_movie(3), contrast_limits=(0, 4000))
    session.add_points(0, 5, [(30, 25)], [1])
    before = session.frame_logits(0)[1][0].copy()
    seen = []
    ids = session.segment_all(1, OPEN, progress=lambda done, total: seen.append((done, total)))
    expected = generate_masks(model, session.source.normalized(1), OPEN)
    assert len(expected) > 1 and ids == list(range(6, 6 + len(expected)))  # next free ids, best mask first
    assert seen and seen[-1][0] == seen[-1][1]
    for obj_id, mask in zip(ids, expected, strict=True):
        prompt = session.prompts(obj_id)[1]
        assert prompt.kind == "mask" and np.array_equal(prompt.mask, mask.segmentation)
    np.testing.assert_array_equal(session.frame_logits(0)[1][0], before)  # object 5 untouched
    frames = [frame for frame, _, _ in session.propagate(0)]
    assert frames == [0, 1, 2] and session.obj_ids == [5, *ids]


def test_empty_masks_do_not_become_objects(monkeypatch):
    from napari_sam2.engine import session_population as session_module
    from napari_sam2.engine.automatic import AutomaticMask

    model = small_model()
    session = TrackingSession(model, cells_movie(2), contrast_limits=(0, 4000))
    full = np.zeros((96, 80), bool)
    full[20:30, 10:25] = True
    found = [AutomaticMask(mask=CompactMask.of(np.zeros((96, 80), bool)), area=0, bbox=(0, 0, 0, 0), predicted_iou=0.9,
                           stability_score=0.0, point=(5.0, 5.0), crop_box=(0, 0, 96, 80)),
             AutomaticMask(mask=CompactMask.of(full), area=150, bbox=(20, 10, 30, 25), predicted_iou=0.8,
                           stability_score=0.9, point=(25.0, 15.0), crop_box=(0, 0, 96, 80))]
    monkeypatch.setattr(session_module, "generate_masks", lambda *args, **kwargs: found)
    assert session.segment_all(0) == [1]
    assert np.array_equal(session.prompts(1)[0].mask, full)


def _two_masks() -> list:
    from napari_sam2.engine.automatic import AutomaticMask

    masks = []
    for box in ((20, 10, 30, 25), (50, 40, 60, 70)):
        mask = np.zeros((96, 80), bool)
        mask[box[0]:box[2], box[1]:box[3]] = True
        masks.append(AutomaticMask(mask=CompactMask.of(mask), area=int(mask.sum()), bbox=box, predicted_iou=0.9,
                                   stability_score=0.9, point=(box[0] + 1.0, box[1] + 1.0), crop_box=(0, 0, 96, 80)))
    return masks


def test_first_id_numbers_the_new_objects_and_is_checked_before_anything_runs(monkeypatch):
    from napari_sam2.engine import session_population as session_module

    calls = []
    monkeypatch.setattr(session_module, "generate_masks", lambda *args, **kwargs: calls.append(1) or _two_masks())
    session = TrackingSession(small_model(), cells_movie(2), contrast_limits=(0, 4000))
    session.add_points(0, 5, [(30, 25)], [1])
    assert session.segment_all(0, first_id=np.int64(40)) == [40, 41]
    assert session.obj_ids == [5, 40, 41] and session.prompts(41)[0].kind == "mask"
    assert session.segment_all(1) == [42, 43]  # default: above every existing id
    for bad in (43, 5, 1, 0, -3, 2.5, True, "50", None.__class__):
        with pytest.raises(ValueError) as error:
            session.segment_all(1, first_id=bad)
        assert "\n" not in str(error.value) and "first_id" in str(error.value)
    assert len(calls) == 2 and session.obj_ids == [5, 40, 41, 42, 43]  # refused before the generator ran
    assert session.segment_all(1, first_id=44) == [44, 45]
