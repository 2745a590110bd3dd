"""Shared test material for session tests: a small random-weight model and a synthetic cell movie."""

from __future__ import annotations

import numpy as np
import torch
from reference_support import randomize_state_dict

from napari_sam2 import build_model

IMAGE_SIZE = 128


def small_model(image_size: int = IMAGE_SIZE):
    """A small SAM 2.1 tiny with random weights whose objects 'appear' (high object-score bias)."""
    torch.manual_seed(0)
    m = build_model("sam2.1_hiera_t", image_size=image_size, device="cpu")
    m.load_state_dict(randomize_state_dict(m.state_dict(), seed=0), strict=True)
    return m


def cells_movie(num_frames: int = 6, shape=(96, 80), dtype=np.uint16, peak: float = 3000.0) -> np.ndarray:
    """(T, Y, X) movie with a bright blob drifting down-right over a dim noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    frames = []
    for t in range(num_frames):
        cy, cx = 30 + 3 * t, 25 + 2 * t
        img = 300 + rng.normal(0, 20, shape) + peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 200)
        frames.append(img)
    return np.stack(frames).astype(dtype)


