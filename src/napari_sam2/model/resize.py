"""Bilinear resizing that runs on every device: antialiased resizing goes through the CPU where MPS lacks it.

torch's Apple MPS backend has no antialiased bilinear kernel before torch 2.7. There the op fails, unless
PYTORCH_ENABLE_MPS_FALLBACK was set before torch was imported, which napari-sam2 cannot always arrange (see
:func:`napari_sam2.device.mps_fallback_status`). So on such an MPS device this module moves the tensor to the
CPU itself, resizes it there and moves the result back: the numbers are the CPU path's, with or without the
variable. Everywhere else the resize runs where the tensor is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .torch_compat import TORCH_RELEASE, torch_release  # noqa: F401 - torch_release: tests

MPS_ANTIALIAS_FROM = (2, 7)  # first torch with an antialiased bilinear kernel for MPS


def antialias_runs_on(device: torch.device) -> bool:
    """Whether the installed torch resizes with antialiasing on ``device`` itself (not MPS before 2.7)."""
    return device.type != "mps" or TORCH_RELEASE >= MPS_ANTIALIAS_FROM


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=antialias)`` of a (B, C, H, W)
    float tensor, on the CPU and back where ``x``'s device cannot antialias (see the module docstring)."""
    if antialias and not antialias_runs_on(x.device):
        return _interpolate(x.to("cpu"), size, antialias=True).to(x.device)
    return _interpolate(x, size, antialias=antialias)


def _interpolate(x: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
