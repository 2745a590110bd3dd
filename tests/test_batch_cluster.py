"""Where ``napari-sam2 batch`` runs: the worker layout rule, a LocalCluster whose workers give torch their share of
the cores, a running scheduler, SLURM / PBS / LSF job scripts (built and "submitted" to a stand-in ``sbatch``,
no scheduler needed) and the ``batch`` command's options."""

from __future__ import annotations

import argparse
import csv
import os
import re
import stat
import time

import pytest

from napari_sam2 import cli_batch
from napari_sam2.batch_cluster import (
    TORCH_THREADS_PER_WORKER,
    close_client,
    job_script,
    jobqueue_client,
    local_client,
    scheduler_client,
    visible_gpus,
    worker_layout,
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


def directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def test_slurm_job_script_books_the_resources():
    script = job_script("slurm", "gpu", cores=8, memory="32GB", walltime="02:30:00", account="lab42",
                        directives=["--gres=gpu:1"])
    assert directives(script, "#SBATCH") == ["-J dask-worker", "-p gpu", "-A lab42", "-n 1", "--cpus-per-task=8",
                                             "--mem=30G", "-t 02:30:00", "--gres=gpu:1"]
    assert "export OMP_NUM_THREADS=8" in script  # torch uses the booked cores; the nanny keeps what is exported
    worker = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker tcp://" in worker and "--nthreads 1" in worker  # one movie at a time


def test_pbs_and_lsf_job_scripts_book_the_resources():
    pbs = job_script("pbs", "workq", cores=6, memory="20GB", walltime="00:45:00", account="lab42")
    assert directives(pbs, "#PBS") == ["-N dask-worker", "-q workq", "-A lab42", "-l select=1:ncpus=6:mem=19GB",
                                       "-l walltime=00:45:00"]
    lsf = job_script("lsf", "normal", cores=6, memory="20GB", walltime="01:30:20")
    lsf_lines = directives(lsf, "#BSUB")
    assert {"-q normal", "-n 6", "-M 20000000", "-W 01:31"} <= set(lsf_lines)  # LSF: HH:MM, seconds rounded up
    assert all("export OMP_NUM_THREADS=6" in script and "--nthreads 1" in script for script in (pbs, lsf))


@pytest.mark.parametrize(("options", "message"), [
    ({"kind": "sge"}, "cluster kind must be one of slurm, pbs, lsf"),
    ({"walltime": "90 minutes"}, "walltime must be HH:MM:SS"),
    ({"memory": "lots"}, "memory must be a size such as 16GB"),
    ({"cores": 0}, "need at least 1 core per job"),
])
def test_job_options_are_checked(options, message):
    arguments = {"kind": "slurm", **options}
    with pytest.raises(ValueError, match=re.escape(message)):
        job_script(arguments.pop("kind"), **arguments)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Stand-ins for sbatch / scancel that record the job scripts submitted and the jobs cancelled."""
    from dask_jobqueue.slurm import SLURMJob

    log = tmp_path / "log"
    log.mkdir()
    sbatch, scancel = tmp_path / "sbatch", tmp_path / "scancel"
    # the jobs are submitted concurrently: each call names its copy and its job id by its own process id
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {log}/job$$.sh\necho "Submitted batch job $$"\n')
    scancel.write_text(f'#!/bin/sh\necho "$1" >> {log}/cancelled\n')
    for script in (sbatch, scancel):
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(SLURMJob, "submit_command", str(sbatch))
    monkeypatch.setattr(SLURMJob, "cancel_command", str(scancel))
    return log


def test_jobqueue_client_submits_the_jobs_asked_for_and_cancels_them(fake_slurm):
    client = jobqueue_client("slurm", "short", cores=2, memory="4GB", walltime="00:10:00", jobs=3)
    try:
        deadline = time.monotonic() + 30
        while len(list(fake_slurm.glob("job*.sh"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a fourth job would have been submitted by now
        scripts = sorted(fake_slurm.glob("job*.sh"))
        assert len(scripts) == 3
        assert all("#SBATCH --cpus-per-task=2" in s.read_text() and "#SBATCH -p short" in s.read_text()
                   for s in scripts)
        assert client.scheduler.address in scripts[0].read_text()  # the workers call back this scheduler
    finally:
        close_client(client)
    assert sorted((fake_slurm / "cancelled").read_text().split()) == sorted(s.stem[3:] for s in scripts)


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


def test_print_job_script_submits_nothing(capsys, fake_slurm):
    args = batch_parser().parse_args(["batch", "missing.csv", "--out", "out", "--slurm", "--queue", "gpu",
                                      "--cores", "12", "--memory", "48GB", "--walltime", "04:00:00", "--jobs", "20",
                                      "--job-directive=--gres=gpu:1", "--print-job-script"])
    assert args.run(args) == 0
    script = capsys.readouterr().out
    assert {"-p gpu", "--cpus-per-task=12", "--mem=45G", "-t 04:00:00", "--gres=gpu:1"} <= set(
        directives(script, "#SBATCH"))
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
    assert sorted(visible for visible, _ in found.values()) == sorted(visible_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES")))
    assert all(count == 1 for _, count in found.values())


def blob_movie(seed: int, frames: int = 3, size: int = 64):
    """(T, Y, X) uint16: one bright blob drifting over noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    movie = [300 + rng.normal(0, 20, (size, size)) + 3000 * np.exp(-((yy - 20 - t) ** 2 + (xx - 24 - seed) ** 2) / 40)
             for t in range(frames)]
    return np.stack(movie).astype(np.uint16)


def test_batch_command_tracks_the_sheet_as_track_does_and_resumes(tmp_path, tiny_checkpoint, client, monkeypatch,
                                                                   capsys):
    """``napari-sam2 batch`` end to end on 2 movies, on a LocalCluster of its own (``--workers 1``): the
    single-movie command's labels exactly, exit 0; then, on the module's scheduler (``--scheduler``), after one
    prompt file was broken: the other movie is skipped, the broken one fails, exit 1."""
    import tifffile

    from napari_sam2 import batch_run, cli
    from napari_sam2.batch_movie import ModelSpec
    from napari_sam2.weights import load_model

    size = 128  # the command line always loads at 1024; the test's model input is small
    monkeypatch.setattr(batch_run, "_model_spec", lambda model: ModelSpec(str(model), image_size=size, device="cpu"))
    for i in range(2):
        tifffile.imwrite(tmp_path / f"m{i}.tif", blob_movie(i), photometric="minisblack", metadata={"axes": "TYX"})
        (tmp_path / f"m{i}.csv").write_text(f"index,axis-0,axis-1,axis-2,positive,obj_id\n0,0,20,{24 + i},True,1\n")
    (tmp_path / "sheet.csv").write_text("movie,prompts,out\nm0.tif,m0.csv,\nm1.tif,m1.csv,one/m1.tif\n")
    out = tmp_path / "out"
    command = ["batch", str(tmp_path / "sheet.csv"), "--out", str(out), "--model", str(tiny_checkpoint), "--quiet"]
    assert cli.main([*command, "--workers", "1"]) == 0, capsys.readouterr().err
    assert "2 done, 0 skipped (already done), 0 failed of 2 movie(s)" in capsys.readouterr().err

    model = load_model(tiny_checkpoint, device="cpu", image_size=size, verbose=False)
    monkeypatch.setattr(cli, "load_model", lambda *args, **kwargs: model)
    for i, output in enumerate([out / "m0_labels.tif", out / "one" / "m1.tif"]):
        expected = tmp_path / f"single{i}.tif"
        assert cli.main(["track", str(tmp_path / f"m{i}.tif"), "--prompts", str(tmp_path / f"m{i}.csv"), "--out",
                         str(expected), "--quiet"]) == 0
        assert (tifffile.imread(output) == tifffile.imread(expected)).all()
        assert tifffile.imread(output).max() == 1  # the object was tracked, not an empty stack

    (tmp_path / "m1.csv").write_text("index,axis-0\n0,not-a-frame\n")  # edited: its row must run again
    assert cli.main([*command, "--scheduler", client.scheduler.address]) == 1
    err = capsys.readouterr().err
    assert "1 done" not in err and "0 done, 1 skipped (already done), 1 failed of 2 movie(s)" in err
    assert f"failed: {tmp_path / 'm1.tif'}" in err
    with open(out / "summary.csv", newline="") as handle:
        assert [line["status"] for line in csv.DictReader(handle)] == ["skipped", "failed"]
