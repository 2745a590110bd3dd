"""Give the C heap's free pages back to the kernel during tracking (glibc on Linux), so that resident memory
follows what tracking holds, not what it once held.

A tracking step frees its transient buffers (masks and activations of a batch of objects, label-image tiles)
between the long-lived memories and results it allocates meanwhile, so the freed pages sit in holes of the heap
(and of the other threads' heaps) that glibc keeps for reuse and never returns. Measured on 2 cores, 100 objects
on 2048 x 2048 frames at model input 512: 210-226 MiB resident above baseline after each frame, 63-105 MiB
after ``malloc_trim(0)``, which took 10-28 ms (``benchmarks/bench_population.py`` gives the peaks).
:func:`release_free_heap` is that call; a CPU session makes it before each tracked frame and after each batch
of objects (``engine/propagation.py``). It frees nothing in use and changes no setting of the process, so it is
safe inside napari's own process; it does nothing where glibc is absent (macOS, Windows, musl).

glibc has no Python interface for it, so it is called through ctypes (hand-written for that reason).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache


@cache
def _malloc_trim():
    """glibc's malloc_trim, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> None:
    """Hand the heap's free pages back to the kernel (glibc's ``malloc_trim(0)``); nothing elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
