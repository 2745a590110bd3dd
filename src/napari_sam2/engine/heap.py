"""Keep the process's C heap from holding on to memory that tracking has freed (glibc on Linux).

glibc gives each thread that allocates its own heap ("arena", up to 8 per core). A session allocates from
several threads (the main one, the frame prefetcher, the label-image workers, torch's own) and frees much of it
soon after; what one arena frees it keeps for its own thread, so the process's resident memory settles at the
sum of every arena's high-water mark. Measured on 2 cores, 100 objects on 2048 x 2048 frames at model input 512
(``benchmarks/bench_population.py``): peak 654-876 MiB above baseline with glibc's default arenas, 396 MiB
with one. :func:`limit_malloc_arenas` caps the arenas that threads created from then on may open, with
``mallopt(M_ARENA_MAX)``: nothing else changes (existing arenas stay, allocations keep their speed within the
noise of this machine). It does nothing where glibc is absent (macOS, Windows, musl) or where the user set
``MALLOC_ARENA_MAX`` (glibc's own knob) in the environment, which then wins.

glibc has no Python interface for this, so it is called through ctypes (hand-written for that reason).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8  # glibc's malloc.h
SESSION_ARENAS = 2  # the main thread's arena and one for all the others

_applied = False


def limit_malloc_arenas(arenas: int = SESSION_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` for this process (once); True where the cap is in force."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_ARENA_MAX, int(arenas)) == 1
    return _applied
