"""Memories in batches: dropped memories re-encoded frame by frame (each frame encoded once, however many
objects), and objects with different memory layouts tracked in one batch (padded, masked memories)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numerics import assert_same_computation
from reference_support import max_abs_diff
from session_support import cells_movie, small_model

from napari_sam2 import TrackingSession
from napari_sam2.engine import propagation
from napari_sam2.engine.feature_cache import FeatureCache
from napari_sam2.model.memory_attention import MemoryAttention
from napari_sam2.model.memory_padding import (
    MemoryCapacity,
    ObjectMemory,
    batch_capacity,
    condition_on_mixed_memories,
    pad_objects,
)
from napari_sam2.model.sam2 import ImageFeatures, MemoryItem

CLICKS = [(30, 25), (60, 60), (80, 20), (20, 60)]  # (row, col) on frame 0, one per object


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def tiny_model():
    """At 64 x 64 pixels: the 40-frame runs below take seconds."""
    return small_model(image_size=64)


def count_encodes(session: TrackingSession) -> list[int]:
    """Record every image encode of ``session`` (one entry per encoded image)."""
    calls: list[int] = []
    runtime = session._runtime
    plain = runtime.encode_image

    def counted(image):
        calls.append(1)
        return plain(image)

    runtime.encode_image = counted
    return calls


def back_from_the_middle(model, num_objects: int, drop: bool = True, look_first: bool = False,
                         num_frames: int = 40, middle: int = 20):
    """Forward through a movie from frame 0, then backward from ``middle``: (encodes of the forward run,
    encodes at each backward step, the backward run's logits). ``drop=False`` keeps every memory;
    ``look_first`` has the features of ``middle`` cached before the backward run."""
    session = TrackingSession(model, cells_movie(num_frames), prefetch_frames=0)
    for obj_id, point in enumerate(CLICKS[:num_objects], start=1):
        session.add_points(0, obj_id, [point], [1])
    calls = count_encodes(session)
    keep = propagation.drop_old_memories
    if not drop:
        propagation.drop_old_memories = lambda obj, keep_near: None
    try:
        list(session.propagate(0, "forward"))
        forward = len(calls)
        if look_first:
            session.precompute(middle)
        base, steps, logits = len(calls), [], []
        for _, _, frame_logits in session.propagate(middle, "backward"):
            steps.append(len(calls))
            logits.append(np.array(frame_logits))
    finally:
        propagation.drop_old_memories = keep
    encodes = np.diff([base, *steps]).tolist()
    assert len(session.features._entries) <= session.features.capacity  # the room made for a step is given back
    return forward, encodes, logits


@pytest.mark.parametrize("num_objects", [1, 4])
def test_dropped_memories_are_re_encoded_once_per_frame(tiny_model, num_objects):
    """Backward from frame 20 reads the memories of frames 21-26, dropped during the forward run: each of
    those frames is encoded once, with 1 object as with 4 (one-by-one re-encoding took 7 encodes at the
    first step with 1 object, 25 with 4), and the results are those of a session that never dropped them,
    bit for bit (the memories are re-encoded in batches of the size they were first encoded in)."""
    forward, encodes, logits = back_from_the_middle(tiny_model, num_objects)
    assert forward == 39  # frame 0 was encoded for the clicks
    assert encodes == [7] + [1] * 20  # frame 20 and frames 21-26, then one per frame
    _, kept_encodes, kept_logits = back_from_the_middle(tiny_model, num_objects, drop=False)
    assert kept_encodes == [1] * 21
    for frame, (got, expected) in enumerate(zip(logits, kept_logits, strict=True)):
        assert np.array_equal(got, expected), f"frame {20 - frame}: {max_abs_diff(got, expected):.3g}"


def test_a_cached_frame_stays_cached_while_memories_are_re_encoded(tiny_model):
    """16 frames, backward from frame 4 (looked at before): it reads frames 5-10, of which 6-9 were dropped;
    re-encoding those 4 frames does not push frame 4 out of the 4-frame feature cache."""
    _, encodes, _ = back_from_the_middle(tiny_model, 4, look_first=True, num_frames=16, middle=4)
    assert encodes == [4] + [1] * 4


def test_feature_cache_holding_makes_room_for_a_step():
    encoded: list[int] = []
    cache = FeatureCache(lambda t: encoded.append(t) or t, capacity=2)
    cache.get(0), cache.get(1)
    with cache.holding(3):
        for t in (5, 6, 7):
            cache.get(t)
        assert list(cache._entries) == [0, 1, 5, 6, 7]
        cache.get(0)  # still there
    assert list(cache._entries) == [7, 0] and encoded == [0, 1, 5, 6, 7]
    with cache.holding(0):
        cache.get(3)
    assert list(cache._entries) == [0, 3]


def prompt_mixed(session: TrackingSession) -> None:
    """Six objects prompted on different frames: on frame 0 objects 3, 4 and 5 are tracked, each with its own
    layout (one, two and three conditioning frames ahead); later frames mix more layouts."""
    session.add_points(0, 1, [(30, 25)], [1])
    session.add_points(0, 2, [(60, 60)], [1])
    session.add_points(2, 3, [(80, 20)], [1])
    session.add_points(2, 4, [(20, 60)], [1])
    session.add_points(5, 4, [(25, 60)], [1])
    session.add_box(4, 5, (40, 30, 60, 50))
    session.add_points(6, 5, [(60, 45)], [1])
    session.add_points(7, 5, [(62, 47)], [1])
    session.add_points(0, 6, [(50, 40)], [1])
    session.add_points(3, 6, [(55, 45)], [1])


def mixed_session(model, object_batch_size: int) -> TrackingSession:
    session = TrackingSession(model, cells_movie(8), object_batch_size=object_batch_size)
    prompt_mixed(session)
    return session


def track(session: TrackingSession) -> list[np.ndarray]:
    return [np.array(logits) for _, _, logits in session.propagate(0)]


def test_objects_of_different_layouts_share_one_batch(model, monkeypatch):
    """Tracked 16 at a time, the six objects of up to five layouts go through one batched pass per frame. The
    padded, masked memories give each object exactly its own conditioning: the session equals, bit for bit, one
    with the same batches whose objects are conditioned one by one; against tracking them one by one the
    batched mask decoder and memory encoder round a little differently (as for objects of one layout)."""
    passes: list[int] = []
    layouts: dict[int, set] = {}
    plain_heads, plain_layout = model.predict_masks, propagation.memory_layout

    def counted_heads(conditioned, *args, **kwargs):
        passes.append(conditioned.shape[0])
        return plain_heads(conditioned, *args, **kwargs)

    def recorded_layout(runtime, obj, frame, reverse, *args):
        memories, pointers = plain_layout(runtime, obj, frame, reverse, *args)
        layouts.setdefault(frame, set()).add((tuple(m.t_pos for m in memories), tuple(d for d, _ in pointers)))
        return memories, pointers

    session = mixed_session(model, 16)
    with monkeypatch.context() as patch:
        patch.setattr(model, "predict_masks", counted_heads)
        patch.setattr(propagation, "memory_layout", recorded_layout)
        batched = track(session)
    # One pass per frame, holding all its tracked objects (frame 0: objects 3, 4 and 5).
    tracked = [sum(t not in obj.cond for obj in session._objects.values()) for t in range(8)]
    assert passes == tracked and passes[0] == 3
    assert len(layouts[0]) == 3 and min(len(layouts[t]) for t in range(8)) >= 3

    def each_alone(model, image, layouts, num_frames):
        return torch.cat([model.condition_on_memory(image, m, p, num_frames) for m, p in layouts])

    with monkeypatch.context() as patch:
        patch.setattr(propagation, "condition_on_mixed_memories", each_alone)
        conditioned_alone = track(mixed_session(model, 16))
    one_by_one = track(mixed_session(model, 1))
    for frame, (got, alone, single) in enumerate(zip(batched, conditioned_alone, one_by_one, strict=True)):
        assert np.array_equal(got, alone), f"frame {frame}: {max_abs_diff(got, alone):.3g}"
        assert_same_computation(got, single, what=f"frame {frame}, mixed batch vs one by one")
    assert max_abs_diff(batched[1][0], batched[1][2]) > 1e-2  # different objects, a real comparison


def random_layouts(model, gen: torch.Generator):
    """(image, layouts): one frame's features and four objects' memories of different layouts (one, four and
    seven spatial memories; no pointers, three, fifteen), random values stored as a session stores them."""
    side = model.embedding_size
    image = ImageFeatures(feat=torch.randn(1, 256, side, side, generator=gen),
                          pos=torch.randn(1, 256, side, side, generator=gen), high_res=[])

    def memories(t_pos):
        return [MemoryItem(torch.randn(1, 64, side, side, generator=gen).to(torch.bfloat16), t) for t in t_pos]

    def pointers(distances):
        return [(d, torch.randn(1, 256, generator=gen)) for d in distances]

    return image, [(memories([0]), pointers([1])), (memories([0, 0, 5, 6]), pointers([3, 1, 2])),
                   (memories([0]), []), (memories(range(7)), pointers(range(1, 16)))]


@pytest.mark.parametrize("value_folding", ["auto", "sdpa", "off"])
@torch.inference_mode()
def test_mixed_conditioning_is_each_objects_own(model, value_folding):
    """Each object of a mixed batch gets exactly what condition_on_memory gives it alone (eager, on the CPU:
    the padded slots are dropped again before the attention kernels)."""
    image, layouts = random_layouts(model, torch.Generator().manual_seed(0))
    model.memory_attention.value_folding = value_folding
    try:
        mixed = condition_on_mixed_memories(model, image, layouts, 20)
        alone = [model.condition_on_memory(image, memories, pointers, 20) for memories, pointers in layouts]
    finally:
        model.memory_attention.value_folding = "auto"
    assert mixed.shape == (4, 256, model.embedding_size, model.embedding_size)
    for b, single in enumerate(alone):
        assert torch.equal(mixed[b], single[0]), f"object {b}: {max_abs_diff(mixed[b], single[0]):.3g}"


def test_pad_objects_layout_and_masks():
    """Each object's spatial memories fill the first slots and its pointer tokens the first pointer slots."""
    hw = 4

    def obj(num_spatial: int, num_pointers: int, value: float) -> ObjectMemory:
        tokens = torch.full((num_spatial * hw + 4 * num_pointers, 1, 3), value)
        return ObjectMemory(tokens, tokens + 0.5, num_spatial, 4 * num_pointers)

    objects = [obj(1, 2, 1.0), obj(3, 0, 2.0)]
    capacity = batch_capacity(objects)
    assert capacity == MemoryCapacity(3, 2)
    padded = pad_objects(objects, capacity)
    assert padded.memory.shape == (3 * hw + 8, 2, 3) and padded.mask.shape == (2, 3 * hw + 8)
    assert padded.num_pointer_tokens == 8
    expected = torch.zeros(2, 3 * hw + 8, dtype=torch.bool)
    expected[0, :hw] = expected[0, 3 * hw:] = True
    expected[1, :3 * hw] = True
    assert torch.equal(padded.mask, expected)
    assert torch.equal(padded.memory[:, 0][expected[0]], torch.ones(hw + 8, 3))
    assert torch.equal(padded.memory_pos[:, 1][expected[1]], torch.full((3 * hw, 3), 2.5))
    assert not padded.memory.transpose(0, 1)[~padded.mask].any()
    with pytest.raises(ValueError, match="differ in size"):
        pad_objects([objects[0], ObjectMemory(torch.zeros(5, 1, 3), torch.zeros(5, 1, 3), 1, 0)], capacity)


@torch.no_grad()
def test_per_object_key_masks_in_memory_attention():
    """A (B, M) key mask per object: on the CPU's objects-one-by-one path and on the batched SDPA path (one
    frame per object) each object gets its unpadded memory's output; a mask that does not leave out whole
    memories is applied as a mask (not by dropping keys), the same as the generic path."""
    torch.manual_seed(0)
    attention = MemoryAttention(num_layers=2).eval()
    hw, gen = 16, torch.Generator().manual_seed(1)
    frame = torch.randn(hw, 1, 256, generator=gen)
    sizes = [(1, 2), (3, 0), (2, 5)]  # (spatial memories, pointers) per object
    objects = [ObjectMemory(torch.randn(s * hw + 4 * p, 1, 64, generator=gen),
                            torch.randn(s * hw + 4 * p, 1, 64, generator=gen), s, 4 * p) for s, p in sizes]
    alone = [attention(frame, o.memory, frame, o.memory_pos, num_obj_ptr_tokens=o.num_pointer_tokens)
             for o in objects]
    padded = pad_objects(objects, batch_capacity(objects))
    inputs = {"memory": padded.memory, "memory_pos": padded.memory_pos,
              "num_obj_ptr_tokens": padded.num_pointer_tokens, "memory_mask": padded.mask}
    shared = attention(frame, curr_pos=frame, **inputs)  # one frame, three objects: one by one
    per_object = attention(frame.expand(-1, 3, -1), curr_pos=frame.expand(-1, 3, -1), **inputs)  # batched SDPA
    for b, single in enumerate(alone):
        assert torch.equal(shared[:, b], single[:, 0])
        assert_same_computation(per_object[:, b], single[:, 0], what=f"object {b}, batched masked path")
    # Half a spatial memory masked out: no longer whole slots, so a real key mask on the CPU path.
    mask = padded.mask.clone()
    mask[1, hw // 2:hw] = False
    inputs["memory_mask"] = mask
    partial = attention(frame, curr_pos=frame, **inputs)
    attention.value_folding = "off"  # projected values, torch's SDPA with the mask
    generic = attention(frame, curr_pos=frame, **inputs)
    assert_same_computation(partial, generic, what="partly masked memory, folded vs generic")
    assert max_abs_diff(partial[:, 1], shared[:, 1]) > 1e-3 and torch.equal(partial[:, 0], shared[:, 0])


@torch.inference_mode()
def test_compiled_mixed_batches_share_one_graph(model):
    """Compiled, mixed batches of 3 and 4 objects run in one graph (objects dimension dynamic), as eager."""
    image, layouts = random_layouts(model, torch.Generator().manual_seed(2))
    eager = condition_on_mixed_memories(model, image, layouts, 20)
    model.use_compiled(backend="eager")
    try:
        four = condition_on_mixed_memories(model, image, layouts, 20)
        three = condition_on_mixed_memories(model, image, layouts[1:], 20)
        assert model.compile_counts()["memory_attention"] == 1
        assert model._memory_capacity == MemoryCapacity()
    finally:
        model.use_compiled(False)
    assert_same_computation(four, eager, what="compiled vs eager mixed batch")
    assert_same_computation(three, eager[1:], what="compiled vs eager mixed batch of 3")
