"""TrackingSession behaviour that needs no reference: lazy frames, bad input, cancel, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lazy_frames import LazyFrames
from numerics import assert_same_computation
from session_support import IMAGE_SIZE, cells_movie, small_model

from napari_sam2 import FrameError, TrackingSession, UnknownObjectError, labels_from_logits
from napari_sam2.model.sam2 import NO_OBJECT_SCORE


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_tracking_reads_each_frame_once_and_never_the_stack(model):
    frames = LazyFrames(cells_movie(12))
    session = TrackingSession(model, frames)
    sampled = len(frames.reads)
    assert sampled <= 8  # intensity range from a sample of frames
    session.add_points(0, 1, [[30, 25]], [1])
    tracked = [t for t, _, _ in session.propagate()]
    assert tracked == list(range(12))
    tracking_reads = frames.reads[sampled:]
    assert sorted(tracking_reads) == list(range(12))  # O(N): every frame exactly once
    assert session.features.encodes == 12


def test_16bit_intensities_are_not_clipped(model):
    """A movie and the same movie x10 (values up to ~33000) give identical results: nothing is clipped
    at 255 and the robust range follows the data."""
    movie = cells_movie(3, peak=3000.0)
    outputs = []
    for data in (movie, movie * 10):
        assert data.max() > 255
        session = TrackingSession(model, data)
        outputs.append(session.add_points(0, 1, [[30, 25]], [1])[2])
    # The two normalised movies differ only by float rounding:
    assert_same_computation(outputs[0], outputs[1], what="movie vs movie x 10")
    clipped = TrackingSession(model, np.minimum(movie * 10, 255).astype(np.uint16))
    assert np.abs(clipped.add_points(0, 1, [[30, 25]], [1])[2] - outputs[0]).max() > 1e-2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_integer_and_float_movies_track(model, dtype):
    movie = cells_movie(3, peak=200.0 if dtype == np.uint8 else 3000.0).astype(dtype)
    session = TrackingSession(model, movie)
    session.add_points(0, 1, [[30, 25]], [1])
    results = list(session.propagate())
    assert [r[0] for r in results] == [0, 1, 2]
    assert all(r[2].shape == (1, 96, 80) and r[2].dtype == np.float32 for r in results)


def test_bad_input_raises_clear_errors_and_leaves_session_usable(model):
    with pytest.raises(FrameError, match=r"\(T, Y, X\)"):
        TrackingSession(model, np.zeros((96, 80)))
    movie = cells_movie(5).astype(np.float32)
    movie[3, 10, 10] = np.nan
    session = TrackingSession(model, movie)
    session.add_points(0, 1, [[30, 25]], [1])
    before = session.frame_logits(0)[1].copy()
    cases = [
        (FrameError, "out of range", lambda: session.add_points(5, 1, [[30, 25]], [1])),
        (FrameError, "out of range", lambda: session.add_points(-1, 1, [[30, 25]], [1])),
        (ValueError, "outside the frame", lambda: session.add_points(0, 1, [[96.2, 25]], [1])),
        (ValueError, "outside the frame", lambda: session.add_points(0, 2, [[10, -3]], [1])),
        (ValueError, "empty", lambda: session.add_points(0, 1, np.zeros((0, 2)), [])),
        (ValueError, "one entry per point", lambda: session.add_points(0, 1, [[3, 4], [5, 6]], [1])),
        (ValueError, "1 \\(positive\\) or 0", lambda: session.add_points(0, 1, [[3, 4]], [2])),
        (ValueError, "NaN", lambda: session.add_points(0, 1, [[np.nan, 4]], [1])),
        (ValueError, "obj_id", lambda: session.add_points(0, 0, [[3, 4]], [1])),
        (ValueError, "obj_id", lambda: session.add_points(0, "cell", [[3, 4]], [1])),
        (UnknownObjectError, "unknown object id 9", lambda: session.clear_prompts(0, 9)),
        (UnknownObjectError, "unknown object id 9", lambda: session.remove_object(9)),
        (FrameError, "frame 3 contains NaN", lambda: session.add_points(3, 2, [[30, 25]], [1])),
        (ValueError, "mask must have the frame's shape", lambda: session.add_mask(0, 2, np.ones((5, 5), bool))),
        (ValueError, "zero height or width", lambda: session.add_box(0, 2, (10, 10, 10, 40))),
        (ValueError, "direction", lambda: session.propagate(direction="sideways")),
        (ValueError, "max_frames", lambda: session.propagate(max_frames=-1)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    # Nothing above changed the session: one object, same result on frame 0, and it still tracks.
    assert session.obj_ids == [1]
    np.testing.assert_array_equal(session.frame_logits(0)[1], before)
    assert [t for t, _, _ in session.propagate(max_frames=2)] == [0, 1, 2]
    with pytest.raises(FrameError, match="frame 3"):
        list(session.propagate(start=2))  # the NaN frame stops tracking with a clear message ...
    assert np.all(session.frame_logits(2)[1] > NO_OBJECT_SCORE)  # ... and frames done so far stay done


def test_cancel_keeps_frames_done_and_session_consistent(model):
    session = TrackingSession(model, cells_movie(6))
    session.add_points(0, 1, [[30, 25]], [1])
    run = session.propagate()
    done = [next(run) for _ in range(3)]
    run.close()  # the user pressed Cancel
    for frame, ids, logits in done:
        np.testing.assert_array_equal(session.frame_logits(frame)[1], logits)
    assert np.all(session.frame_logits(4)[1] == NO_OBJECT_SCORE)  # not reached
    full = {t: logits for t, _, logits in session.propagate()}
    assert sorted(full) == list(range(6))
    for frame, _, logits in done:
        assert_same_computation(full[frame], logits, what=f"frame {frame}, re-propagated vs first run")


def test_object_prompted_later_is_tracked_from_an_earlier_frame_in_fp32(model):
    """The reference crashes here in fp32 (bf16 memories without object pointers); we don't."""
    session = TrackingSession(model, cells_movie(6))
    session.add_points(0, 1, [[30, 25]], [1])
    session.add_points(3, 2, [[70, 60]], [1])
    results = list(session.propagate(start=0))
    assert [t for t, _, _ in results] == list(range(6))
    for frame, ids, logits in results[:3]:
        assert ids == [1, 2]
        assert np.isfinite(logits).all()
        assert np.ptp(logits[1]) > 0  # a real prediction from object 2's future memory, not a constant


def test_memory_stays_bounded_on_a_long_movie(model):
    num_frames = 40
    session = TrackingSession(model, cells_movie(num_frames, shape=(64, 64)))
    session.add_points(0, 1, [[30, 25]], [1])
    sizes = []
    for frame, _, _ in session.propagate():
        sizes.append(session.memory_bytes()["objects"])
        obj = session._objects[1]
        assert sum(r.maskmem is not None for r in obj.tracked.values()) <= 12
    growth = (sizes[-1] - sizes[20]) / (num_frames - 1 - 20)
    low_res = (IMAGE_SIZE // 4) ** 2 * 4
    # Per frame: the logits' crop (at most the whole map, plus its 16-byte fill), pointer and score.
    assert 256 * 4 + 4 < growth <= low_res + 16 + 256 * 4 + 4
    assert session.memory_bytes()["features"] <= session.features.capacity * session.features.get(0).nbytes


def test_results_labels_removal_and_reset(model):
    session = TrackingSession(model, cells_movie(4))
    frame, ids, logits = session.add_box(1, 5, (15, 10, 50, 45))
    assert (frame, ids, logits.shape, logits.dtype) == (1, [5], (1, 96, 80), np.float32)
    frame, ids, logits = session.add_points(1, 2, [[70, 60], [80, 70]], [1, 0])
    assert ids == [5, 2] and logits.shape == (2, 96, 80)
    labels = labels_from_logits(ids, logits)
    assert set(np.unique(labels)) <= {0, 2, 5}
    assert session.prompted_frames(5) == [1]
    session.clear_prompts(1, 5)
    with pytest.raises(ValueError, match=r"object\(s\) \[5\] have no prompts"):
        next(session.propagate())
    session.remove_object(5)
    assert session.obj_ids == [2]
    assert [t for t, _, _ in session.propagate()] == [1, 2, 3]
    session.reset()
    assert session.obj_ids == []
    with pytest.raises(ValueError, match="no objects"):
        next(session.propagate())


def test_memories_are_stored_in_bfloat16_on_the_storage_device(model):
    session = TrackingSession(model, cells_movie(3), storage_device="cpu")
    session.add_points(0, 1, [[30, 25]], [1])
    list(session.propagate())
    obj = session._objects[1]
    assert obj.cond[0].maskmem.dtype == torch.bfloat16
    assert all(r.maskmem.dtype == torch.bfloat16 and r.maskmem.device.type == "cpu" for r in obj.tracked.values())
