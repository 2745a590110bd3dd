"""Numeric precision the model runs at on a device (fp32, or bf16 autocast).

fp32 reproduces the reference's numbers and is the default on the CPU and on Apple MPS. On CUDA the default
is bf16 autocast, as in Meta's own video examples: tensor cores run bf16 matrix products several times faster
than fp32, and the logits differ from fp32 ones by bf16 rounding (8-bit mantissa), so masks can differ at
boundary pixels.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The precision to run with: ``None`` means bf16 on CUDA and fp32 elsewhere."""
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or None for the device's default), got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A context in which the model computes at ``precision`` on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
