"""Stopping a long model call part-way: a stop check installed for one call, polled at checkpoints.

Speculative work (encoding a frame the user may click on next, see the engine's ``precompute``) must give
way within a fraction of a second when the user does something else. torch cannot cancel an op, so the
model's long loops call :func:`checkpoint` between steps of a few tenths of a second at most (Hiera
blocks and their halves, FPN levels, memory-attention layers and their halves, blocks of the CPU
cross-attention and feed-forward network). Outside :func:`stop_when` a checkpoint does nothing; inside,
it raises :class:`Interrupted` once the installed check returns True, and the caller catches it.

The check belongs to the calling thread; :func:`napari_sam2.model.cpu_workers.map_blocks` hands it to its
worker threads. Inside ``torch.compile``-d code checkpoints are skipped (the compiled graph runs whole), so
a compiled module is polled only around it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .torch_compat import is_compiling

StopCheck = Callable[[], bool]

_state = threading.local()


class Interrupted(Exception):
    """Raised by :func:`checkpoint` when the installed stop check asks to stop."""


@contextmanager
def stop_when(should_stop: StopCheck | None) -> Iterator[None]:
    """Install ``should_stop`` for the calling thread's model calls inside the block (None: no check);
    the previous check (if any) is restored on exit."""
    previous = getattr(_state, "check", None)
    _state.check = should_stop
    try:
        yield
    finally:
        _state.check = previous


def current_stop_check() -> StopCheck | None:
    """The check installed for the calling thread, or None."""
    return getattr(_state, "check", None)


def checkpoint() -> None:
    """Raise :class:`Interrupted` if the calling thread's stop check says stop; a no-op without one."""
    if is_compiling():
        return
    check = getattr(_state, "check", None)
    if check is not None and check():
        raise Interrupted
