"""Many movies on a dask.distributed cluster: :func:`track_many`, one task per movie, resumable.

The scheduling, retries and worker restarts are dask's (``Client.submit(retries=)``, ``as_completed``; a
task whose worker died is re-run elsewhere, up to ``distributed.scheduler.allowed-failures`` times). What is
ours: skipping movies already done (a manifest beside each output holds its row's fingerprint), the summary,
and a progress bar over movies that shows the frames of the running ones (worker events, see
``batch_movie.TOPIC``). Movies are (T, Y, X[, C]) (or Z-stacks tracked along Z), as ``napari-sam2 track``.
"""

from __future__ import annotations

import asyncio
import csv
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .atomic import atomic_target
from .batch_movie import (
    SUMMARY_COLUMNS,
    TOPIC,
    ModelSpec,
    finished,
    manifest_path,
    remove_partials,
    row_fingerprint,
    run_movie,
    summary_row,
)
from .batch_progress import BatchProgress
from .batch_sheet import AUTO, SUMMARY_NAME

POLL_SECONDS = 0.1  # how often finished movies are looked for
COLLECT_SECONDS = 5.0  # while stopping: how long a finished movie's summary line is waited for
WAIT_SECONDS = 2.0  # how often the progress bar asks whether there are workers
NOT_RUN = "not run"


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`track_many`: the unfinished movies were cancelled and ``summary.csv`` written with
    them as "not run"; ``summary`` holds its lines. Running the same batch again resumes it."""

    def __init__(self, summary: list[dict[str, Any]]) -> None:
        super().__init__("batch interrupted; run it again to resume")
        self.summary = summary


@dataclass
class BatchPlan:
    """A checked batch, nothing run yet: every row, the movies to run (row, model, fingerprint) and the lines
    of the movies already done ("skipped"). :func:`plan_batch` makes it, :func:`run_plan` runs it."""

    rows: list[Any]
    out: Path
    todo: list[tuple[Any, ModelSpec, dict[str, Any]]]
    results: dict[int, dict[str, Any]] = field(default_factory=dict)


def track_many(sheet_or_rows: Any, out: str | os.PathLike, client: Any = None, *,
               model: str | os.PathLike | ModelSpec | None = None, workers: int | None = None,
               device: str | None = None, retries: int = 2, force: bool = False,
               progress: bool = True) -> list[dict[str, Any]]:
    """Track every movie of a sheet on dask; returns one summary dict per row, in sheet order.

    ``sheet_or_rows``: a sheet's path (CSV), a pandas DataFrame with the sheet's columns, or a list of dicts
    and ``MovieRow`` objects (relative paths: relative to the working folder); every row is checked before
    anything runs. Movies (T, Y, X[, C]) are tracked exactly as ``napari-sam2 track`` with the row's arguments.
    Outputs go under ``out`` (each row's ``output_path(out)``) with ``out/summary.csv``.

    ``client``: a dask ``Client`` (default: a LocalCluster of ``workers`` worker processes, sized to the GPUs
    or cores and closed at the end; ``workers`` with a ``client`` is refused). ``model``: a known name, a
    checkpoint path or a :class:`~napari_sam2.batch_movie.ModelSpec`; default: the model a row's session file
    was saved with (name and input size), else the CLI's default model. Each worker loads a model once.
    ``device`` ("cuda", "cpu", ...) overrides where workers run it (default: CUDA, then MPS, then the CPU).

    A movie whose output exists with a manifest matching its row is "skipped" (``force=True`` runs it again);
    an output of a row's name that no batch wrote (no ``.done.json`` beside it) is refused unless ``force``.
    A task that raises is retried ``retries`` times; a bad input is "failed" with a one-line error at once,
    and the others go on. Summary keys: movie, status, frames, objects, seconds, output, error. Ctrl-C
    cancels the unfinished movies, writes the summary (them as "not run") and raises :class:`BatchInterrupted`.
    While it runs it holds the client's handler of the ``batch_movie.TOPIC`` events (one per client and topic).
    """
    if client is not None and workers is not None:
        raise ValueError("give workers= or client=, not both: workers= sizes the LocalCluster track_many starts "
                         "when no client is given")
    plan = plan_batch(sheet_or_rows, out, model=model, device=device, force=force)
    return run_plan(plan, client, workers=workers, retries=retries, progress=progress)


def plan_batch(sheet_or_rows: Any, out: str | os.PathLike, *, model: str | os.PathLike | ModelSpec | None = None,
               device: str | None = None, force: bool = False) -> BatchPlan:
    """Check the rows, outputs, model and device (as :func:`track_many`) and find the movies already done,
    before any worker starts (the command line plans, then submits cluster jobs). Writes nothing."""
    out = Path(out).absolute()  # workers (cluster jobs) may run in another folder
    rows = _rows(sheet_or_rows)
    check_outputs(rows, out, force=force)
    base = _model_spec(model)
    if device is not None:
        base = replace(base, device=_device_name(device))
    plan = BatchPlan(rows, out, [])
    for row in rows:
        spec = base if model is not None else _session_model(row, base)
        output = Path(row.output_path(out))
        fingerprint = row_fingerprint(row, spec)
        manifest = None if force else finished(output, fingerprint)
        if manifest is not None:
            plan.results[row.row] = summary_row(row, "skipped", output, frames=manifest.get("frames"),
                                                objects=manifest.get("objects"), seconds=0.0)
        else:
            plan.todo.append((row, spec, fingerprint))
    return plan


def run_plan(plan: BatchPlan, client: Any = None, *, workers: int | None = None, retries: int = 2,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run the movies of ``plan`` on ``client`` (None: a LocalCluster of ``workers``, closed at the end) and
    write ``summary.csv``; returns its lines. Ctrl-C: :class:`BatchInterrupted`, after writing the summary."""
    plan.out.mkdir(parents=True, exist_ok=True)
    results = dict(plan.results)
    try:
        if plan.todo:
            _run(plan.todo, plan.out, client, results, workers=workers, retries=retries, progress=progress,
                 skipped=len(results))
    except BaseException as exc:  # Ctrl-C or a lost scheduler: what ran is kept and the rest said "not run"
        from .cli import _one_line

        interrupted = isinstance(exc, KeyboardInterrupt)
        reason = "interrupted (Ctrl-C)" if interrupted else f"the batch stopped: {_one_line(exc)}"
        summary = _summary(plan, results, reason)
        write_summary(plan.out / SUMMARY_NAME, summary)
        if interrupted:
            raise BatchInterrupted(summary) from None
        raise
    summary = _summary(plan, results, "")
    write_summary(plan.out / SUMMARY_NAME, summary)
    return summary


def _summary(plan: BatchPlan, results: dict[int, dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [results.get(row.row) or summary_row(row, NOT_RUN, Path(row.output_path(plan.out)), error=reason)
            for row in plan.rows]


def _run(todo: list[tuple[Any, ModelSpec, dict[str, Any]]], out: Path, client: Any,
         results: dict[int, dict[str, Any]], *, workers: int | None, retries: int, progress: bool,
         skipped: int) -> None:
    """Submit one task per movie and put their summary rows in ``results`` as they finish; on any exit the
    movies that finished meanwhile are still collected, the unfinished tasks cancelled (a shared scheduler
    does not go on with them) and partial folders removed."""
    from distributed import as_completed

    from .batch_cluster import close_client, local_client, waiting_for_workers

    own = client is None
    if own:
        client = local_client(workers)
    batch = uuid.uuid4().hex
    bar = BatchProgress(len(todo) + skipped, skipped, disabled=not progress)
    futures: dict[Any, Any] = {}
    try:
        client.subscribe_topic(TOPIC, bar.event_handler(batch))
        for row, spec, fingerprint in todo:
            futures[client.submit(run_movie, row, out, spec, fingerprint, batch, retries=retries, pure=False,
                                  key=f"napari-sam2-movie-{row.row}-{batch}")] = row
        # One as_completed polled (dask's wait(FIRST_COMPLETED) in a loop would leave a waiter per pending
        # movie on every pass); the sleep keeps Ctrl-C immediate and lets the bar say what the batch waits for.
        completed, asked = as_completed(futures), 0.0
        while not completed.is_empty():
            ready = completed.next_batch(block=False)
            for future in ready:
                _collect(future, futures[future], out, results, bar)
            if not ready:
                time.sleep(POLL_SECONDS)
            if bar.shown and time.monotonic() - asked > WAIT_SECONDS:
                bar.waiting(waiting_for_workers(client))
                asked = time.monotonic()
    finally:
        try:
            unfinished = [future for future in futures if not future.done()]
            if unfinished:  # interrupted: a shared scheduler must not go on with this batch's movies
                client.cancel(unfinished)
            for future, row in futures.items():  # finished before an interruption: published, so reported
                if future.status in ("finished", "error") and row.row not in results:
                    _collect(future, row, out, results, bar, timeout=COLLECT_SECONDS)
            client.unsubscribe_topic(TOPIC)
        finally:
            bar.close()
            if own:
                close_client(client)
            for row, _, _ in todo:
                remove_partials(Path(row.output_path(out)), batch)  # workers that died, tasks cancelled


def _collect(future: Any, row: Any, out: Path, results: dict[int, dict[str, Any]], bar: BatchProgress,
             timeout: float | None = None) -> None:
    """The summary line of a finished task: its own, "failed" with the error that outlived dask's retries, or
    "not run" for a task cancelled (its client lost the scheduler). ``timeout``: while stopping, a result that
    cannot be fetched (its worker gone) leaves the row "not run" rather than waiting for a recomputation."""
    from .cli import _one_line

    output = Path(row.output_path(out))
    if future.status == "cancelled":
        result = summary_row(row, NOT_RUN, output, error="cancelled: the batch lost its dask scheduler")
    else:
        try:
            result = future.result(timeout=timeout)
        except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11 on
            return  # stopping, and not fetched in time: reported "not run"
        except Exception as exc:  # noqa: BLE001 - after dask's retries: this movie failed, the others go on
            result = summary_row(row, "failed", output, error=_one_line(exc))
    results[row.row] = result
    bar.finished(row, result)


def check_outputs(rows: list[Any], out: Path, force: bool = False) -> None:
    """Refuse, before anything runs, an output outside ``out``, one that is (or holds) a movie or prompt file
    of any row (publishing it would replace the user's input, e.g. seed labels named ``pos1_labels.tif``), and,
    unless ``force``, an existing output that no batch wrote (no done-marker beside it: the user's own file).
    Linear in the rows: every input and the folders above it are looked up in one table."""
    from .cli_lineage import proposals_path

    root = Path(out).resolve()
    holders: dict[Path, tuple[int, Path]] = {}  # each input and every folder above it -> (row, input)
    for row in rows:
        for given in (row.movie, row.prompts):
            if given != AUTO:
                path = Path(given).resolve()
                for place in (path, *path.parents):
                    holders.setdefault(place, (row.row, path))
    for row in rows:
        given = Path(row.output_path(Path(out).absolute()))
        output = given.resolve()
        if root not in output.parents:
            raise ValueError(f"row {row.row}, column 'out': {row.output_name()} is outside the batch's --out {root}; "
                             "give a path inside it (no '..', not absolute)")
        if output in holders:
            other, path = holders[output]
            raise ValueError(f"row {row.row}: its output {output} would replace row {other}'s input {path}; "
                             "give the row another 'out' or the batch another --out")
        for written in (given, proposals_path(given)):  # the division CSV is replaced with the output
            if not force and written.exists() and not manifest_path(given).exists():
                raise ValueError(f"row {row.row}: {written} already exists and no batch wrote it (no "
                                 f"{manifest_path(given).name} beside it); move it away, give the row another "
                                 "'out' or the batch another --out, or pass --force (force=True) to replace it")


def _rows(sheet_or_rows: Any) -> list[Any]:
    """The checked rows: read from a CSV path, else from a DataFrame or a list of dicts / ``MovieRow``s."""
    from .batch_sheet import read_sheet, rows_from_records

    if isinstance(sheet_or_rows, (str, os.PathLike)):
        return list(read_sheet(Path(sheet_or_rows)))
    return list(rows_from_records(sheet_or_rows, base=Path.cwd()))


def _model_spec(model: str | os.PathLike | ModelSpec | None) -> ModelSpec:
    """The model workers load; a name or path is checked here (a known name, or an existing file), before any
    worker starts, and a path made absolute (workers may have another working folder)."""
    if isinstance(model, ModelSpec):
        return model
    from .weights import DEFAULT_MODEL, resolve_model

    found = resolve_model(DEFAULT_MODEL if model is None else model)
    return ModelSpec(str(found.resolve()) if isinstance(found, Path) else found.name)


def _session_model(row: Any, spec: ModelSpec) -> ModelSpec:
    """``spec`` with the model a session-file row was saved with (its name and input size), as ``napari-sam2
    track`` uses the session's model when no --model is given; other rows keep ``spec``."""
    from .cli import SESSION_SUFFIXES
    from .engine.session_file import read_session_file

    if row.prompts == AUTO or Path(row.prompts).suffix.lower() not in SESSION_SUFFIXES:
        return spec
    try:
        saved = read_session_file(row.prompts).get("model") or {}
    except (OSError, ValueError):  # a broken session file: its movie fails with the command's own message
        return spec
    if not isinstance(saved, dict) or not saved.get("name"):
        return spec
    try:
        named = _model_spec(saved["name"])
    except ValueError as exc:
        raise ValueError(f"row {row.row}: session {row.prompts} was saved with model {saved['name']!r}, which "
                         f"is not here ({exc}); give the batch a model (--model)") from None
    size = saved.get("image_size")
    return replace(spec, name=named.name, image_size=size if isinstance(size, int) else spec.image_size)


def _device_name(device: str) -> str:
    """``device`` checked as torch would read it ("cuda", "cuda:1", "mps", "cpu"), in one line when it is not."""
    import torch

    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc}); give cuda, cuda:N, mps or cpu") from None


def write_summary(path: Path, summary: list[dict[str, Any]]) -> None:
    """``summary.csv``: one line per movie, written atomically."""
    with atomic_target(path) as partial, open(partial, "x", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for line in summary:
            writer.writerow({key: "" if line.get(key) is None else line[key] for key in SUMMARY_COLUMNS})
