"""Where ``napari-sam2 batch`` runs: the worker layout rule, a LocalCluster whose workers give torch their share of
the cores, a running scheduler, SLURM / PBS / LSF job scripts (built and "submitted" to a stand-in ``sbatch``,
no scheduler needed) and the ``batch`` command's options."""

from __future__ import annotations

import argparse
import os
import re
import stat
import time

import pytest

from napari_sam2 import cli_batch
from napari_sam2.batch_cluster import (
    TORCH_THREADS_PER_WORKER,
    close_client,
    cpu_cores,
    job_script,
    jobqueue_client,
    local_client,
    scheduler_client,
    visible_gpus,
    waiting_for_workers,
    worker_layout,
    worker_lifetime,
)


@pytest.mark.parametrize(("cores", "gpus", "requested", "layout"), [
    (2, 0, None, (1, 2)),  # a laptop: one worker with every core
    (3, 0, None, (1, 3)),
    (16, 0, None, (16 // TORCH_THREADS_PER_WORKER, TORCH_THREADS_PER_WORKER)),
    (16, 0, 3, (3, 5)),  # the cores split evenly, the remainder left idle
    (2, 0, 2, (2, 1)),
    (16, 2, None, (2, 8)),  # one worker per GPU, the cores shared
    (16, 4, 1, (1, 16)),
])
def test_worker_layout(cores, gpus, requested, layout):
    assert worker_layout(cores, gpus, requested) == layout


def test_worker_layout_never_oversubscribes_the_cores():
    for cores in range(1, 65):
        for requested in [None, *range(1, cores + 1)]:
            workers, threads = worker_layout(cores, 0, requested)
            assert workers >= 1 and threads >= 1 and workers * threads <= cores
            assert requested is None or workers == requested


@pytest.mark.parametrize(("cores", "gpus", "requested", "message"), [
    (4, 0, 5, "--workers 5 is more than the 4 CPU core"),
    (16, 2, 3, "--workers 3 is more than the 2 GPU"),
    (4, 0, 0, "--workers must be at least 1"),
])
def test_worker_layout_refuses(cores, gpus, requested, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        worker_layout(cores, gpus, requested)


def test_cpu_cores_are_those_this_process_may_use():
    cores = cpu_cores()
    assert isinstance(cores, int) and 1 <= cores <= (os.cpu_count() or 1)


def test_visible_gpus_follow_this_process_list():
    assert visible_gpus(2, None) == ["0", "1"]
    assert visible_gpus(2, "") == ["0", "1"]
    assert visible_gpus(2, "3, 5") == ["3", "5"]


@pytest.fixture(scope="module")
def client():
    """One local worker process sized for 2 cores: 2 torch threads (dask's nanny alone would give it 1)."""
    client = local_client(1, cpu_count=2)
    yield client
    close_client(client)


def _worker_threads() -> tuple[str | None, int]:
    import os

    import torch

    return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()


def test_local_workers_run_one_movie_at_a_time_with_their_share_of_torch_threads(client):
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 1
    assert all(worker["nthreads"] == 1 for worker in workers.values())
    assert client.run(_worker_threads) == {address: ("2", 2) for address in workers}


SPAWNED_THREADS = """
import torch  # before the cluster starts, as the napari-sam2 script does: spawned workers import it again first

from napari_sam2.batch_cluster import close_client, local_client


def threads():
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    for workers in (1, 2):  # the second cluster must not inherit the first one's threads
        client = local_client(workers, cpu_count=2)
        print(workers, sorted(client.run(threads).values()), flush=True)
        close_client(client)
"""


def test_local_workers_get_their_threads_when_the_main_module_imports_torch(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "main_with_torch.py"
    script.write_text(SPAWNED_THREADS)
    from napari_sam2.device import accelerators

    if "mps" in accelerators():
        pytest.skip("a Mac's GPU (MPS) gets one worker: the 2-worker layout is for CPUs")
    # the user's own setting, replaced in the workers only; no CUDA GPU, so that the CPU layout is used
    environment = {**os.environ, "OMP_NUM_THREADS": "7", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                          timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["1 [2]", "2 [1, 1]"]


def test_scheduler_client_reaches_a_running_scheduler(client):
    other = scheduler_client(client.scheduler.address)
    try:
        assert other.submit(sum, [1, 2, 3]).result(timeout=60) == 6
    finally:
        other.close()
    assert client.status == "running"  # closing a second client leaves the scheduler running


def test_scheduler_client_says_when_there_is_no_scheduler():
    with pytest.raises(OSError, match=re.escape("cannot reach the dask scheduler at tcp://127.0.0.1:9 within 2 s")):
        scheduler_client("tcp://127.0.0.1:9", timeout=2)


def test_waiting_for_workers_is_none_when_there_are_workers(client):
    assert waiting_for_workers(client) is None


def test_waiting_for_workers_names_a_scheduler_without_workers():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, dashboard_address=None) as cluster, Client(cluster) as empty:
        address = cluster.scheduler_address
        assert waiting_for_workers(empty) == (f"waiting for workers: the scheduler at {address} has none "
                                              f"(start some: dask worker {address} --nthreads 1)")
    assert waiting_for_workers(empty) is None  # closed: nothing to wait for, and no error


def directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def worker_command(script: str) -> str:
    return script.strip().splitlines()[-1]


def test_slurm_job_script_books_the_resources():
    script = job_script("slurm", "gpu", cores=8, memory="32GB", walltime="02:30:00", account="lab42",
                        directives=["--gres=gpu:1"])
    assert directives(script, "#SBATCH") == ["-J dask-worker", "-p gpu", "-A lab42", "-n 1", "--cpus-per-task=8",
                                             "--mem=30G", "-t 02:30:00", "--gres=gpu:1"]
    assert "export OMP_NUM_THREADS=8" in script  # torch uses the booked cores; the nanny keeps what is exported
    worker = worker_command(script)
    assert "distributed.cli.dask_worker tcp://" in worker and "--nthreads 1" in worker  # one movie at a time


def test_pbs_and_lsf_job_scripts_book_the_resources():
    pbs = job_script("pbs", "workq", cores=6, memory="20GB", walltime="00:45:00", account="lab42")
    assert directives(pbs, "#PBS") == ["-N dask-worker", "-q workq", "-A lab42", "-l select=1:ncpus=6:mem=19GB",
                                       "-l walltime=00:45:00"]
    lsf = job_script("lsf", "normal", cores=6, memory="20GB", walltime="01:30:20")
    lsf_lines = directives(lsf, "#BSUB")
    assert {"-q normal", "-n 6", "-M 20000000", "-W 01:31"} <= set(lsf_lines)  # LSF: HH:MM, seconds rounded up
    assert all("export OMP_NUM_THREADS=6" in script and "--nthreads 1" in script for script in (pbs, lsf))


@pytest.mark.parametrize(("walltime", "lifetime", "stagger"), [
    ("01:00:00", 3180, 120),  # retires 51 to 55 min in: 5 min before the walltime at the latest
    ("24:00:00", 86400 - 300 - 120, 120),
    ("00:45:00", 2700 - 270 - 120, 120),  # under 50 min: a tenth of the walltime before it
    ("00:10:00", 510, 30),  # under 40 min: a twentieth of it for the stagger; retires 8 to 9 min in
    ("00:01", 51, 3),
])
def test_worker_lifetime_retires_the_worker_before_the_walltime(walltime, lifetime, stagger):
    assert worker_lifetime(walltime) == (lifetime, stagger)


def test_worker_lifetime_always_ends_before_the_walltime():
    for seconds in range(60, 3 * 3600, 7):
        lifetime, stagger = worker_lifetime(f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
        assert 0 <= stagger < lifetime and 0.8 * seconds <= lifetime - stagger
        assert lifetime + stagger <= seconds - min(300, seconds // 10)


@pytest.mark.parametrize(("kind", "walltime", "flags"), [
    ("slurm", "01:00:00", "--lifetime 3180s --lifetime-stagger 120s"),
    ("pbs", "00:45:00", "--lifetime 2310s --lifetime-stagger 120s"),
    ("lsf", "00:10:00", "--lifetime 510s --lifetime-stagger 30s"),
])
def test_job_workers_retire_before_the_walltime(kind, walltime, flags):
    command = worker_command(job_script(kind, "q", cores=2, memory="4GB", walltime=walltime))
    assert "distributed.cli.dask_worker tcp://" in command and command.endswith(flags)


def test_worker_extra_args_follow_the_lifetime_flags():
    command = worker_command(job_script("slurm", walltime="01:00:00", worker_extra_args=["--lifetime", "1h"]))
    assert command.endswith("--lifetime 3180s --lifetime-stagger 120s --lifetime 1h")  # the last one counts


@pytest.mark.parametrize(("options", "message"), [
    ({"kind": "sge"}, "cluster kind must be one of slurm, pbs, lsf"),
    ({"walltime": "90 minutes"}, "walltime must be HH:MM:SS"),
    ({"walltime": "00:00:59"}, "walltime must be at least 60 s"),
    ({"memory": "lots"}, "memory must be a size such as 16GB"),
    ({"cores": 0}, "need at least 1 core per job"),
])
def test_job_options_are_checked(options, message):
    arguments = {"kind": "slurm", **options}
    with pytest.raises(ValueError, match=re.escape(message)):
        job_script(arguments.pop("kind"), **arguments)


def fake_queue(job_class, folder, monkeypatch):
    """Stand-ins for a job class's submit / cancel commands (sbatch / scancel, qsub / qdel, bsub / bkill) that
    record the job scripts submitted and the jobs cancelled in ``folder``; no job ever starts."""
    log = folder / "log"
    log.mkdir()
    submit, cancel = folder / "submit", folder / "cancel"
    # the jobs are submitted concurrently: each call names its copy and its job id by its own process id;
    # the script comes as an argument (sbatch, qsub) or on standard input (bsub < script)
    submit.write_text(f'#!/bin/sh\nif [ -n "$1" ]; then cp "$1" {log}/job$$.sh; else cat > {log}/job$$.sh; fi\n'
                      'echo "Submitted batch job $$"\n')
    cancel.write_text(f'#!/bin/sh\necho "$1" >> {log}/cancelled\n')
    for script in (submit, cancel):
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(job_class, "submit_command", str(submit))
    monkeypatch.setattr(job_class, "cancel_command", str(cancel))
    return log


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Stand-ins for sbatch / scancel that record the job scripts submitted and the jobs cancelled."""
    from dask_jobqueue.slurm import SLURMJob

    return fake_queue(SLURMJob, tmp_path, monkeypatch)


def wait_for_jobs(log, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(list(log.glob("job*.sh"))) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def test_jobqueue_client_submits_the_jobs_asked_for_and_cancels_them(fake_slurm):
    client = jobqueue_client("slurm", "short", cores=2, memory="4GB", walltime="00:10:00", jobs=3)
    try:
        wait_for_jobs(fake_slurm, 3)
        time.sleep(2.5)  # the adaptive loop (every second) would have submitted a fourth job by now
        scripts = sorted(fake_slurm.glob("job*.sh"))
        assert len(scripts) == 3
        assert all("#SBATCH --cpus-per-task=2" in s.read_text() and "#SBATCH -p short" in s.read_text()
                   for s in scripts)
        assert client.scheduler.address in scripts[0].read_text()  # the workers call back this scheduler
        assert "--lifetime 510s --lifetime-stagger 30s" in scripts[0].read_text()
    finally:
        close_client(client)
    assert sorted((fake_slurm / "cancelled").read_text().split()) == sorted(s.stem[3:] for s in scripts)


@pytest.mark.parametrize(("kind", "queue_command"), [("slurm", "squeue"), ("pbs", "qstat"), ("lsf", "bjobs")])
def test_waiting_for_workers_names_the_jobs_not_started(kind, queue_command, tmp_path, monkeypatch):
    from dask_jobqueue import LSFCluster, PBSCluster, SLURMCluster

    cluster_class = {"slurm": SLURMCluster, "pbs": PBSCluster, "lsf": LSFCluster}[kind]
    log = fake_queue(cluster_class.job_cls, tmp_path, monkeypatch)
    client = jobqueue_client(kind, "short", cores=1, memory="1GB", walltime="00:10:00", jobs=2)
    try:
        expected = f"waiting for workers: 2 job(s) submitted, none started yet (check the queue: {queue_command})"
        deadline = time.monotonic() + 30
        while (message := waiting_for_workers(client)) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert message == expected
        assert len(list(log.glob("job*.sh"))) == 2
    finally:
        close_client(client)


def batch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam2")
    cli_batch.add_batch_command(parser.add_subparsers(required=True))
    return parser


@pytest.mark.parametrize("choices", [["--workers", "2", "--scheduler", "tcp://x:1"], ["--slurm", "--pbs"],
                                     ["--workers", "2", "--lsf"]])
def test_cluster_choices_are_mutually_exclusive(choices, capsys):
    with pytest.raises(SystemExit) as caught:
        batch_parser().parse_args(["batch", "sheet.csv", "--out", "out", *choices])
    assert caught.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_job_options_need_a_job_scheduler(tmp_path):
    args = batch_parser().parse_args(["batch", "sheet.csv", "--out", str(tmp_path), "--queue", "gpu"])
    with pytest.raises(ValueError, match=re.escape("--queue is an option of cluster jobs: add --slurm, --pbs or")):
        args.run(args)


def test_a_bad_model_is_refused_before_any_job_is_submitted(tmp_path, fake_slurm, capsys):
    from batch_support import write_movie

    from napari_sam2 import cli

    write_movie(tmp_path, "m0", 2, 0)
    (tmp_path / "sheet.csv").write_text("movie,prompts\nm0.tif,m0.csv\n")
    assert cli.main(["batch", str(tmp_path / "sheet.csv"), "--out", str(tmp_path / "out"), "--slurm", "--model",
                     "sam3_hiera_huge", "--quiet"]) == 1
    assert "'sam3_hiera_huge' is neither a known model nor an existing file" in capsys.readouterr().err
    time.sleep(1.0)  # a job submitted by an adaptive cluster would be there by now
    assert not list(fake_slurm.glob("job*.sh")) and not (tmp_path / "out").exists()


def test_making_a_job_cluster_keeps_ctrl_c_a_keyboard_interrupt():
    """dask_jobqueue's import makes SIGINT a silent sys.exit(): Ctrl-C would end a batch with status 0 and no
    summary. A fresh process: the tests' own imports of dask_jobqueue already ran it here."""
    import subprocess
    import sys

    code = ("import signal\nfrom napari_sam2.batch_cluster import job_script\njob_script('slurm')\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_print_job_script_submits_nothing(capsys, fake_slurm):
    args = batch_parser().parse_args(["batch", "missing.csv", "--out", "out", "--slurm", "--queue", "gpu",
                                      "--cores", "12", "--memory", "48GB", "--walltime", "04:00:00", "--jobs", "20",
                                      "--job-directive=--gres=gpu:1", "--print-job-script"])
    assert args.run(args) == 0
    script = capsys.readouterr().out
    assert {"-p gpu", "--cpus-per-task=12", "--mem=45G", "-t 04:00:00", "--gres=gpu:1"} <= set(
        directives(script, "#SBATCH"))
    assert worker_command(script).endswith("--lifetime 13980s --lifetime-stagger 120s")  # 4 h - 5 min - 2 min
    assert not list(fake_slurm.glob("job*.sh"))


def _visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_local_gpu_worker_is_given_its_own_gpu(monkeypatch):
    """The GPU layout on any machine: 2 GPUs "found" (this job was given GPUs 3 and 5), so 2 workers, one each."""
    from napari_sam2 import batch_cluster, device

    monkeypatch.setattr(device, "accelerators", lambda: ["cuda"])
    monkeypatch.setattr(batch_cluster, "_cuda_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    client = local_client(cpu_count=2)
    try:
        workers = client.scheduler_info()["workers"]
        assert sorted(client.run(_visible_devices).values()) == ["3", "5"]
        assert [worker["nthreads"] for worker in workers.values()] == [1, 1]
    finally:
        close_client(client)


@pytest.mark.cuda
def test_local_workers_get_one_gpu_each():
    import torch

    def seen() -> tuple[str | None, int]:
        import os

        import torch

        return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()

    gpus = torch.cuda.device_count()
    client = local_client()
    try:
        found = client.run(seen)
    finally:
        close_client(client)
    assert len(found) == gpus
    expected = visible_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(visible for visible, _ in found.values()) == sorted(expected)
    assert all(count == 1 for _, count in found.values())
