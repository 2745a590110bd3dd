"""Choosing the torch device the model runs on."""

from __future__ import annotations

import torch


def pick_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` as a torch.device; ``None`` picks CUDA, then Apple MPS, then the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
