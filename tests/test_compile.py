"""torch.compile of the model (CPU): fixed-size memory, graph counts, and which errors fall back to eager.

Dynamo traces, guards and recompiles the same way whatever the backend, so the graph counts are taken with
the cheap "eager" backend (no code generation); one test compiles memory attention with inductor.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from numerics import assert_same_computation
from session_support import cells_movie, small_model

from napari_sam2 import TrackingSession
from napari_sam2.model.compiled import CompiledWithFallback, is_compile_failure
from napari_sam2.model.interrupt import Interrupted
from napari_sam2.model.memory_attention import MemoryAttention
from napari_sam2.model.memory_padding import GROWTH_STEP, MemoryCapacity, pad_memory
from napari_sam2.model.memory_selection import memory_frames, pointer_frames
from napari_sam2.model.sam2 import ImageFeatures, MemoryItem

COMPILE_LOG = "napari_sam2.model.compiled"


def test_capacity_starts_at_one_conditioning_frame_and_grows_by_whole_steps():
    capacity = MemoryCapacity()
    assert (capacity.spatial_slots, capacity.pointer_slots) == (7, 16)
    assert capacity.fit(7, 16) == capacity  # fits: unchanged
    # Both kinds of slots grow together, by the steps the larger need takes:
    assert capacity.fit(8, 3) == capacity.fit(2, 17) == MemoryCapacity(7 + GROWTH_STEP, 16 + GROWTH_STEP)
    grown = capacity.fit(7 + GROWTH_STEP + 1, 17)
    assert grown == MemoryCapacity(7 + 2 * GROWTH_STEP, 16 + 2 * GROWTH_STEP)
    assert grown.fit(1, 1) == grown  # never shrinks


def test_padded_layout_and_mask():
    """Spatial memories fill the first slots, pointers the first pointer slots; the rest is zeros, masked."""
    hw, batch = 4, 2
    spatial = torch.arange(1, 2 * hw * batch * 3 + 1, dtype=torch.float32).view(2 * hw, batch, 3)
    pointers = -torch.arange(1, 8 * batch * 3 + 1, dtype=torch.float32).view(8, batch, 3)
    memory = torch.cat([spatial, pointers])
    padded = pad_memory(memory, memory + 0.5, num_spatial=2, num_pointer_tokens=8,
                        capacity=MemoryCapacity(3, 4))
    assert padded.memory.shape == (3 * hw + 4 * 4, batch, 3) and padded.num_pointer_tokens == 16
    assert torch.equal(padded.memory[:2 * hw], spatial) and torch.equal(padded.memory[3 * hw:3 * hw + 8], pointers)
    assert torch.equal(padded.memory_pos[:2 * hw], spatial + 0.5)
    expected_mask = torch.zeros(3 * hw + 16, dtype=torch.bool)
    expected_mask[:2 * hw] = expected_mask[3 * hw:3 * hw + 8] = True
    assert torch.equal(padded.mask, expected_mask)
    assert not padded.memory[~padded.mask].any()
    with pytest.raises(ValueError, match="do not fit"):
        pad_memory(memory, memory, 2, 8, MemoryCapacity(1, 4))
    with pytest.raises(ValueError, match="equal memories"):
        pad_memory(memory[1:], memory[1:], 2, 8, MemoryCapacity(3, 4))


def frame_inputs(model, frame: int, batch: int, num_frames: int, gen: torch.Generator):
    """What the tracker hands condition_on_memory on ``frame`` of a movie prompted on frame 0 and tracked
    forward up to it: the spatial memories of frame 0 and of the (up to 6) previous frames, and the object
    pointers of frame 0 and of the (up to 15) previous frames; random values."""
    side = model.embedding_size
    image = ImageFeatures(feat=torch.randn(1, 256, side, side, generator=gen),
                          pos=torch.randn(1, 256, side, side, generator=gen), high_res=[])
    tracked = set(range(1, frame))
    memories = [MemoryItem(torch.randn(batch, 64, side, side, generator=gen).to(torch.bfloat16), t_pos)
                for t_pos, _ in memory_frames(frame, [0], tracked, reverse=False)]
    pointers = [(distance, torch.randn(batch, 256, generator=gen))
                for distance, _, _ in pointer_frames(frame, [0], tracked, False, num_frames)]
    return image, memories, pointers


@torch.inference_mode()
def run_frames(model, frames: range, batch: int, num_frames: int, seed: int = 0) -> list[torch.Tensor]:
    """condition_on_memory on ``frames`` (inputs of :func:`frame_inputs`), under inference mode as in a session."""
    gen = torch.Generator().manual_seed(seed)
    return [model.condition_on_memory(*frame_inputs(model, t, batch, num_frames, gen), num_frames) for t in frames]


def test_memory_layouts_of_a_movie():
    """The schedule the compile tests run: memory from 1 to 7 frames, pointers from 1 to 16."""
    model = small_model()
    gen = torch.Generator().manual_seed(0)
    sizes = [tuple(map(len, frame_inputs(model, t, 1, 20, gen)[1:])) for t in (1, 7, 16, 19)]
    assert sizes == [(1, 1), (7, 7), (7, 16), (7, 16)]


@pytest.fixture(scope="module")
def eager_model():
    """small_model() and, for the same inputs, eager results: 18 frames at batch 1, 2, 3 and 5."""
    model = small_model()
    return model, {batch: run_frames(model, range(1, 19), batch, 20, seed=batch) for batch in (1, 2, 3, 5)}


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_memory_attention_compiles_once_per_batch_kind(eager_model, backend):
    """Over a movie where the memory grows from 1 to 7 frames and the pointers from 1 to 16, the padded
    memory needs one graph per batch kind: one for a single object, one for every larger batch (marked
    dynamic), and no recompile after that; results as eager."""
    model, eager = eager_model
    model.use_compiled(backend=backend)
    try:
        counts = []
        for batch in (1, 2, 3, 1, 5):
            compiled = run_frames(model, range(1, 19), batch, 20, seed=batch)
            counts.append(model.compile_counts()["memory_attention"])
            for t, (a, b) in enumerate(zip(compiled, eager[batch], strict=True), start=1):
                assert_same_computation(a, b, what=f"frame {t}, batch {batch}, {backend} vs eager")
        assert counts == [1, 2, 2, 2, 2]
        runner = model._compiled["memory_attention"]
        assert runner.active and runner.error is None
        assert model._memory_capacity == MemoryCapacity()
        assert model.compile_counts()["image_encoder"] == 0  # not called here
    finally:
        model.use_compiled(False)


def test_more_conditioning_frames_grow_the_capacity(eager_model):
    """A second conditioning frame (8 spatial memories) grows the capacity by one step: one more graph, in
    which the sizes turn dynamic, so that growing again (12 conditioning frames) needs none."""
    model, _ = eager_model
    model.use_compiled(backend="eager")
    gen = torch.Generator().manual_seed(3)

    @torch.inference_mode()  # as the session runs (inference tensors and normal ones have separate graphs)
    def frame_with_conditioning_frames(count: int) -> None:
        image, memories, pointers = frame_inputs(model, 10, 1, 20, gen)
        memories[1:1] = [MemoryItem(memories[0].features.clone(), 0) for _ in range(count - 1)]
        pointers[1:1] = [(d, pointers[0][1].clone()) for d in range(2, count + 1)]
        model.condition_on_memory(image, memories, pointers, 20)

    try:
        run_frames(model, range(1, 4), 1, 20)
        assert model.compile_counts()["memory_attention"] == 1
        frame_with_conditioning_frames(2)
        frame_with_conditioning_frames(2)
        assert model._memory_capacity == MemoryCapacity(7 + GROWTH_STEP, 16 + GROWTH_STEP)
        assert model.compile_counts()["memory_attention"] == 2
        run_frames(model, range(1, 4), 1, 20)  # the grown capacity stays: no graph for the smaller memory
        frame_with_conditioning_frames(12)
        assert model._memory_capacity == MemoryCapacity(7 + 3 * GROWTH_STEP, 16 + 3 * GROWTH_STEP)
        assert model.compile_counts()["memory_attention"] == 2
    finally:
        model.use_compiled(False)


def test_value_folding_switch_on_a_compiled_model(eager_model):
    """Turning value folding off (as a GPU benchmark would) costs one recompile and keeps the results."""
    model, eager = eager_model
    model.use_compiled(backend="eager")
    try:
        run_frames(model, range(1, 3), 1, 20, seed=1)
        model.fold_values(False)
        assert model.memory_attention.value_folding == "off"
        unfolded = run_frames(model, range(1, 19), 1, 20, seed=1)
        assert model.compile_counts()["memory_attention"] == 2
        for t, (a, b) in enumerate(zip(unfolded, eager[1], strict=True), start=1):
            assert_same_computation(a, b, what=f"frame {t}, compiled unfolded vs eager folded")
    finally:
        model.fold_values()
        model.use_compiled(False)
    assert model.memory_attention.value_folding == "auto"


def test_sessions_of_one_model_reuse_the_graphs():
    """A movie of 17 frames (memory up to 7 frames, pointers up to 16), tracked by sessions of one model with
    1, 3, 2 and 1 objects: the image encoder compiles one graph in all, memory attention exactly two (one
    object, several objects)."""
    model = small_model()
    model.use_compiled(backend="eager")
    counts = []
    for num_objects in (1, 3, 2, 1):
        session = TrackingSession(model, cells_movie(17), contrast_limits=(0, 4000), compile_model=True)
        for obj_id in range(1, num_objects + 1):
            session.add_points(0, obj_id, [(20 + 8 * obj_id, 25)], [1])
        assert sum(1 for _ in session.propagate(0, "forward")) == 17
        counts.append(model.compile_counts())
    assert [c["memory_attention"] for c in counts] == [1, 2, 2, 2]
    # The image encoder's single graph serves every session: prefetched frames are inference tensors like
    # the others, and the position-encoding cache is not read while tracing.
    assert [c["image_encoder"] for c in counts] == [1, 1, 1, 1]
    assert all(r.options == {"backend": "eager"} for r in model._compiled.values())  # compile_model kept them


def test_use_compiled_again_keeps_the_graphs():
    model = small_model()
    model.use_compiled(backend="eager")
    runners = dict(model._compiled)
    model.use_compiled()
    model.use_compiled(backend="eager")
    assert model._compiled == runners
    model.use_compiled(backend="aot_eager")
    assert model._compiled != runners and all(r.compiles == 0 for r in model._compiled.values())
    model.use_compiled(False)
    assert model.compile_counts() == {}


def attention_inputs(batch: int = 1):
    gen = torch.Generator().manual_seed(2)
    return (torch.randn(16, 1, 256, generator=gen), torch.randn(32, batch, 64, generator=gen))


def small_attention() -> MemoryAttention:
    torch.manual_seed(0)
    return MemoryAttention(num_layers=1).eval()


def test_compile_failure_falls_back_with_one_log_line(caplog):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here\nsecond line")

    module = small_attention()
    runner = CompiledWithFallback(module, backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger=COMPILE_LOG), torch.no_grad():
        first = runner(*attention_inputs())
        second = runner(*attention_inputs())
        expected = module(*attention_inputs())
    assert [r.getMessage() for r in caplog.records if r.name == COMPILE_LOG] == [
        "torch.compile failed for MemoryAttention (RuntimeError: no compiler here); running it uncompiled"]
    assert not runner.active and is_compile_failure(runner.error)
    assert torch.equal(first, expected) and torch.equal(second, expected)


def raising_at_run_time(error: Exception):
    """A backend whose compiled graphs raise ``error`` when run."""
    def backend(graph, example_inputs):
        def run(*args):
            raise error
        return run
    return backend


def raising_at_compile_time(error: Exception):
    def backend(graph, example_inputs):
        raise error
    return backend


@pytest.mark.parametrize("backend, expected", [
    (raising_at_run_time(torch.OutOfMemoryError("CUDA out of memory")), torch.OutOfMemoryError),
    (raising_at_run_time(RuntimeError("an illegal memory access")), RuntimeError),
    (raising_at_run_time(Interrupted()), Interrupted),
    (raising_at_compile_time(torch.OutOfMemoryError("out of memory while autotuning")), torch.OutOfMemoryError),
], ids=["oom", "kernel-error", "interrupted", "oom-while-compiling"])
def test_errors_other_than_compile_failures_propagate(caplog, backend, expected):
    """Out-of-memory errors (also from inside the compiler), stop requests and errors of the computation
    reach the caller as themselves; the module stays compiled and nothing is logged."""
    runner = CompiledWithFallback(small_attention(), backend=backend)
    with (caplog.at_level(logging.WARNING, logger=COMPILE_LOG), torch.no_grad(),
          pytest.raises(expected) as raised):
        runner(*attention_inputs())
    assert type(raised.value) is expected
    assert runner.active and runner.error is None
    assert not [r for r in caplog.records if r.name == COMPILE_LOG]


def test_an_error_of_the_traced_code_propagates(caplog):
    """A bug in the module (here a batch mismatch it rejects) is raised as itself, not taken for a compiler
    failure."""
    runner = CompiledWithFallback(small_attention(), backend="eager")
    curr, memory = attention_inputs(batch=3)
    with (caplog.at_level(logging.WARNING, logger=COMPILE_LOG), torch.no_grad(),
          pytest.raises(ValueError, match="batch sizes differ")):
        runner(curr.expand(-1, 2, -1), memory)
    assert runner.active and not [r for r in caplog.records if r.name == COMPILE_LOG]


def has_cpp_compiler() -> bool:
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not has_cpp_compiler(), reason="inductor's CPU code generation needs a C++ compiler")
def test_inductor_compiles_memory_attention_once_per_batch_kind(eager_model):
    """Memory attention through inductor (C++ code generated for this CPU; about 20 s per graph on two cores,
    a second or so from inductor's on-disk cache): the same two graphs over the growing memory, results as
    eager."""
    model, eager = eager_model
    model.use_compiled()  # inductor
    try:
        counts = []
        for batch in (1, 2, 3):
            compiled = run_frames(model, range(1, 19), batch, 20, seed=batch)
            counts.append(model.compile_counts()["memory_attention"])
            for t, (a, b) in enumerate(zip(compiled, eager[batch], strict=True), start=1):
                assert_same_computation(a, b, what=f"frame {t}, batch {batch}, inductor vs eager")
        runner = model._compiled["memory_attention"]
        assert runner.active and runner.error is None, runner.error
        assert counts == [1, 2, 2]
        print(f"inductor: {runner.compile_seconds:.1f} s in the backend for {runner.compiles} graphs")
    finally:
        model.use_compiled(False)
