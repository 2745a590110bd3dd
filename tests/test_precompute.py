"""Speculative precompute (TrackingSession.precompute): clicks after it equal plain clicks, a stop leaves the
session as it was, and a precomputed conditioning that is out of date is never used."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from numerics import assert_same_computation
from session_support import cells_movie, small_model

from napari_sam2 import TrackingSession
from napari_sam2.engine import prompting
from napari_sam2.model import cpu_workers, interrupt
from napari_sam2.model.memory_attention import MemoryAttention

CORRECTION = (5, 1, [(50, 40)], [1])  # frame, object, points, labels: a click on a tracked frame


@pytest.fixture(scope="module")
def model():
    return small_model()


def tracked_session(model) -> TrackingSession:
    """Object 1 clicked on frame 0 and tracked through 8 frames. With a 2-frame feature cache frame 5's
    features are gone; two of the spatial memories a click there reads (frames 2 and 3) are dropped as on a
    long movie (they are re-encoded exactly when needed)."""
    session = TrackingSession(model, cells_movie(8), feature_cache_size=2)
    session.add_points(0, 1, [(30, 25)], [1])
    list(session.propagate())
    obj = session._objects[1]
    for t in (2, 3):
        obj.tracked[t].maskmem = None
        obj.resident_memories.discard(t)
    assert 5 not in session.features
    return session


def count_conditioning(monkeypatch) -> list[int]:
    """Record the frames on which a click runs memory conditioning itself."""
    calls: list[int] = []
    plain = prompting.condition

    def counted(runtime, obj, frame, *args, **kwargs):
        calls.append(frame)
        return plain(runtime, obj, frame, *args, **kwargs)

    monkeypatch.setattr(prompting, "condition", counted)
    return calls


def snapshot(session: TrackingSession) -> dict:
    """What precompute must leave alone when stopped (and, for objects, also when it finishes)."""
    return {
        "features": list(session.features._entries), "encodes": session.features.encodes,
        "precomputed": session._precomputed._entry,
        "objects": {obj_id: (sorted(o.pending), sorted(o.cond), sorted(o.tracked), dict(o.direction),
                             set(o.resident_memories), o.revision,
                             sorted(t for t, r in o.tracked.items() if r.maskmem is not None))
                    for obj_id, o in session._objects.items()},
    }


def test_click_on_a_precomputed_new_frame_equals_a_plain_click(model):
    session, plain = (TrackingSession(model, cells_movie(4)) for _ in range(2))
    assert session.precompute(2) is True
    assert 2 in session.features and session.features.encodes == 1
    frame, ids, logits = session.add_points(2, 1, [(40, 30)], [1])
    assert session.features.encodes == 1  # the click encoded nothing
    assert np.array_equal(logits, plain.add_points(2, 1, [(40, 30)], [1])[2])
    assert session.precompute(2, obj_id=1) is True  # a first prompt there: no memory attention to do
    assert session._precomputed.nbytes == 0


def test_correction_on_a_precomputed_tracked_frame_equals_a_plain_one(model, monkeypatch):
    session, plain = tracked_session(model), tracked_session(model)
    before = snapshot(session)
    assert session.precompute(5, obj_id=1) is True
    after = snapshot(session)
    assert after["objects"] == before["objects"]  # re-encoded memories were not kept
    assert 5 in session.features and session.memory_bytes()["precomputed"] == 256 * 8 * 8 * 4
    calls = count_conditioning(monkeypatch)
    encodes = session.features.encodes
    corrected = session.add_points(*CORRECTION)
    assert calls == [] and session.features.encodes == encodes  # only the heads ran
    assert session._precomputed.nbytes == 0  # used up
    expected = plain.add_points(*CORRECTION)
    assert_same_computation(corrected[2], expected[2], what="precomputed vs plain correction")
    assert np.array_equal(corrected[2], expected[2])  # same code on the same inputs
    # The session goes on exactly as the plain one.
    for (_, _, a), (_, _, b) in zip(session.propagate(), plain.propagate(), strict=True):
        assert np.array_equal(a, b)


def test_box_uses_the_precomputed_conditioning_too(model, monkeypatch):
    session, plain = tracked_session(model), tracked_session(model)
    assert session.precompute(5, obj_id=1)
    calls = count_conditioning(monkeypatch)
    box = session.add_box(5, 1, (40, 30, 60, 50))
    assert calls == []
    assert np.array_equal(box[2], plain.add_box(5, 1, (40, 30, 60, 50))[2])


def stop_after(polls: int):
    """A should_stop that turns True at its ``polls``-th call (thread-safe enough: the count only grows)."""
    counter = itertools.count(1)
    return lambda: next(counter) >= polls


@pytest.mark.parametrize("polls", [1, 3, 12], ids=["at-once", "in-the-encoder", "later"])
def test_a_stopped_encode_leaves_the_session_unchanged(model, polls):
    session = TrackingSession(model, cells_movie(4))
    session.add_points(0, 1, [(30, 25)], [1])
    before = snapshot(session)
    assert session.precompute(2, obj_id=1, should_stop=stop_after(polls)) is False
    assert snapshot(session) == before and 2 not in session.features


@pytest.mark.parametrize("where", ["re-encoding a memory", "in memory attention"])
def test_a_stopped_conditioning_leaves_the_session_unchanged(model, where):
    session, plain = tracked_session(model), tracked_session(model)
    assert session.precompute(5)  # the encode completes; now only the conditioning is left to do
    before = snapshot(session)
    polls: list[int] = []
    counting = tracked_session(model)
    counting.precompute(5)
    assert counting.precompute(5, obj_id=1, should_stop=lambda: polls.append(1) and False)
    # About 30 polls per re-encoded memory's image encode, then 4 memory-attention layers of 5 each.
    stop_at = 10 if where == "re-encoding a memory" else len(polls) - 3
    assert session.precompute(5, obj_id=1, should_stop=stop_after(stop_at)) is False
    assert snapshot(session) == before
    # Nothing half-done is used: the correction is computed afresh and equals the plain one.
    assert np.array_equal(session.add_points(*CORRECTION)[2], plain.add_points(*CORRECTION)[2])


@pytest.mark.parametrize("change", ["propagate", "prompt elsewhere", "clear prompts", "remove and re-add"])
def test_a_stale_precomputed_conditioning_is_not_used(model, monkeypatch, change):
    session = tracked_session(model)
    assert session.precompute(5, obj_id=1)
    if change == "propagate":
        session.add_points(3, 1, [(40, 30)], [1])
        list(session.propagate(start=3))  # frame 5 is tracked again, from other memories
    elif change == "prompt elsewhere":
        session.add_points(7, 1, [(60, 50)], [1])  # not read by memory attention yet, but the object changed
    elif change == "clear prompts":
        session.clear_prompts(0, 1)
    else:
        session.remove_object(1)
        session.add_points(0, 1, [(30, 25)], [1])
        list(session.propagate(max_frames=5))
    assert not session._precomputed.valid_for(session._objects[1], 5)
    calls = count_conditioning(monkeypatch)
    session.add_points(*CORRECTION)
    assert calls == [5]  # computed afresh, by the plain click's own code


def test_precompute_checks_its_arguments(model):
    session = TrackingSession(model, cells_movie(3))
    with pytest.raises(ValueError, match="obj_id"):
        session.precompute(0, obj_id=0)
    with pytest.raises(Exception, match="out of range"):
        session.precompute(3)
    assert session.precompute(1, obj_id=7)  # an object that does not exist yet: the encode only
    assert session.obj_ids == []


@torch.no_grad()
def test_memory_attention_polls_the_stop_check_in_every_thread():
    """The check installed by stop_when reaches the CPU cross-attention's worker threads (blocks of
    queries) and stops the call there; outside stop_when nothing is polled."""
    import threading

    torch.manual_seed(0)
    attention = MemoryAttention(num_layers=1).eval()
    curr = torch.randn(32 * 32, 1, 256)
    memory, memory_pos = torch.randn(2 * 1024, 1, 64), torch.randn(2 * 1024, 1, 64)
    threads: set[str] = set()
    lock = threading.Lock()

    def record() -> bool:
        with lock:
            threads.add(threading.current_thread().name)
        return False

    with interrupt.stop_when(record):
        attention(curr, memory, curr, memory_pos)
    if cpu_workers._pool(torch.get_num_threads()) is not None:  # workers usable here
        assert any(name.startswith("napari-sam2-cpu") for name in threads)
    with interrupt.stop_when(stop_after(3)), pytest.raises(interrupt.Interrupted):
        attention(curr, memory, curr, memory_pos)
    assert interrupt.current_stop_check() is None
    attention(curr, memory, curr, memory_pos)  # no check installed: runs through
