"""Where ``napari-sam2 batch`` runs its movies: a dask.distributed client on this machine, on a running scheduler,
or on SLURM / PBS / LSF jobs through dask-jobqueue.

Every worker runs one movie at a time (one dask thread) and gives torch several CPU threads, so that
workers x torch threads never exceeds the cores: dask's nanny starts workers with ``OMP_NUM_THREADS=1`` (right
for numpy-heavy tasks, 1/n of the speed for one torch model), so the thread count is set per worker here.
On a GPU machine each worker gets its own GPU through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from typing import Any

TORCH_THREADS_PER_WORKER = 4  # SAM 2 on CPU: 4 threads each beats one worker with every core (sublinear scaling)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
JOBQUEUE_KINDS = ("slurm", "pbs", "lsf")


def cpu_cores() -> int:
    """The cores this process may use (its CPU affinity, e.g. a SLURM allocation), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_layout(cpu_count: int, gpu_count: int, requested: int | None = None) -> tuple[int, int]:
    """(workers, torch threads per worker) for a machine of ``cpu_count`` cores and ``gpu_count`` GPUs.

    With GPUs: one worker per GPU (``requested`` may ask for fewer, not more), the cores shared among them.
    Without: ``requested`` workers, else one per ``TORCH_THREADS_PER_WORKER`` cores (at least one); the cores
    are split evenly, so workers x threads <= cores. More workers than cores is refused (each would get less
    than a core and the movies would run slower than with fewer workers).
    """
    if cpu_count < 1 or gpu_count < 0:
        raise ValueError(f"need at least 1 core and 0 or more GPUs, got {cpu_count} and {gpu_count}")
    if requested is not None and requested < 1:
        raise ValueError(f"--workers must be at least 1, got {requested}")
    if gpu_count:
        if requested is not None and requested > gpu_count:
            raise ValueError(f"--workers {requested} is more than the {gpu_count} GPU(s): each worker uses one GPU; "
                             f"give --workers {gpu_count} or fewer, or leave it out")
        workers = requested or gpu_count
    else:
        if requested is not None and requested > cpu_count:
            raise ValueError(f"--workers {requested} is more than the {cpu_count} CPU core(s) here: give --workers "
                             f"{cpu_count} or fewer (leave it out for {max(1, cpu_count // TORCH_THREADS_PER_WORKER)})")
        workers = requested or max(1, cpu_count // TORCH_THREADS_PER_WORKER)
    return workers, max(1, cpu_count // workers)


def visible_gpus(count: int, visible: str | None) -> list[str]:
    """The ids to give each GPU worker in ``CUDA_VISIBLE_DEVICES``: this process's own list when it has one
    (a job given GPUs 2,3 gives its workers "2" and "3"), else 0..count-1."""
    ids = [part.strip() for part in (visible or "").split(",") if part.strip()]
    return ids[:count] if ids else [str(i) for i in range(count)]


def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that give torch (and numpy) ``threads`` threads in a worker process."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def local_client(workers: int | None = None, *, cpu_count: int | None = None) -> Any:
    """A dask Client on a new cluster of worker processes on this machine, sized by :func:`worker_layout`.

    CUDA GPUs: one worker per GPU, each seeing only its own. Apple MPS counts as one GPU. ``cpu_count``
    overrides the cores found (:func:`cpu_cores`). Close it with :func:`close_client` (it closes the cluster).
    """
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    from .device import accelerators

    cores = cpu_count or cpu_cores()
    present = accelerators()
    cuda = _cuda_count() if "cuda" in present else 0
    count, threads = worker_layout(cores, cuda or int("mps" in present), workers)
    env = thread_environment(threads)
    dashboard = ":0" if importlib.util.find_spec("bokeh") else None  # a free port; none without bokeh
    if cuda:
        # LocalCluster gives every worker the same options; a SpecCluster of nannies gives each its own GPU
        # on this machine only (as LocalCluster), each worker with its share of the memory
        gpus = visible_gpus(cuda, os.environ.get("CUDA_VISIBLE_DEVICES"))[:count]
        specs = {f"gpu-{gpu}": {"cls": Nanny, "options": {
                     "nthreads": 1, "host": "127.0.0.1", "memory_limit": 1 / len(gpus),
                     "env": {**env, "CUDA_VISIBLE_DEVICES": gpu}}}
                 for gpu in gpus}
        cluster = SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": dashboard, "host": "127.0.0.1"}})
    else:
        cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, env=env,
                               dashboard_address=dashboard)
    return Client(cluster)


def scheduler_client(address: str, timeout: float = 30.0) -> Any:
    """A dask Client on a running scheduler (``dask scheduler`` / ``dask worker`` started by hand or by a
    cluster's tools); its workers should run one task at a time (``--nthreads 1``) and have napari-sam2."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise OSError(f"cannot reach the dask scheduler at {address} within {timeout:g} s ({exc}); check the "
                      "address (tcp://HOST:PORT) and that the scheduler is running") from None


def jobqueue_cluster(kind: str, queue: str | None = None, cores: int = TORCH_THREADS_PER_WORKER,
                     memory: str = "16GB", walltime: str = "01:00:00", jobs: int = 1, *, account: str | None = None,
                     directives: list[str] | tuple[str, ...] = (), log_directory: str | None = None,
                     submit: bool = True, **options: Any) -> Any:
    """A dask-jobqueue cluster of ``kind`` ("slurm", "pbs" or "lsf") that submits ``jobs`` jobs (none when
    ``submit`` is False): each books ``cores`` CPUs and ``memory`` for ``walltime`` ("HH:MM:SS") and runs one
    worker that tracks one movie at a time with ``cores`` torch threads.

    ``directives`` are added to the job script as they are (e.g. ``--gres=gpu:1`` for SLURM), ``account`` is
    the account / project charged; ``options`` go to the dask-jobqueue class (e.g. ``interface``).
    """
    from dask.utils import parse_bytes

    kind = kind.lower()
    if kind not in JOBQUEUE_KINDS:
        raise ValueError(f"cluster kind must be one of {', '.join(JOBQUEUE_KINDS)}, got {kind!r}")
    if cores < 1 or jobs < 1:
        raise ValueError(f"need at least 1 core per job and 1 job, got cores={cores}, jobs={jobs}")
    if not re.fullmatch(r"\d+(:\d{2}){1,2}", walltime):
        raise ValueError(f"walltime must be HH:MM:SS (or HH:MM), got {walltime!r}")
    try:
        size = parse_bytes(memory)
    except (ValueError, TypeError):
        raise ValueError(f"memory must be a size such as 16GB or 4000MiB, got {memory!r}") from None
    # dask-jobqueue's `cores` is the worker's dask threads: 1, one movie at a time; the CPUs booked are `cores`
    common = {"queue": queue, "cores": 1, "processes": 1, "memory": memory, "job_extra_directives": list(directives),
              "job_script_prologue": [f"export {name}={value}" for name, value in thread_environment(cores).items()],
              "log_directory": log_directory, "n_workers": jobs if submit else 0, **options}
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(account=account, walltime=_hms(walltime), job_cpu=cores, **common)
    if kind == "pbs":
        from dask_jobqueue import PBSCluster
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        return PBSCluster(account=account, walltime=_hms(walltime),
                          resource_spec=f"select=1:ncpus={cores}:mem={pbs_format_bytes_ceil(size)}", **common)
    from dask_jobqueue import LSFCluster

    return LSFCluster(project=account, walltime=_lsf_walltime(walltime), ncpus=cores, mem=size, **common)


def job_script(kind: str, queue: str | None = None, cores: int = TORCH_THREADS_PER_WORKER, memory: str = "16GB",
               walltime: str = "01:00:00", jobs: int = 1, **options: Any) -> str:
    """The job script each of the ``jobs`` jobs of :func:`jobqueue_cluster` would submit (submits nothing;
    its scheduler address is that of a scheduler started here for the purpose and closed)."""
    options.setdefault("scheduler_options", {"dashboard": False})  # a scheduler only for its address
    cluster = jobqueue_cluster(kind, queue, cores, memory, walltime, jobs, submit=False, **options)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def jobqueue_client(kind: str, queue: str | None = None, cores: int = TORCH_THREADS_PER_WORKER,
                    memory: str = "16GB", walltime: str = "01:00:00", jobs: int = 1, **options: Any) -> Any:
    """A Client on :func:`jobqueue_cluster` with its ``jobs`` jobs submitted; close it with :func:`close_client`
    (which cancels the jobs)."""
    from distributed import Client

    return Client(jobqueue_cluster(kind, queue, cores, memory, walltime, jobs, **options))


def close_client(client: Any) -> None:
    """Close a client and the cluster it was made on (a Client made on a cluster object leaves it running)."""
    cluster = getattr(client, "cluster", None)
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _hms(walltime: str) -> str:
    return walltime if walltime.count(":") == 2 else f"{walltime}:00"


def _lsf_walltime(walltime: str) -> str:
    """LSF's ``-W`` takes HH:MM: seconds are rounded up to the next minute."""
    parts = [int(p) for p in _hms(walltime).split(":")]
    minutes = parts[0] * 60 + parts[1] + math.ceil(parts[2] / 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
