"""Single-threaded CPU workers for independent blocks of the attention hot spot.

torch splits every CPU op across its intra-op threads. For the memory attention's blocks (256 queries x
1024 keys) that split costs more than it gains: a matrix product followed by five element-wise passes, each
shared by the cores, moves every block between their caches. Giving each core whole blocks instead, run
by a thread that torch and MKL keep to one thread, is what torch's own CPU flash-attention kernel does
inside C++; from Python it takes a thread pool whose threads are told, through the OpenMP and MKL
libraries torch loaded, to use one thread each. On this project's two-core machine it made the full-bank
cross-attention kernel 0.45 s instead of 0.65 s.

Written by hand because torch has no public per-thread thread-count setting (``torch.set_num_threads`` is
process-wide). Every step is checked: where a library or symbol is missing or a worker still reports more
than one thread, :func:`map_blocks` simply runs the blocks one after the other in the caller's thread, as
before. Results are the same either way (each block is computed by the same code).
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

import torch

from .interrupt import current_stop_check, stop_when
from .torch_compat import cpu_autocast_state

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor | None] = {}  # caller's intra-op thread count -> pool (None: unusable)
_pools_pid = os.getpid()  # a forked child has none of its parent's worker threads
_worker = threading.local()


def map_blocks(work: Callable[[_Item], _Result], items: Sequence[_Item]) -> list[_Result]:
    """``[work(item) for item in items]``, spread over single-threaded workers, one per CPU thread torch
    may use here. Grad, inference mode and CPU autocast follow the caller's. Falls back to running in the
    caller's thread when workers cannot be kept to one thread (see the module docstring), when torch may
    use one thread only, and when called from a worker. The caller's stop check (model/interrupt.py)
    holds in the workers too; when a block fails, the call returns once the blocks already running end."""
    pool = None if len(items) < 2 or getattr(_worker, "active", False) else _pool(torch.get_num_threads())
    if pool is None:
        return [work(item) for item in items]

    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast, autocast_dtype = cpu_autocast_state()
    should_stop = current_stop_check()

    def in_callers_mode(item: _Item) -> _Result:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast), stop_when(should_stop):
            return work(item)

    futures = [pool.submit(in_callers_mode, item) for item in items]
    try:
        return [future.result() for future in futures]
    finally:  # on an error (an interrupt, say) no block outlives the call
        for future in futures:
            future.cancel()
        wait(futures)


def _pool(num_threads: int) -> ThreadPoolExecutor | None:
    """The pool of ``num_threads`` single-threaded workers, made on first use; None where it can't be."""
    global _pools_pid
    if num_threads < 2:
        return None
    with _lock:
        if _pools_pid != os.getpid():
            _pools.clear()
            _pools_pid = os.getpid()
        if num_threads not in _pools:
            _pools[num_threads] = _start_pool(num_threads)
        return _pools[num_threads]


def _start_pool(num_threads: int) -> ThreadPoolExecutor | None:
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="napari-sam2-cpu", initializer=_become_worker)
    # Every worker reports (all tasks wait at the barrier, so each lands on its own thread).
    barrier = threading.Barrier(num_threads)

    def report(_: int) -> bool:
        barrier.wait(timeout=30)
        return _worker.single_threaded

    try:
        usable = all(pool.map(report, range(num_threads)))
    except threading.BrokenBarrierError:
        usable = False
    if not usable:
        pool.shutdown(wait=False)
        return None
    return pool


def _become_worker() -> None:
    """Thread initializer: keep this thread's OpenMP and MKL to one thread, and record whether that held."""
    _worker.active = True
    torch.get_num_threads()  # torch sets a new thread's counts on its first use; ours must come after
    libraries = _torch_libraries()
    _call_first_exporter(libraries, "omp_set_num_threads", 1)
    _call_first_exporter(libraries, "MKL_Set_Num_Threads_Local", 1)
    _worker.single_threaded = _reported_thread_counts() == {1}


def _call_first_exporter(libraries: list[ctypes.CDLL], symbol: str, value: int) -> None:
    """Call ``symbol(value)`` in the first of ``libraries`` that exports it."""
    for library in libraries:
        function = getattr(library, symbol, None)
        if function is not None:
            function(ctypes.c_int(value))
            return


def _torch_libraries() -> list[ctypes.CDLL]:
    """The process's global symbols, then torch's own CPU library (MKL is linked into it)."""
    libraries = []
    candidates: list[str | None] = [None, *map(str, (Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))]
    for name in candidates:
        try:
            libraries.append(ctypes.CDLL(name))
        except (OSError, TypeError):  # TypeError: Windows has no handle for the process's global symbols
            continue
    return libraries


def _reported_thread_counts() -> set[int]:
    """The OpenMP and MKL thread counts torch reports for the calling thread (empty if it reports none)."""
    report = torch.__config__.parallel_info()
    return {int(count) for count in re.findall(r"(?:omp|mkl)_get_max_threads\(\) : (\d+)", report)}
