"""Numeric precision the model runs at on a device: fp32, or bf16 / fp16 autocast, chosen from the hardware.

fp32 reproduces the reference's numbers. Low precision is chosen only where the hardware runs it fast:

* CUDA, compute capability 8.0 or newer (Ampere, Ada, Hopper, Blackwell): bf16 autocast, as in Meta's own
  video examples. Tensor cores run bf16 matrix products several times faster than fp32; logits differ from
  fp32 ones by bf16 rounding (8-bit mantissa), so masks can differ at boundary pixels.
* CUDA 7.x (Volta, Turing): fp16 autocast. These GPUs have fp16 tensor cores but no bf16 ones (bf16 there is
  emulated, slower than fp32). fp16 keeps 3 more mantissa bits than bf16 (results are as close to fp32), but
  its largest value is 65504: where an activation overflows, results turn inf/NaN. :func:`check_finite`
  turns that into a clear error; ``precision="fp32"`` is the way out.
* CUDA before 7.0 (Pascal and older), the CPU: fp32. Neither has tensor cores; on the CPU autocast is slower.
* Apple MPS: bf16 autocast only where it works natively, that is on macOS 14 or newer (the first with bf16
  tensors in Metal) and with a torch whose MPS autocast takes bf16 (torch 2.5 added MPS autocast); fp32
  otherwise. fp16 is never the default there (no overflow-free guarantee, and no measured gain).

An explicit choice wins over the default, but one the device cannot run raises a one-line ValueError that
says what to choose instead. Capabilities are probed once per device (:func:`device_capabilities`); tests pass
simulated ones to :func:`resolve_precision`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
AMPERE = (8, 0)  # first CUDA compute capability with bf16 tensor cores
VOLTA = (7, 0)  # first with fp16 tensor cores
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteError(ValueError):
    """Model outputs hold inf or NaN under low precision (fp16 overflow, typically); fp32 avoids it."""


@dataclass(frozen=True)
class DeviceCapabilities:
    """What a device can compute in, with the installed torch, as :func:`resolve_precision` needs it.

    ``type`` is torch's device type ("cuda", "mps", "cpu"); ``name`` is for people ("NVIDIA H200").
    ``cuda_capability`` is the CUDA compute capability (major, minor), None off CUDA. ``native_bf16``: bf16
    matrix products run in hardware (CUDA 8.0+; MPS with Metal's bf16, macOS 14+). ``bf16_tensors``: the
    device holds bf16 tensors at all (not MPS before macOS 14). ``bf16_autocast`` / ``fp16_autocast``: torch's
    autocast takes that dtype on this device. ``fp16_tensor_cores``: fp16 products run on tensor cores (CUDA 7.0+).
    """

    type: str
    name: str
    cuda_capability: tuple[int, int] | None
    native_bf16: bool
    bf16_tensors: bool
    bf16_autocast: bool
    fp16_autocast: bool
    fp16_tensor_cores: bool

    @classmethod
    def cuda_gpu(cls, name: str, capability: tuple[int, int]) -> DeviceCapabilities:
        """A CUDA GPU's capabilities from its compute capability (torch's CUDA autocast takes both dtypes)."""
        capability = (int(capability[0]), int(capability[1]))
        return cls("cuda", name, capability, native_bf16=capability >= AMPERE, bf16_tensors=True,
                   bf16_autocast=True, fp16_autocast=True, fp16_tensor_cores=capability >= VOLTA)


def device_capabilities(device: torch.device | str) -> DeviceCapabilities:
    """Probe what ``device`` can do (CUDA: its compute capability; MPS: macOS version and torch's autocast)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for but torch {torch.__version__} sees no CUDA GPU: "
                             "use device='cpu' (or install a CUDA build of torch)")
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_capabilities(index)
    if device.type == "mps":
        return _mps_capabilities()
    return _other_capabilities(device.type)


@functools.cache
def _cuda_capabilities(index: int) -> DeviceCapabilities:
    return DeviceCapabilities.cuda_gpu(torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))


@functools.cache
def _mps_capabilities() -> DeviceCapabilities:
    bf16_tensors = _mps_holds_bf16()
    bf16_autocast = bf16_tensors and _autocast_takes("mps", torch.bfloat16)
    return DeviceCapabilities("mps", "Apple MPS", None, native_bf16=bf16_tensors, bf16_tensors=bf16_tensors,
                              bf16_autocast=bf16_autocast, fp16_autocast=_autocast_takes("mps", torch.float16),
                              fp16_tensor_cores=False)


@functools.cache
def _other_capabilities(device_type: str) -> DeviceCapabilities:
    """The CPU (or another device type): no tensor cores; autocast as torch takes it (both dtypes on the CPU
    from torch 2.4)."""
    return DeviceCapabilities(device_type, device_type.upper(), None, native_bf16=False, bf16_tensors=True,
                              bf16_autocast=_autocast_takes(device_type, torch.bfloat16),
                              fp16_autocast=_autocast_takes(device_type, torch.float16), fp16_tensor_cores=False)


def _mps_holds_bf16() -> bool:
    """Whether MPS holds bf16 tensors: macOS 14 or newer (asked of torch, or tried where torch cannot say)."""
    is_macos_or_newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
    if is_macos_or_newer is not None:
        return bool(is_macos_or_newer(14, 0))
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
    except (RuntimeError, TypeError):
        return False
    return True


def _autocast_takes(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch's autocast runs ``dtype`` on ``device_type`` (it raises, or warns and disables itself, if not).
    Only the context is made, never entered."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            context = torch.autocast(device_type=device_type, dtype=dtype)
        except (RuntimeError, ValueError, AssertionError):
            return False
    return getattr(context, "_enabled", True) and not any("autocast" in str(w.message).lower() for w in caught)


def resolve_precision(precision: str | None, device: torch.device | str,
                      capabilities: DeviceCapabilities | None = None) -> str:
    """The precision to run with on ``device``: ``None`` chooses from the hardware (see the module docstring);
    an explicit "fp32", "bf16" or "fp16" is kept when the device can run it, else a ValueError says why.
    ``capabilities`` (default: probed from ``device``) lets tests simulate hardware."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or None for the device's default), got {precision!r}")
    if precision == "fp32":
        return precision
    caps = capabilities if capabilities is not None else device_capabilities(device)
    if precision is None:
        return _default_precision(caps)
    problem = _cannot_run(precision, caps)
    if problem:
        raise ValueError(problem)
    return precision


def _default_precision(caps: DeviceCapabilities) -> str:
    if caps.type == "cuda":
        return "bf16" if caps.native_bf16 else "fp16" if caps.fp16_tensor_cores else "fp32"
    if caps.type == "mps" and caps.native_bf16 and caps.bf16_autocast:
        return "bf16"
    return "fp32"


def _cannot_run(precision: str, caps: DeviceCapabilities) -> str | None:
    """Why ``caps`` cannot run ``precision`` (bf16 / fp16), as a one-line message; None if it can."""
    if precision == "bf16" and caps.type == "cuda" and not caps.native_bf16:
        major, minor = caps.cuda_capability or (0, 0)
        return (f"bf16 needs a CUDA GPU of compute capability {AMPERE[0]}.{AMPERE[1]} or newer (Ampere); "
                f"{caps.name!r} has {major}.{minor}: use precision='fp16' or 'fp32'")
    if precision == "bf16" and caps.type == "mps" and not caps.bf16_tensors:
        return "bf16 on Apple MPS needs macOS 14 or newer (this Mac's GPU holds no bf16 tensors): use precision='fp32'"
    can = caps.bf16_autocast if precision == "bf16" else caps.fp16_autocast
    if not can:
        return (f"torch {torch.__version__} has no {precision} autocast on {caps.type} ({caps.name}): "
                "use precision='fp32' (or a newer torch)")
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A context in which the model computes at ``precision`` on ``device`` (fp32: no autocast at all)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def describe_precision(device: torch.device | str, precision: str,
                       capabilities: DeviceCapabilities | None = None) -> str:
    """The device and precision for people, e.g. "cuda:0 (NVIDIA H200, bf16 autocast)" or "cpu (fp32)"."""
    device = torch.device(device)
    what = "fp32" if precision == "fp32" else f"{precision} autocast"
    if device.type != "cuda":
        return f"{device} ({what})"
    caps = capabilities if capabilities is not None else device_capabilities(device)
    index = device.index if device.index is not None or capabilities is not None else torch.cuda.current_device()
    label = str(device) if index is None else f"cuda:{index}"
    return f"{label} ({caps.name}, {what})"


def check_finite(tensor: torch.Tensor, precision: str, what: str = "the model's output") -> None:
    """Raise :class:`NonFiniteError` if ``tensor`` holds inf or NaN under low precision (an fp16 overflow, most
    likely), rather than let garbage masks through. fp32 is not checked: it is the reference's computation,
    and the check costs one device sync."""
    if precision == "fp32" or bool(torch.isfinite(tensor).all()):
        return
    raise NonFiniteError(f"inf/NaN in {what} under {precision} autocast (most likely {precision} overflowed): "
                         "use precision='fp32'")
