"""Choosing the torch device the model runs on."""

from __future__ import annotations

import torch


def accelerators() -> list[str]:
    """The accelerator device types present, in order of preference: "cuda", then "mps"."""
    present = []
    if torch.cuda.is_available():
        present.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        present.append("mps")
    return present


def pick_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` as a torch.device; ``None`` picks CUDA, then Apple MPS, then the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device((accelerators() or ["cpu"])[0])
