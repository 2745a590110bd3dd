"""Populations: cells that enter (re-seeding during propagation) and cells that leave (stop_after_absent).

A small random-weight model on a (6, 96, 80) movie in which a second bright blob appears on frame 3. Expected
new objects are worked out here independently, with dense per-object masks, from the objects' labels on the
re-seeded frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from session_support import cells_movie, small_model

from napari_sam2 import AutomaticMaskOptions, TrackingSession, labels_from_logits
from napari_sam2.engine import session as session_module
from napari_sam2.engine.automatic import generate_masks
from napari_sam2.engine.compact_mask import CompactMask
from napari_sam2.engine.reseeding import ReseedOptions, new_masks

NUM_FRAMES, SHAPE = 6, (96, 80)
OPEN = AutomaticMaskOptions(points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0,
                            stability_score_thresh=0.0, box_nms_thresh=0.95)
YY, XX = np.mgrid[:SHAPE[0], :SHAPE[1]]


def disk(cy: float, cx: float, radius2: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= radius2


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    """cells_movie's drifting blob, plus a second blob that enters on frame 3."""
    frames = cells_movie(NUM_FRAMES).astype(np.float64)
    for t in range(3, NUM_FRAMES):
        frames[t] += 2500 * np.exp(-((YY - 75) ** 2 + (XX - 60) ** 2) / 120)
    return frames.astype(np.uint16)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    """A per-frame segmentation (as Cellpose would give): the first cell (label 7) and the one entering (9)."""
    labels = np.zeros((NUM_FRAMES, *SHAPE), np.uint16)
    for t in range(NUM_FRAMES):
        labels[t][disk(30 + 3 * t, 25 + 2 * t, 60)] = 7
        if t >= 3:
            labels[t][disk(75, 60, 50)] = 9
    labels[4][2:12, 2:12] = 3  # a corner square
    return labels


def new_session(model, movie, **options) -> TrackingSession:
    session = TrackingSession(model, movie, contrast_limits=(0, 4000), **options)
    session.add_points(0, 1, [[30, 25]], [1])
    return session


def expected_new(labels: np.ndarray, candidates: list[np.ndarray], iou: float, covered: float) -> list[int]:
    """Indices of the candidates the rule takes, computed densely (one full mask per object)."""
    masks = [labels == i for i in np.unique(labels) if i != 0]
    taken = []
    for index, candidate in enumerate(candidates):
        if not candidate.any():
            continue
        ious = [np.logical_and(candidate, m).sum() / np.logical_or(candidate, m).sum() for m in masks]
        inside = np.logical_and(candidate, np.any(masks, axis=0)).sum() if masks else 0
        if max(ious, default=0.0) < iou and inside / candidate.sum() <= covered:
            taken.append(index)
            masks.append(candidate & ~np.any(masks, axis=0) if masks else candidate)
    return taken


def run(session: TrackingSession, **options) -> list[tuple[int, list[int]]]:
    """(frame, obj_ids) of every yielded frame."""
    return [(out.frame, list(out.obj_ids)) for out in session.propagate(**options)]


# ---------------------------------------------------------------------------------------------- the rule
def test_new_masks_takes_candidates_below_the_iou_and_not_mostly_covered():
    labels = np.zeros((40, 40), np.uint32)
    labels[0:10, 0:10] = 1  # 100 px
    labels[20:40, 20:40] = 2  # 400 px
    a = np.zeros((40, 40), bool)
    candidates = {
        "same as 1": a.copy(), "apart": a.copy(), "touching 1": a.copy(), "piece of 2": a.copy(),
        "on apart": a.copy(), "near 2": a.copy(),
    }
    candidates["same as 1"][0:10, 0:10] = True  # IoU 1: tracked already
    candidates["apart"][0:10, 20:30] = True  # nothing there: new
    candidates["touching 1"][9:19, 0:10] = True  # 10 px of 1: IoU 10 / 190, 10% covered: new
    candidates["piece of 2"][25:30, 25:30] = True  # IoU 25 / 400 < 0.1, but wholly inside 2
    candidates["on apart"][0:10, 22:32] = True  # mostly the accepted "apart": IoU 80 / 120
    candidates["near 2"][20:40, 10:22] = True  # 40 px of 2 ...
    candidates["near 2"][30:40, 10:20] = False  # ... of 140: IoU 40 / 500 = 0.08, 29% covered: new
    names = list(candidates)
    masks = [CompactMask.of(candidates[n]) for n in names]
    taken = [names[masks.index(m)] for m in new_masks(labels, masks)]
    assert taken == ["apart", "touching 1", "near 2"]
    dense = expected_new(labels, [candidates[n] for n in names], 0.1, 0.5)
    assert [names[i] for i in dense] == taken
    # max_covered=1 lets a piece of a tracked cell through; a lower IoU refuses the one touching object 1
    taken = [names[masks.index(m)] for m in new_masks(labels, masks, new_object_iou=0.1, max_covered=1.0)]
    assert "piece of 2" in taken
    taken = [names[masks.index(m)] for m in new_masks(labels, masks, new_object_iou=0.05)]
    assert taken == ["apart"]
    assert new_masks(labels, [CompactMask.of(a)]) == []  # empty candidates are left out
    np.testing.assert_array_equal(labels[0:10, 20:30], 0)  # the caller's labels are not painted


def test_iou_at_the_threshold_is_not_new():
    labels = np.zeros((10, 20), np.uint32)
    labels[:, :10] = 1  # 100 px
    candidate = np.zeros((10, 20), bool)
    candidate[:, 9:20] = True  # 110 px, 10 of them on object 1: IoU 10 / 200 = 0.05
    assert len(new_masks(labels, [CompactMask.of(candidate)], new_object_iou=0.05, max_covered=1)) == 0
    assert len(new_masks(labels, [CompactMask.of(candidate)], new_object_iou=0.051, max_covered=1)) == 1


@pytest.mark.parametrize("options, message", [
    ({"every": 0}, "reseed every must be None or an integer >= 1"),
    ({}, "re-seeding needs every=K or frames"),
    ({"every": 2, "new_object_iou": 0}, "new_object_iou must be in (0, 1]"),
    ({"every": 2, "max_covered": 1.5}, "max_covered must be in [0, 1]"),
    ({"every": 2, "labels": np.zeros((6, 96, 80), np.uint16), "automatic": OPEN}, "not both"),
])
def test_bad_reseed_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ReseedOptions(**options)


def test_reseed_options_that_misfit_the_movie_fail_when_propagate_is_called(model, movie):
    session = new_session(model, movie)
    with pytest.raises(ValueError, match=r"reseed frame 6 is out of range: the movie has 6 frame\(s\) \(0..5\)"):
        session.propagate(reseed=ReseedOptions(frames=[6]))
    with pytest.raises(ValueError, match=r"reseed labels must be a \(T, Y, X\) label stack of \(6, 96, 80\)"):
        session.propagate(reseed=ReseedOptions(every=1, labels=np.zeros((96, 80), np.uint16)))
    with pytest.raises(ValueError, match="non-negative integers"):
        session.propagate(reseed=ReseedOptions(every=1, labels=np.zeros((6, 96, 80), np.float32)))
    assert session.obj_ids == [1] and session.prompted_frames(1) == [0]  # nothing changed


# ---------------------------------------------------------------------------------------------- cells that enter
def test_reseeding_from_a_label_stack_adds_exactly_the_uncovered_labels_on_the_due_frames(model, movie, stack):
    plain = new_session(model, movie)
    run(plain)
    session = new_session(model, movie)
    yielded = run(session, reseed=ReseedOptions(every=2, frames=[3], labels=stack))
    assert [frame for frame, _ in yielded] == list(range(NUM_FRAMES))

    seen, added = [1], {}
    for frame, ids in yielded:
        assert ids[:len(seen)] == seen  # objects only join, at the end
        added[frame], seen = ids[len(seen):], ids
    assert {frame for frame, ids in added.items() if ids} <= {2, 3, 4}  # every 2nd frame from the start, and 3
    assert any(added.values())
    for frame in (2, 3, 4):
        before = [obj_id for obj_id in session.obj_ids if obj_id not in added[frame]
                  and all(obj_id not in added[t] for t in range(frame + 1, NUM_FRAMES))]
        labels = labels_from_logits(before, session.frame_logits(frame, before)[1])
        candidates = [stack[frame] == value for value in np.unique(stack[frame]) if value != 0]
        expected = [candidates[i] for i in expected_new(labels, candidates, 0.1, 0.5)]
        assert len(added[frame]) == len(expected), frame
        first = max(before) + 1
        assert added[frame] == list(range(first, first + len(expected)))  # next free ids
        for obj_id, mask in zip(added[frame], expected, strict=True):
            assert session.prompted_frames(obj_id) == [frame]
            np.testing.assert_array_equal(session.prompts(obj_id)[frame].mask, mask)
            # tracked from the next frame of the same run on, nothing before its prompt
            logits = session.frame_logits(frame + 1, [obj_id])[1][0] if frame + 1 < NUM_FRAMES else None
            assert logits is None or (logits > 0).any()
            assert (session.frame_logits(frame - 1, [obj_id])[1] == -1024).all()
    # the object that was there is untouched: same prompts, same results as without re-seeding (up to the
    # float rounding of multi-threaded CPU kernels)
    assert session.prompts(1) == plain.prompts(1)
    for frame in range(NUM_FRAMES):
        np.testing.assert_allclose(session.frame_logits(frame, [1])[1], plain.frame_logits(frame, [1])[1], atol=1e-4)


def test_the_entering_cell_is_found_and_its_frame_output_includes_it(model, movie, stack):
    session = new_session(model, movie)
    outputs = {out.frame: out for out in session.propagate(reseed=ReseedOptions(frames=[3], labels=stack))}
    assert session.obj_ids == [1, 2]  # label 9 of frame 3 became object 2; label 7 is object 1 already
    assert outputs[2].obj_ids == [1] and outputs[3].obj_ids == [1, 2]
    np.testing.assert_array_equal(session.prompts(2)[3].mask, stack[3] == 9)
    assert outputs[3].areas([2])[2] > 0 and outputs[5].areas([2])[2] > 0
    np.testing.assert_array_equal(outputs[3].label_image(), session.label_image(3))
    # a second run re-tracks every object and re-seeds nothing new: label 9 is object 2 now
    assert [ids for _, ids in run(session, reseed=ReseedOptions(frames=[3, 4], labels=stack))][-1] == [1, 2]


def test_cancel_after_a_reseeded_frame_leaves_a_consistent_session(model, movie, stack):
    session = new_session(model, movie)
    frames = session.propagate(reseed=ReseedOptions(frames=[3], labels=stack))
    for out in frames:
        if out.frame == 3:
            break
    frames.close()  # cancel
    assert session.obj_ids == [1, 2] and session.prompted_frames(2) == [3]
    assert (session.frame_logits(4, [2])[1] == -1024).all()  # not tracked further yet
    assert [frame for frame, _ in run(session, start=3)] == [3, 4, 5]
    assert (session.frame_logits(4, [2])[1] > 0).any()

    session = new_session(model, movie)
    frames = session.propagate(reseed=ReseedOptions(frames=[3], labels=stack))
    assert [next(frames).frame for _ in range(3)] == [0, 1, 2]
    frames.close()  # cancelled before the re-seeded frame: no new object
    assert session.obj_ids == [1]


def test_a_failure_while_adding_new_objects_leaves_the_session_as_it_was(model, movie, stack, monkeypatch):
    session = new_session(model, movie)
    run(session)
    before = [session.frame_logits(t)[1].copy() for t in range(NUM_FRAMES)]

    real = session._runtime.result_memories

    def broken(results, features):  # encoding the new objects' prompts fails (re-encoding tracked frames works)
        if results[0].from_prompt:
            raise RuntimeError("out of memory")
        return real(results, features)

    monkeypatch.setattr(session._runtime, "result_memories", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(session, start=3, reseed=ReseedOptions(frames=[3], labels=stack))
    monkeypatch.undo()
    assert session.obj_ids == [1]
    for t in range(NUM_FRAMES):
        np.testing.assert_allclose(session.frame_logits(t)[1], before[t], atol=1e-4)
    assert len(run(session)) == NUM_FRAMES


def test_reseeding_by_segmenting_all_adds_the_uncovered_automatic_masks(model, movie):
    session = new_session(model, movie)
    # the start frame is re-seeded when named; random weights find 8 masks there, 1 of them away from object 1
    yielded = run(session, max_frames=2, reseed=ReseedOptions(frames=[0], automatic=OPEN))
    assert [frame for frame, _ in yielded] == [0, 1, 2]
    new = [obj_id for obj_id in session.obj_ids if obj_id != 1]
    labels = labels_from_logits([1], session.frame_logits(0, [1])[1])
    candidates = [m.segmentation for m in generate_masks(model, session.source.normalized(0), OPEN) if m.area]
    expected = [candidates[i] for i in expected_new(labels, candidates, 0.1, 0.5)]
    assert 0 < len(expected) < len(candidates)
    assert len(new) == len(expected) and yielded[0][1] == [1, *new]
    for obj_id, mask in zip(new, expected, strict=True):
        assert session.prompted_frames(obj_id) == [0]
        np.testing.assert_array_equal(session.prompts(obj_id)[0].mask, mask)
        assert (session.frame_logits(2, [obj_id])[1] > -1024).any()  # tracked on


# ---------------------------------------------------------------------------------------------- cells that leave
@pytest.fixture
def absent_from(monkeypatch):
    """Makes SAM 2 judge the given objects absent on tracked frames from a frame on (object score -5), and
    records which objects each frame tracked."""
    real = session_module.track_frame
    plan: dict[int, int] = {}
    tracked: dict[int, list[int]] = {}

    def track_frame(runtime, objects, frame, reverse, pass_start, batch_size):
        results = real(runtime, objects, frame, reverse, pass_start, batch_size)
        tracked[frame] = [obj.obj_id for obj in objects]
        for obj in objects:
            if obj.obj_id in plan and frame >= plan[obj.obj_id] and frame in obj.tracked and frame not in obj.cond:
                result = obj.tracked[frame]
                result.object_score = torch.full_like(result.object_score, -5.0)
        return results

    monkeypatch.setattr(session_module, "track_frame", track_frame)
    return plan, tracked


def test_an_object_absent_on_n_frames_in_a_row_stops_and_a_new_prompt_revives_it(model, movie, absent_from):
    plan, tracked = absent_from
    session = new_session(model, movie)
    session.add_points(0, 2, [[60, 60]], [1])
    run(session)  # without stopping: object 2 has results everywhere
    assert all((session.frame_logits(t, [2])[1] > -1024).any() for t in range(NUM_FRAMES))

    plan[2] = 2
    session.stop_after_absent = 2
    assert session.settings()["stop_after_absent"] == 2
    run(session)
    assert session.stopped_objects() == [2]
    assert tracked[3] == [1, 2] and tracked[4] == [1] and tracked[5] == [1]  # after frame 3 it costs nothing
    assert all((session.frame_logits(t, [2])[1] == -1024).all() for t in (4, 5))  # old results dropped
    assert (session.frame_logits(1, [2])[1] > -1024).any()  # its results before stay
    assert (session.frame_logits(5, [1])[1] > -1024).any()

    run(session, start=4)  # a later run from past the stop leaves it out too
    assert tracked[4] == [1] and session.stopped_objects() == [2]
    run(session, direction="backward", start=5)  # the stop is for forward tracking only
    assert tracked[5] == [1, 2] and tracked[4] == [1, 2]

    session.add_points(4, 2, [[70, 60]], [1])  # a new prompt revives it at once
    assert session.stopped_objects() == []
    run(session)  # absent on 2 and 3 again, stopped, then its prompt on 4 resumes it
    assert tracked[4] == [1, 2] and tracked[5] == [1, 2] and session.stopped_objects() == []
    assert (session.frame_logits(5, [2])[1] > -1024).any()


def test_objects_judged_absent_by_the_model_stop_and_bad_limits_are_refused(movie):
    model = small_model()
    with pytest.raises(ValueError, match="stop_after_absent must be None or an integer >= 1"):
        TrackingSession(model, movie, stop_after_absent=0)
    bias = model.sam_mask_decoder.pred_obj_score_head.layers[2].bias
    with torch.no_grad():
        bias.fill_(-8.0)  # random weights now see no object anywhere
    session = new_session(model, movie, stop_after_absent=1)
    session.add_mask(0, 2, disk(75, 60, 50))
    outputs = [out for out in session.propagate()]
    assert session.stopped_objects() == [1, 2]  # 1 from its click on frame 0, 2 (a mask prompt) from frame 1
    assert float(session._objects[2].tracked[1].object_score) <= 0  # what stopped it: SAM 2's own score
    assert 2 not in session._objects[2].tracked
    assert all((out.logits == -1024).all() for out in outputs[1:])
    assert [1, 2] == outputs[2].obj_ids  # still listed, without results
    session.stop_after_absent = None  # stopping turned off revives every object
    assert session.stopped_objects() == []


def test_reseed_options_refuse_arrays_and_strings_in_one_line():
    assert ReseedOptions(frames=np.array([1, 2])).frames is not None
    with pytest.raises(ValueError, match="re-seeding needs every=K or frames"):
        ReseedOptions(frames=np.array([], dtype=int))
    for name in ("new_object_iou", "max_covered"):
        with pytest.raises(ValueError, match=f"{name} must be a number"):
            ReseedOptions(every=2, **{name: "0.2"})
