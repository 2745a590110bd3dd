"""The single-threaded CPU workers behind the memory attention's hot spot (model/cpu_workers.py)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
from numerics import assert_same_computation

from napari_sam2.model import cpu_workers
from napari_sam2.model.memory_attention import RoPEAttention

LINUX_OPENMP = sys.platform.startswith("linux") and "parallel backend: OpenMP" in torch.__config__.parallel_info()


@pytest.fixture
def fresh_pools(monkeypatch):
    """Pools made inside the test only (the module keeps one per thread count for the whole process)."""
    monkeypatch.setattr(cpu_workers, "_pools", {})
    yield cpu_workers._pools
    for pool in cpu_workers._pools.values():
        if pool is not None:
            pool.shutdown(wait=True)


def worker_report(item: int) -> tuple[int, str, set[int], bool, bool]:
    return (item * item, threading.current_thread().name, cpu_workers._reported_thread_counts(),
            torch.is_inference_mode_enabled(), torch.is_grad_enabled())


@pytest.mark.skipif(not LINUX_OPENMP, reason="the workers are checked on Linux builds of torch with OpenMP")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: nothing to spread")
def test_blocks_run_in_order_on_single_threaded_workers(fresh_pools):
    main_threads = torch.get_num_threads()
    with torch.inference_mode():
        results = cpu_workers.map_blocks(worker_report, list(range(12)))

    assert [r[0] for r in results] == [i * i for i in range(12)]
    assert all(name.startswith("napari-sam2-cpu") for _, name, *_ in results)
    assert all(counts == {1} for _, _, counts, *_ in results)
    assert all(inference for *_, inference, _ in results)  # the caller's inference mode followed
    # The caller's thread and threads started afterwards keep torch's thread count.
    assert torch.get_num_threads() == main_threads
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [main_threads]


@pytest.mark.skipif(not LINUX_OPENMP, reason="the workers are checked on Linux builds of torch with OpenMP")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: nothing to spread")
def test_workers_follow_grad_mode_and_autocast(fresh_pools):
    def modes(_: int) -> tuple[bool, bool, torch.dtype]:
        return torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), (torch.ones(2, 2) @ torch.ones(2, 2)).dtype

    with torch.no_grad():
        assert set(cpu_workers.map_blocks(modes, [0, 1, 2])) == {(False, False, torch.float32)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert set(cpu_workers.map_blocks(modes, [0, 1, 2])) == {(True, True, torch.bfloat16)}


@pytest.mark.skipif(not LINUX_OPENMP, reason="the workers are checked on Linux builds of torch with OpenMP")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: nothing to spread")
def test_nested_calls_run_inline_and_errors_reach_the_caller(fresh_pools):
    def nested(item: int) -> list[str]:
        return [name for _, name, *_ in cpu_workers.map_blocks(worker_report, [item, item + 1])]

    for names in cpu_workers.map_blocks(nested, [0, 1, 2]):
        assert len(set(names)) == 1 and names[0].startswith("napari-sam2-cpu")  # the worker's own thread

    def fails(item: int) -> int:
        if item == 2:
            raise ValueError("block 2 went wrong")
        return item

    with pytest.raises(ValueError, match="block 2 went wrong"):
        cpu_workers.map_blocks(fails, [0, 1, 2, 3])


def test_workers_that_keep_several_threads_are_not_used(fresh_pools, monkeypatch):
    monkeypatch.setattr(cpu_workers, "_reported_thread_counts", lambda: {2})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    results = cpu_workers.map_blocks(worker_report, [1, 2, 3])
    assert [r[0] for r in results] == [1, 4, 9]
    assert {name for _, name, *_ in results} == {threading.current_thread().name}
    assert fresh_pools == {2: None}  # decided once, not retried on every call


def test_one_torch_thread_runs_in_the_callers_thread(fresh_pools, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    results = cpu_workers.map_blocks(worker_report, [1, 2, 3])
    assert {name for _, name, *_ in results} == {threading.current_thread().name}
    assert fresh_pools == {}


@pytest.mark.skipif(not LINUX_OPENMP, reason="the workers are checked on Linux builds of torch with OpenMP")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: nothing to spread")
def test_workers_stay_single_threaded_after_torch_set_num_threads():
    """torch.set_num_threads makes torch give every new thread that many MKL threads; the workers undo it
    (checked in a fresh process, as the setting is process-wide)."""
    script = (
        "import threading, torch\n"
        "torch.set_num_threads(2)\n"
        "from napari_sam2.model import cpu_workers\n"
        "report = cpu_workers.map_blocks(lambda i: (threading.current_thread().name,"
        " cpu_workers._reported_thread_counts()), [0, 1, 2])\n"
        "assert all(name.startswith('napari-sam2-cpu') and counts == {1} for name, counts in report), report\n"
        "assert torch.get_num_threads() == 2\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@torch.no_grad()
def test_attention_on_workers_equals_attention_in_the_callers_thread(fresh_pools, monkeypatch):
    """The CPU cross-attention's blocks give the same numbers on the workers as run one after the other in
    the calling thread (with its intra-op threads): the same code, in another split over the cores."""
    torch.manual_seed(0)
    attention = RoPEAttention(256, rope_k_repeat=True, feat_sizes=(16, 16), kv_in_dim=64).eval()
    gen = torch.Generator().manual_seed(2)
    queries, memory = torch.randn(1, 256, 256, generator=gen), torch.randn(2, 3 * 256 + 8, 64, generator=gen)
    on_workers = attention(queries, memory, memory, num_k_exclude_rope=8)
    monkeypatch.setattr(cpu_workers, "_pool", lambda num_threads: None)
    inline = attention(queries, memory, memory, num_k_exclude_rope=8)
    assert_same_computation(on_workers, inline, what="cross-attention on workers vs inline")
