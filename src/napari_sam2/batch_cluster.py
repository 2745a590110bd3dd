"""Where ``napari-sam2 batch`` runs its movies: a dask.distributed client on this machine, on a running scheduler,
or on SLURM / PBS / LSF jobs through dask-jobqueue.

Every worker runs one movie at a time (one dask thread) and gives torch several CPU threads, so that
workers x torch threads never exceeds the cores: dask's nanny starts workers with ``OMP_NUM_THREADS=1`` (right
for numpy-heavy tasks, 1/n of the speed for one torch model), so the thread count is set per worker here.
On a GPU machine each worker gets its own GPU through ``CUDA_VISIBLE_DEVICES``. A cluster job's worker
retires shortly before the job's walltime and a new job replaces it (:func:`worker_lifetime`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
from collections.abc import Iterator
from typing import Any

TORCH_THREADS_PER_WORKER = 4  # SAM 2 on CPU: 4 threads each beats one worker with every core (sublinear scaling)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
JOBQUEUE_KINDS = ("slurm", "pbs", "lsf")
QUEUE_COMMANDS = {"slurm": "squeue", "pbs": "qstat", "lsf": "bjobs"}  # what a user runs to see the jobs
# A job's worker retires (dask's --lifetime) RETIRE_MARGIN_S before the walltime, or a tenth of a short walltime
# before it, give or take up to LIFETIME_STAGGER_S (a twentieth of a short walltime) so that jobs started together
# do not all retire at once; see worker_lifetime.
RETIRE_MARGIN_S, RETIRE_MARGIN_FRACTION = 300, 0.10
LIFETIME_STAGGER_S, LIFETIME_STAGGER_FRACTION = 120, 0.05
MIN_WALLTIME_S = 60  # shorter jobs could not even load the model


def cpu_cores() -> int:
    """The cores this process may use, not the machine's count: dask's count, the least of the machine's cores,
    this process's CPU affinity (e.g. a SLURM allocation) and its cgroup CPU quota (e.g. a container's)."""
    from dask.system import cpu_count

    return cpu_count()


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
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    from .device import accelerators

    cores = cpu_count or cpu_cores()
    present = accelerators()
    cuda = _cuda_count() if "cuda" in present else 0
    count, threads = worker_layout(cores, cuda or int("mps" in present), workers)
    env = thread_environment(threads)
    dashboard = ":0" if importlib.util.find_spec("bokeh") else None  # a free port; none without bokeh
    with _spawn_environment(env):
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
    return _client_on(cluster)


@contextlib.contextmanager
def _spawn_environment(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in this process while local worker processes are started, then put the old values back.

    Why: a nanny's ``env`` reaches its worker only once the worker's Python runs, after ``spawn`` imported the
    main module again, too late for torch's OpenMP when that module imports torch (the ``napari-sam2`` script
    does, through napari_sam2.cli): torch would keep the ``OMP_NUM_THREADS=1`` that the nanny sets before
    spawning (dask's ``distributed.nanny.pre-spawn-environ``). The nanny takes those variables from this
    process's environment when there, when it is made, and keeps them for a restart of its worker.
    """
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    """A dask-jobqueue cluster of ``kind`` ("slurm", "pbs" or "lsf") that keeps ``jobs`` jobs submitted (none
    when ``submit`` is False): each books ``cores`` CPUs and ``memory`` for ``walltime`` ("HH:MM:SS") and runs
    one worker that tracks one movie at a time with ``cores`` torch threads.

    The worker retires shortly before the walltime (:func:`worker_lifetime`) and the cluster's adaptive loop
    (minimum = maximum = ``jobs``) submits a new job in its place, so a batch longer than the walltime goes on.
    ``directives`` are added to the job script as they are (e.g. ``--gres=gpu:1`` for SLURM), ``account`` is
    the account / project charged; ``options`` go to the dask-jobqueue class (e.g. ``interface``); their
    ``worker_extra_args`` (and the dask-jobqueue configuration's) follow the lifetime flags, so may replace them.
    """
    from dask.utils import parse_bytes

    kind = kind.lower()
    if kind not in JOBQUEUE_KINDS:
        raise ValueError(f"cluster kind must be one of {', '.join(JOBQUEUE_KINDS)}, got {kind!r}")
    if cores < 1 or jobs < 1:
        raise ValueError(f"need at least 1 core per job and 1 job, got cores={cores}, jobs={jobs}")
    lifetime, stagger = worker_lifetime(walltime)
    try:
        size = parse_bytes(memory)
    except (ValueError, TypeError):
        raise ValueError(f"memory must be a size such as 16GB or 4000MiB, got {memory!r}") from None
    # dask-jobqueue's `cores` is the worker's dask threads: 1, one movie at a time; the CPUs booked are `cores`
    worker_args = ["--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s",
                   *_configured_worker_args(kind), *(options.pop("worker_extra_args", None) or ())]
    common = {"queue": queue, "cores": 1, "processes": 1, "memory": memory, "job_extra_directives": list(directives),
              "job_script_prologue": [f"export {name}={value}" for name, value in thread_environment(cores).items()],
              "worker_extra_args": worker_args, "log_directory": log_directory, **options}
    cluster = _new_jobqueue_cluster(kind, account, cores, size, walltime, common)
    if submit:  # replaces any job that ends (its walltime reached), so `jobs` jobs run until the cluster closes
        cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
    return cluster


def worker_lifetime(walltime: str) -> tuple[int, int]:
    """(lifetime, stagger) in seconds for the worker of a job of ``walltime`` ("HH:MM:SS" or "HH:MM"), given to
    ``dask worker --lifetime --lifetime-stagger`` so that it retires before the job scheduler kills its job.

    The worker retires at a random time within lifetime +/- stagger, which ends ``RETIRE_MARGIN_S`` (5 min)
    before the walltime, or a tenth of it for walltimes under 50 min; stagger is ``LIFETIME_STAGGER_S`` (2 min),
    or a twentieth of walltimes under 40 min. E.g. 01:00:00 -> (3180, 120): retired 51 to 55 min in; 00:10:00 ->
    (510, 30): 8 to 9 min in. Walltimes under ``MIN_WALLTIME_S`` (1 min) are refused.

    Retiring (distributed's ``Worker.close_gracefully``): the scheduler gives the worker no new task, moves
    the results it holds to other workers, then removes it as an expected departure: a movie it was still
    tracking is released and run again from its start on another worker, without counting as a failure
    (neither the task's retries nor the scheduler's allowed-failures are used). The worker process then exits,
    ending its job; :func:`jobqueue_cluster`'s adaptive loop submits a new job in its place once the cluster
    sees the old one gone (``distributed.deploy.lost-worker-timeout``, 15 s by default).
    """
    if not re.fullmatch(r"\d+(:\d{2}){1,2}", walltime):
        raise ValueError(f"walltime must be HH:MM:SS (or HH:MM), got {walltime!r}")
    hours, minutes, seconds = (int(part) for part in _hms(walltime).split(":"))
    total = hours * 3600 + minutes * 60 + seconds
    if total < MIN_WALLTIME_S:
        raise ValueError(f"walltime must be at least {MIN_WALLTIME_S} s (a job must load the model and track a "
                         f"movie), got {walltime!r}")
    margin = min(RETIRE_MARGIN_S, int(total * RETIRE_MARGIN_FRACTION))
    stagger = min(LIFETIME_STAGGER_S, int(total * LIFETIME_STAGGER_FRACTION))
    return total - margin - stagger, stagger


def _new_jobqueue_cluster(kind: str, account: str | None, cores: int, size: int, walltime: str,
                          common: dict[str, Any]) -> Any:
    """The dask-jobqueue cluster of ``kind``, with no job: each class names the account and the CPUs its way."""
    jobqueue = _import_jobqueue()
    if kind == "slurm":
        return jobqueue.SLURMCluster(account=account, walltime=_hms(walltime), job_cpu=cores, **common)
    if kind == "pbs":
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        return jobqueue.PBSCluster(account=account, walltime=_hms(walltime),
                          resource_spec=f"select=1:ncpus={cores}:mem={pbs_format_bytes_ceil(size)}", **common)
    return jobqueue.LSFCluster(project=account, walltime=_lsf_walltime(walltime), ncpus=cores, mem=size, **common)


def _import_jobqueue() -> Any:
    """The dask_jobqueue module, imported without keeping the Ctrl-C handler its import installs (its ``runner``
    module makes SIGINT a silent ``sys.exit()``): a batch interrupted with Ctrl-C would otherwise end with
    status 0 and without its summary, instead of a ``KeyboardInterrupt`` that cancels the movies."""
    import signal
    import threading

    handler = signal.getsignal(signal.SIGINT)
    import dask_jobqueue

    main = threading.current_thread() is threading.main_thread()
    if main and handler is not None and signal.getsignal(signal.SIGINT) is not handler:
        signal.signal(signal.SIGINT, handler)
    return dask_jobqueue


def _configured_worker_args(kind: str) -> list[str]:
    """The worker arguments of the user's dask-jobqueue configuration, which an explicit list would replace."""
    import dask

    return list(dask.config.get(f"jobqueue.{kind}.worker-extra-args", default=None) or ())


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
    return _client_on(jobqueue_cluster(kind, queue, cores, memory, walltime, jobs, **options))


def _client_on(cluster: Any) -> Any:
    """A Client on ``cluster``; the cluster is closed when the client cannot be made (its workers or jobs
    would otherwise outlive the failed command: an adaptive cluster keeps submitting jobs)."""
    from distributed import Client

    try:
        return Client(cluster)
    except BaseException:
        cluster.close()
        raise


def waiting_for_workers(client: Any) -> str | None:
    """None when the client's scheduler has a worker, else why the batch waits, for a progress bar's postfix:
    the jobs submitted and not started (with the command that shows the queue), or the scheduler without workers.

    Cheap (one small request to the scheduler, none when the client is not running) and never raises: it is
    asked every couple of seconds while a batch waits; a closed client, or any error, gives None.
    """
    try:
        if client.status != "running" or client.nthreads():
            return None
        cluster = getattr(client, "cluster", None)
        if _is_jobqueue(cluster):
            return _waiting_for_jobs(cluster)
        address = client.scheduler.address
        return (f"waiting for workers: the scheduler at {address} has none "
                f"(start some: dask worker {address} --nthreads 1)")
    except Exception:  # noqa: BLE001 - a progress message must never stop the batch
        return None


def _is_jobqueue(cluster: Any) -> bool:
    """Whether ``cluster`` is a dask-jobqueue cluster (dask-jobqueue is imported only for a class of its own)."""
    if not any(kind.__module__.startswith("dask_jobqueue") for kind in type(cluster).__mro__):
        return False
    return isinstance(cluster, _import_jobqueue().JobQueueCluster)


def _waiting_for_jobs(cluster: Any) -> str:
    """E.g. "waiting for workers: 3 job(s) submitted, none started yet (check the queue: squeue)"."""
    submitted = sum(1 for job in list(cluster.workers.values()) if getattr(job, "job_id", None))
    if not submitted:
        return "waiting for workers: no job submitted yet"
    command = QUEUE_COMMANDS.get(getattr(cluster.job_cls, "config_name", ""))
    check = f"check the queue: {command}" if command else "check the job queue"
    return f"waiting for workers: {submitted} job(s) submitted, none started yet ({check})"


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
