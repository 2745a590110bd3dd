"""Fallbacks for the torch calls the engine makes that are newer than some torch builds still in use.

The package requires torch >= 2.4 (pyproject.toml), the first with device-generic autocast queries
(``torch.get_autocast_dtype("cpu")``) and CPU fp16 autocast. These fallbacks keep the engine working where
that requirement did not hold (a conda environment, an install with ``--no-deps``): each is chosen once, at
import, from what the installed torch has, so the calls cost nothing extra. tests/test_torch_api_surface.py
checks that the engine's uses of newer torch names go through guards like these.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

AutocastState = tuple[bool, torch.dtype]


def cpu_autocast_reader(namespace: ModuleType | Any = torch) -> Callable[[], AutocastState]:
    """A function returning (CPU autocast enabled, its dtype): ``torch.is_autocast_enabled("cpu")`` and
    ``torch.get_autocast_dtype("cpu")`` from torch 2.4, the CPU-specific (now deprecated) calls before."""
    if hasattr(namespace, "get_autocast_dtype"):
        return lambda: (namespace.is_autocast_enabled("cpu"), namespace.get_autocast_dtype("cpu"))
    return lambda: (namespace.is_autocast_cpu_enabled(), namespace.get_autocast_cpu_dtype())


def is_compiling_function(namespace: ModuleType | Any = torch) -> Callable[[], bool]:
    """torch's "is dynamo tracing this?" test: ``torch.compiler.is_compiling`` (torch 2.3), else
    ``torch._dynamo.is_compiling`` (2.0), else a function that always says no (nothing to trace with)."""
    function = getattr(getattr(namespace, "compiler", None), "is_compiling", None)
    if function is not None:
        return function
    try:
        from torch import _dynamo
    except ImportError:
        return lambda: False
    return getattr(_dynamo, "is_compiling", lambda: False)


cpu_autocast_state = cpu_autocast_reader()
is_compiling = is_compiling_function()


def torch_release(version: str = torch.__version__) -> tuple[int, int]:
    """(major, minor) of a torch version string such as "2.6.0+cpu" or "2.7.0.dev20250101"."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


TORCH_RELEASE = torch_release()
