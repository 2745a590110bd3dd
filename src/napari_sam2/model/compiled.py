"""Optional ``torch.compile`` of the model's hot modules: graphs counted, eager fallback on compile failures only."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .interrupt import Interrupted

log = logging.getLogger(__name__)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: 2.5+


def _compiler_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "compiling failed": dynamo's (tracing, backend failures wrapped as
    BackendCompilerFailed, internal errors) and inductor's (C++ / CUDA compiler, lowering, missing Triton)."""
    types: list[type[BaseException]] = [torch._dynamo.exc.TorchDynamoException]
    try:
        import torch._inductor.exc as inductor_exc
    except ImportError:  # pragma: no cover - a torch build without inductor
        return tuple(types)
    for name in ("InductorError", "CppCompileError", "CUDACompileError", "LoweringException", "InvalidCxxCompiler",
                 "TritonMissing", "GPUTooOldForTriton", "MissingOperatorWithDecomp", "MissingOperatorWithoutDecomp",
                 "OperatorIssue", "CppWrapperCodegenError", "SubgraphLoweringException"):
        error_type = getattr(inductor_exc, name, None)
        if isinstance(error_type, type) and issubclass(error_type, BaseException):
            types.append(error_type)
    return tuple(types)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: its ``__cause__`` chain and dynamo's ``inner_exception``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or getattr(error, "inner_exception", None)


def _always_propagated(error: BaseException) -> BaseException | None:
    """The out-of-memory error or stop request that ``error`` is or wraps, if any: those always propagate."""
    return next((e for e in _causes(error) if isinstance(e, (_OUT_OF_MEMORY, Interrupted))), None)


def is_compile_failure(error: BaseException) -> bool:
    """Whether ``error`` came from compiling rather than from the computation: a compiler error type (or a
    Triton compiler error), and nothing in it an out-of-memory error or a stop request (those propagate)."""
    if _always_propagated(error) is not None:
        return False
    return isinstance(error, _compiler_error_types()) or type(error).__module__.startswith("triton.compiler")


class CountingBackend:
    """A ``torch.compile`` backend that hands each graph to torch's own backend for the same options and
    counts the graphs (every compile or recompile of the module gives at least one) and the seconds spent."""

    def __init__(self, backend: str | Callable = "inductor", mode: str | None = None,
                 options: dict[str, Any] | None = None, dynamic: bool | None = None) -> None:
        # torch.compile's own wrappers resolve a backend name and apply mode / options the same way.
        if backend == "inductor":
            self.inner: Callable = torch._TorchCompileInductorWrapper(mode, options, dynamic)
        else:
            self.inner = torch._TorchCompileWrapper(backend, mode, options, dynamic)
        self.compiler_name = getattr(self.inner, "compiler_name", str(backend))
        self.graphs = 0
        self.seconds = 0.0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable:
        self.graphs += 1
        start = time.perf_counter()
        try:
            return self.inner(graph, example_inputs, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def get_compiler_config(self) -> Any:
        getter = getattr(self.inner, "get_compiler_config", None)
        return getter() if getter is not None else None

    def reset(self) -> None:
        if hasattr(self.inner, "reset"):
            self.inner.reset()


_COMPILE_OWN_OPTIONS = ("backend", "mode", "options", "dynamic")


class CompiledWithFallback:
    """Calls a ``torch.compile``-d module, and the plain module once compiling has failed.

    Compilation happens lazily on the first call (and again when a guard fails, e.g. for new input shapes);
    it can fail where no C++ compiler or Triton is installed, or for an op the compiler does not support.
    Tracking must not stop for that: a compile failure (see :func:`is_compile_failure`) is logged once, as
    one warning line, and the eager module takes over. Every other error propagates: out-of-memory, a stop
    request (:class:`~napari_sam2.model.interrupt.Interrupted`), and errors of the computation itself.

    ``compiles`` counts the graphs compiled so far (first compiles, recompiles, and the pieces of a graph
    break alike); ``compile_seconds`` is the time spent in the backend compiler (dynamo's tracing apart).
    """

    def __init__(self, module: torch.nn.Module, **compile_options: Any) -> None:
        self.module = module
        self.options = dict(compile_options)
        own = {k: compile_options.pop(k) for k in _COMPILE_OWN_OPTIONS if k in compile_options}
        self.backend = CountingBackend(own.get("backend", "inductor"), own.get("mode"), own.get("options"),
                                       own.get("dynamic"))
        if "isolate_recompiles" in inspect.signature(torch.compile).parameters:
            # Recompile limits count per model, not across every model of the process (torch >= 2.13).
            compile_options.setdefault("isolate_recompiles", True)
        self.compiled: Callable | None = torch.compile(module, backend=self.backend, dynamic=own.get("dynamic"),
                                                       **compile_options)
        self.error: Exception | None = None

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled module (no compile failure so far)."""
        return self.compiled is not None

    @property
    def compiles(self) -> int:
        return self.backend.graphs

    @property
    def compile_seconds(self) -> float:
        return self.backend.seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call_or(lambda: self.module(*args, **kwargs), *args, **kwargs)

    def call_or(self, eager: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
        """The compiled module on ``args`` / ``kwargs``, or ``eager()`` once compiling has failed (for a
        caller whose compiled inputs differ from the eager ones, e.g. padded to a fixed size)."""
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:
                cause = _always_propagated(error)
                if cause is not None and cause is not error:
                    raise cause from None  # e.g. out of memory while autotuning: that error, not dynamo's wrapper
                if not is_compile_failure(error):
                    raise
                self._fall_back(error)
        return eager()

    def _fall_back(self, error: Exception) -> None:
        self.error, self.compiled = error, None
        reason = error
        for reason in _causes(error):  # the innermost error says most (e.g. the C++ compiler's message)
            pass
        first_line = (str(reason).strip().splitlines() or [""])[0]
        log.warning("torch.compile failed for %s (%s: %s); running it uncompiled", type(self.module).__name__,
                    type(reason).__name__, first_line)
