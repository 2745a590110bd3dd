"""Optional ``torch.compile`` of the model's hot modules, with a fallback to eager execution."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .interrupt import Interrupted

log = logging.getLogger(__name__)


class CompiledWithFallback:
    """Calls a ``torch.compile``-d module, and the plain module from the first failure on.

    Compilation happens lazily on the first call (and again for new input shapes); it can fail where no
    C++ compiler or Triton is installed, or for an op the compiler does not support. Tracking must not stop
    for that: the failure is reported once as a warning and the eager module takes over.
    """

    def __init__(self, module: torch.nn.Module, **compile_options: Any) -> None:
        self.module = module
        self.compiled: Callable | None = torch.compile(module, **compile_options)
        self.error: Exception | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Interrupted:  # a stop request (model/interrupt.py), not a compiler failure
                raise
            except Exception as error:  # noqa: BLE001 - any compiler failure: fall back, never lose the run
                self.error, self.compiled = error, None
                first_line = (str(error).strip().splitlines() or [""])[0]
                message = (f"torch.compile failed for {type(self.module).__name__} "
                           f"({type(error).__name__}: {first_line}); running it uncompiled")
                log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
        return self.module(*args, **kwargs)
