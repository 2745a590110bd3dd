"""Checkpoint files for tests: random-weight models saved in the official layout, and their hashes.

Real checkpoints cannot be downloaded in tests (no internet); these files have the same format, keys and
shapes, so every loading and download path can be exercised on them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from napari_sam2 import build_model

TINY_CHECKPOINT_NAME = "test_tiny.pt"  # the shared session fixture ``tiny_checkpoint`` in conftest.py
OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"


def write_checkpoint(path: str | os.PathLike, config: str = "sam2.1_hiera_t", seed: int = 0,
                     object_score_bias: float | None = None) -> Path:
    """Save a randomly initialised ``config`` model as ``{"model": state_dict}`` (the official layout).

    ``object_score_bias`` (e.g. 8.0) makes the random model judge every object present, so that masks
    are not empty and end-to-end tests see real labels.
    """
    torch.manual_seed(seed)
    state_dict = build_model(config, device="cpu").state_dict()
    if object_score_bias is not None:
        state_dict[OBJECT_SCORE_BIAS] = torch.full_like(state_dict[OBJECT_SCORE_BIAS], object_score_bias)
    path = Path(path)
    torch.save({"model": state_dict}, path)
    return path


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
