"""``napari-sam2 batch SHEET.csv --out DIR``: many movies, one ``track`` job each, on dask.distributed.

Where the movies run: worker processes on this machine (default, ``--workers N``), a running dask scheduler
(``--scheduler ADDRESS``) or SLURM / PBS / LSF jobs (``--slurm`` / ``--pbs`` / ``--lsf`` with ``--queue``,
``--cores``, ``--memory``, ``--walltime``, ``--jobs``). Exit status 0 when every movie is done (or was already),
1 otherwise. No dask, torch or sheet import here until the command runs (``cli.py`` imports this module, and
``batch_sheet`` imports ``cli``). Movies are (T, Y, X[, C]).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
JOB_DEFAULTS = {"cores": 4, "memory": "16GB", "walltime": "01:00:00", "jobs": 1}  # sized for one movie of a plate
JOB_OPTIONS = ("queue", "account", "cores", "memory", "walltime", "jobs", "directives", "log_dir", "print_job_script")


def add_batch_command(commands: Any) -> None:
    """Add the ``batch`` sub-command to the ``napari-sam2`` sub-parsers ``commands``."""
    from .cli import _positive_int as _positive  # cli imports this module: imported when the command is built

    batch = commands.add_parser(
        "batch", help="track many movies listed in a CSV sheet, on this machine, a dask scheduler or a cluster",
        description="Track every movie of SHEET (one row per movie: movie,prompts and optionally axes,channel,"
                    "start,direction,frames,out; paths relative to the sheet) with `napari-sam2 track`, one dask "
                    "task per movie. Outputs go to DIR (default name <movie>_labels.tif) with DIR/summary.csv; a "
                    "movie whose output exists and matches its row is skipped, so rerunning resumes a batch.")
    batch.add_argument("sheet", type=Path, metavar="SHEET.csv", help="the movie sheet (CSV with a header row)")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the outputs and summary.csv")
    batch.add_argument("--model", default=None, metavar="NAME|PATH",
                       help="known model name or checkpoint file (on a cluster: a path every node can read); "
                            "each worker loads it once. Default: a session file's own model, else the default "
                            "model")
    batch.add_argument("--device", default=None, metavar="DEVICE",
                       help="where workers run the model: cuda, cuda:N, mps or cpu (default: CUDA, then MPS, then "
                            "the CPU; local GPU workers get one GPU each)")
    batch.add_argument("--force", action="store_true",
                       help="run every movie again, also those whose output is done and matches its row")
    batch.add_argument("--retries", type=_count, default=2, metavar="N",
                       help="run a movie again up to N times when it fails (default 2); a movie whose worker "
                            "dies is re-run by dask (distributed.scheduler.allowed-failures, default 3 times)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, default=None, metavar="N",
                       help="worker processes on this machine (default: one per GPU; without GPUs one per 4 cores)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running dask scheduler, e.g. tcp://node12:8786 (its workers: --nthreads 1)")
    for kind in ("slurm", "pbs", "lsf"):
        where.add_argument(f"--{kind}", dest="jobqueue", action="store_const", const=kind,
                           help=f"submit {kind.upper()} jobs through dask-jobqueue, one worker each (options below)")
    jobs = batch.add_argument_group("cluster jobs (with --slurm, --pbs or --lsf)")
    jobs.add_argument("--queue", default=None, help="queue / partition to submit to (default: the cluster's)")
    jobs.add_argument("--account", default=None, help="account / project the jobs are charged to")
    jobs.add_argument("--cores", type=_positive, default=None, metavar="N",
                      help=f"CPU cores per job, all used by torch (default {JOB_DEFAULTS['cores']})")
    jobs.add_argument("--memory", default=None, metavar="SIZE",
                      help=f"memory per job, e.g. 32GB (default {JOB_DEFAULTS['memory']})")
    jobs.add_argument("--walltime", default=None, metavar="HH:MM:SS",
                      help=f"time limit per job (default {JOB_DEFAULTS['walltime']}); each worker retires shortly "
                           "before it and a new job replaces it, and a movie it was tracking runs again on another "
                           "worker: give a walltime longer than one movie takes")
    jobs.add_argument("--jobs", type=_positive, default=None, metavar="N",
                      help=f"jobs (workers) to submit (default {JOB_DEFAULTS['jobs']})")
    jobs.add_argument("--job-directive", dest="directives", action="append", default=None, metavar="TEXT",
                      help="extra scheduler directive, repeatable, e.g. --job-directive=--gres=gpu:1 (SLURM)")
    jobs.add_argument("--log-dir", default=None, metavar="DIR", help="folder for the jobs' output files")
    jobs.add_argument("--print-job-script", action="store_true",
                      help="print the job script and exit without submitting anything")
    batch.set_defaults(run=run_batch, jobqueue=None)


def run_batch(args: argparse.Namespace) -> int:
    """Check the sheet, start (or reach) the workers, track every movie and report; 0 when all are done."""
    from .cli import EXIT_INTERRUPTED, _say

    given = [name for name in JOB_OPTIONS if getattr(args, name) not in (None, False)]
    if given and args.jobqueue is None:
        raise ValueError(f"--{given[0].replace('_', '-')} is an option of cluster jobs: add --slurm, --pbs or --lsf")
    _require("distributed", "dask.distributed")
    if args.jobqueue is not None:
        _require("dask_jobqueue", "dask-jobqueue")
    if args.jobqueue is not None and args.print_job_script:
        from .batch_cluster import job_script

        print(job_script(args.jobqueue, **_job_options(args)))
        return 0
    from .batch_run import BatchInterrupted, plan_batch
    from .batch_sheet import SUMMARY_NAME

    # every row, output, the model and the device checked before any worker starts or job is submitted
    plan = plan_batch(args.sheet, args.out, model=args.model, device=args.device, force=args.force)
    try:
        summary = _track(plan, args)
    except BatchInterrupted as stopped:
        _say(f"{_counts(stopped.summary)}; summary in {args.out / SUMMARY_NAME}")
        _say("interrupted; run the same command again to resume (done movies are skipped)")
        return EXIT_INTERRUPTED
    for line in summary:
        if line["status"] == "failed":
            _say(f"failed: {line['movie']}: {line.get('error') or 'no error message'}")
    _say(f"{_counts(summary)}; summary in {args.out / SUMMARY_NAME}")
    ok = sum(line["status"] in ("done", "skipped") for line in summary)
    return 0 if ok == len(summary) else EXIT_FAILED


def _counts(summary: list[dict[str, Any]]) -> str:
    """E.g. "2 done, 1 skipped (already done), 1 failed of 4 movie(s)" (and how many did not run)."""
    count = {status: sum(line["status"] == status for line in summary) for status in ("done", "skipped", "failed")}
    not_run = len(summary) - sum(count.values())
    return (f"{count['done']} done, {count['skipped']} skipped (already done), {count['failed']} failed"
            f"{f', {not_run} not run' if not_run else ''} of {len(summary)} movie(s)")


def _track(plan: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the checked ``plan`` on the client the options ask for; a client made here is closed at the end."""
    from .batch_cluster import close_client, jobqueue_client, scheduler_client
    from .batch_run import run_plan

    client = None
    if args.scheduler is not None:
        client = scheduler_client(args.scheduler)
    elif args.jobqueue is not None:
        client = jobqueue_client(args.jobqueue, **_job_options(args))
    try:  # client None: run_plan starts (and closes) a LocalCluster of --workers workers
        return run_plan(plan, client, workers=args.workers, retries=args.retries, progress=not args.quiet)
    finally:
        if client is not None:
            if args.scheduler is not None:
                client.close()  # someone else's scheduler: leave it running
            else:
                close_client(client)  # cancels the jobs


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) if getattr(args, name) is not None else default
               for name, default in JOB_DEFAULTS.items()}
    return {**options, "queue": args.queue, "account": args.account, "directives": args.directives or [],
            "log_directory": args.log_dir}


def _require(module: str, name: str) -> None:
    """One line saying how to install a package of the ``batch`` extra when it is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"napari-sam2 batch needs {name}: pip install 'napari-sam2[batch]'")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
