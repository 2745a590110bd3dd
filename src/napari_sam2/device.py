"""Choosing the torch device the model runs on, and whether Apple MPS has torch's CPU fallback."""

from __future__ import annotations

import os

import torch

MPS_FALLBACK_VARIABLE = "PYTORCH_ENABLE_MPS_FALLBACK"


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


def mps_fallback_active() -> bool:
    """Whether torch's CPU fallback for ops Apple MPS lacks is on in this process. torch reads
    PYTORCH_ENABLE_MPS_FALLBACK once, at its first import: where torch came before this package, that is what
    the variable said when this package was imported; otherwise what it says now (this package set it to 1
    unless the user had set it)."""
    import napari_sam2

    torch_first = napari_sam2._TORCH_IMPORTED_FIRST
    value = napari_sam2._MPS_FALLBACK_GIVEN if torch_first else os.environ.get(MPS_FALLBACK_VARIABLE)
    return value is not None and value.strip() not in ("", "0")


def mps_fallback_status(device: torch.device | str | None = None) -> str | None:
    """A one-line warning when ``device`` (default: the one :func:`pick_device` picks) is Apple MPS and torch's
    CPU fallback is off, so that an op MPS lacks fails instead of running on the CPU; None otherwise."""
    if pick_device(device).type != "mps" or mps_fallback_active():
        return None
    import napari_sam2

    if napari_sam2._TORCH_IMPORTED_FIRST and napari_sam2._MPS_FALLBACK_GIVEN is None:
        why = "torch was imported before napari-sam2, which could not turn it on"
    else:
        why = f"{MPS_FALLBACK_VARIABLE} is {os.environ.get(MPS_FALLBACK_VARIABLE, '')!r}"
    return (f"Apple MPS runs without torch's CPU fallback ({why}): an op MPS lacks will stop with an error; "
            f"set {MPS_FALLBACK_VARIABLE}=1 before starting napari/python")
