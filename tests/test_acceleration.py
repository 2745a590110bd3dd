"""Prefetching, precision and torch.compile options of the tracking session (CPU)."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import torch
from numerics import assert_same_computation
from reference_support import max_abs_diff
from session_support import cells_movie, small_model

from napari_sam2 import FrameError, TrackingSession
from napari_sam2.engine.acceleration import DeviceCapabilities, resolve_precision
from napari_sam2.engine.prefetch import FramePrefetcher
from napari_sam2.model.compiled import CompiledWithFallback


class SlowFrames:
    """A (T, Y, X) array whose frame reads take ``delay`` seconds and record the reading thread."""

    def __init__(self, data: np.ndarray, delay: float = 0.0) -> None:
        self.data, self.delay = data, delay
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.readers: list[tuple[int, str]] = []

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            self.readers.append((int(index), threading.current_thread().name))
            time.sleep(self.delay)
        return self.data[index]


def propagate(session: TrackingSession) -> list[np.ndarray]:
    session.add_points(0, 1, [(30, 25)], [1])
    return [logits for _, _, logits in session.propagate(0, "forward")]


def test_next_frames_are_read_in_the_background_with_the_same_results():
    frames = SlowFrames(cells_movie(5))
    with_prefetch = propagate(TrackingSession(small_model(), frames, contrast_limits=(0, 4000)))
    background = {t for t, thread in frames.readers if thread.startswith("napari-sam2-prefetch")}
    assert background == {1, 2, 3, 4}  # every frame after the prompted one was read ahead
    frames.readers.clear()
    without = propagate(TrackingSession(small_model(), frames, contrast_limits=(0, 4000), prefetch_frames=0))
    assert all(thread == threading.current_thread().name for _, thread in frames.readers)
    for frame, (a, b) in enumerate(zip(with_prefetch, without, strict=True)):
        assert_same_computation(a, b, what=f"frame {frame}, prefetched vs read in place")


def test_cancelled_propagation_drops_frames_read_ahead():
    session = TrackingSession(small_model(), cells_movie(6), contrast_limits=(0, 4000))
    session.add_points(0, 1, [(30, 25)], [1])
    run = session.propagate(0, "forward")
    next(run), next(run)
    assert session._prefetcher.scheduled == [2, 3]
    run.close()
    assert session._prefetcher.scheduled == []
    assert sorted(session._objects[1].tracked) == [1]  # what was yielded is kept, nothing more


def test_prefetched_frame_errors_surface_at_that_frame():
    movie = cells_movie(4).astype(np.float32)
    movie[2, 5, 5] = np.nan
    session = TrackingSession(small_model(), movie, contrast_limits=(0, 4000))
    session.add_points(0, 1, [(30, 25)], [1])
    seen = []
    with pytest.raises(FrameError, match="frame 2 contains NaN"):
        for frame, _, _ in session.propagate(0, "forward"):
            seen.append(frame)
    assert seen == [0, 1]


def test_prefetcher_keeps_at_most_depth_frames():
    loaded = []
    prefetcher = FramePrefetcher(lambda t: loaded.append(t) or torch.full((1,), float(t)), depth=2)
    prefetcher.schedule([3, 4, 5])
    assert prefetcher.scheduled == [3, 4]
    assert prefetcher.take(3).item() == 3.0
    assert prefetcher.take(7) is None  # never scheduled: the caller loads it
    prefetcher.schedule([5, 6])  # 4 is no longer needed
    assert prefetcher.scheduled == [5, 6]
    with pytest.raises(ValueError, match="prefetch depth"):
        FramePrefetcher(lambda t: None, depth=-1)


def test_precision_defaults_and_errors():
    hopper = DeviceCapabilities.cuda_gpu("NVIDIA H200", (9, 0))  # simulated: the hardware's own cases are in
    assert resolve_precision(None, torch.device("cuda"), hopper) == "bf16"  # test_precision.py
    assert resolve_precision(None, torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))


@pytest.mark.parametrize(("precision", "min_correlation", "min_sign_agreement"),
                         [("bf16", 0.99, 0.97), ("fp16", 0.999, 0.99)])  # fp16 keeps 3 more mantissa bits
def test_low_precision_autocast_tracks_close_to_fp32(precision, min_correlation, min_sign_agreement):
    fp32 = propagate(TrackingSession(small_model(), cells_movie(4), contrast_limits=(0, 4000)))
    session = TrackingSession(small_model(), cells_movie(4), contrast_limits=(0, 4000), precision=precision)
    low = propagate(session)
    assert session.precision == precision
    for a, b in zip(fp32, low, strict=True):
        assert a.dtype == b.dtype == np.float32 and np.isfinite(b).all()
        # rounding (random weights amplify it), not a different computation:
        assert 0 < max_abs_diff(a, b) < 0.3 * np.abs(a).max()
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > min_correlation
        assert np.mean((a > 0) == (b > 0)) > min_sign_agreement


def test_compile_runs_the_same_model_or_falls_back_with_a_warning(caplog):
    eager = propagate(TrackingSession(small_model(), cells_movie(3), contrast_limits=(0, 4000)))
    # The "eager" backend traces with dynamo without generating code: fast, and exact.
    model = small_model()
    model.use_compiled(backend="eager")
    compiled = propagate(TrackingSession(model, cells_movie(3), contrast_limits=(0, 4000)))
    assert all(r.error is None and r.compiled is not None for r in model._compiled.values())
    assert all(count >= 1 for count in model.compile_counts().values())
    for frame, (a, b) in enumerate(zip(eager, compiled, strict=True)):
        assert_same_computation(a, b, what=f"frame {frame}, compiled vs eager")

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    model = small_model()
    model.use_compiled(backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="napari_sam2.model.compiled"):
        fallback = propagate(TrackingSession(model, cells_movie(3), contrast_limits=(0, 4000)))
    warned = [r.getMessage() for r in caplog.records if r.name == "napari_sam2.model.compiled"]
    assert sorted(warned) == [  # one line per module, at its first failure
        f"torch.compile failed for {name} (RuntimeError: no compiler here); running it uncompiled"
        for name in ("ImageEncoder", "MemoryAttention")]
    assert all(r.compiled is None and r.error is not None for r in model._compiled.values())
    for a, b in zip(eager, fallback, strict=True):
        assert np.array_equal(a, b)  # the very same eager modules: bit-identical
    model.use_compiled(False)
    assert model._compiled == {}
    assert set(model.state_dict()) == set(small_model().state_dict())  # checkpoint keys untouched


def test_compile_option_of_the_session():
    model = small_model()
    TrackingSession(model, cells_movie(2), contrast_limits=(0, 4000), compile_model=True)
    assert set(model._compiled) == {"image_encoder", "memory_attention"}
    assert all(isinstance(r, CompiledWithFallback) for r in model._compiled.values())
