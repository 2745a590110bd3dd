"""Many movies on a dask.distributed cluster: :func:`track_many`, one task per movie, resumable.

The scheduling, retries and worker restarts are dask's (``Client.submit(retries=)``, ``as_completed``; a task
whose worker died is re-run elsewhere, up to ``distributed.scheduler.allowed-failures`` times). What is ours:
skipping movies already done (a manifest beside each output holds its row's fingerprint), the summary, and a
progress bar over movies that shows the frames of the running ones (worker events, see ``batch_movie.TOPIC``).
"""

from __future__ import annotations

import csv
import os
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_target
from .batch_movie import (
    SUMMARY_COLUMNS,
    TOPIC,
    ModelSpec,
    finished,
    remove_partials,
    row_fingerprint,
    run_movie,
    summary_row,
)

SUMMARY_NAME = "summary.csv"


def track_many(sheet_or_rows: str | os.PathLike | Sequence[Any], out: str | os.PathLike, client: Any = None, *,
               model: str | os.PathLike | ModelSpec | None = None, workers: int | None = None, retries: int = 2,
               progress: bool = True) -> list[dict[str, Any]]:
    """Track every movie of a sheet (a CSV path, or ``MovieRow`` objects / dicts as in the sheet) on dask.

    Outputs go under ``out`` (each row's ``output_path(out)``) and ``out/summary.csv``; movies (T, Y, X[, C])
    are tracked exactly as ``napari-sam2 track`` with the row's arguments. ``client``: a dask ``Client``
    (default: a LocalCluster of ``workers`` workers, closed at the end). ``model``: a known name, a
    checkpoint path or a :class:`~napari_sam2.batch_movie.ModelSpec` (default: the CLI's default model);
    each worker loads it once. A movie whose output exists with a manifest matching its row is "skipped";
    one whose task raises is retried ``retries`` times; one that fails is "failed" with a one-line error,
    and the others go on. Returns one summary dict per row (movie, status, frames, objects, seconds,
    output, error), in sheet order.
    """
    out = Path(out).absolute()  # workers (cluster jobs) may run in another folder
    rows = _rows(sheet_or_rows)
    check_outputs(rows, out)
    spec = _model_spec(model)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for row in rows:
        output = Path(row.output_path(out))
        fingerprint = row_fingerprint(row, spec)
        manifest = finished(output, fingerprint)
        if manifest is not None:
            results[row.row] = summary_row(row, "skipped", output, frames=manifest.get("frames"),
                                           objects=manifest.get("objects"), seconds=0.0)
        else:
            todo.append((row, fingerprint))
    if todo:
        results.update(_run(todo, out, spec, client, workers=workers, retries=retries, progress=progress,
                            skipped=len(results)))
    summary = [results[row.row] for row in rows]
    write_summary(out / SUMMARY_NAME, summary)
    return summary


def _run(todo: list[tuple[Any, dict[str, Any]]], out: Path, spec: ModelSpec, client: Any, *, workers: int | None,
         retries: int, progress: bool, skipped: int) -> dict[int, dict[str, Any]]:
    """Submit one task per movie and collect their summary rows as they finish."""
    from distributed import as_completed

    from .batch_cluster import close_client, local_client
    from .cli import _one_line

    own = client is None
    if own:
        client = local_client(workers)
    batch = uuid.uuid4().hex
    bar = _Progress(len(todo) + skipped, skipped, disabled=not progress)
    results: dict[int, dict[str, Any]] = {}
    futures: dict[Any, Any] = {}
    try:
        client.subscribe_topic(TOPIC, bar.event_handler(batch))
        futures = {client.submit(run_movie, row, out, spec, fingerprint, batch, retries=retries, pure=False,
                                 key=f"napari-sam2-movie-{row.row}-{batch}"): row for row, fingerprint in todo}
        for future in as_completed(futures):
            row = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - after dask's retries: this movie failed, the others go on
                result = summary_row(row, "failed", Path(row.output_path(out)), error=_one_line(exc))
            results[row.row] = result
            bar.finished(row, result)
    finally:
        unfinished = [future for future in futures if not future.done()]
        if unfinished:  # interrupted (Ctrl-C): a shared scheduler must not go on with this batch's movies
            client.cancel(unfinished)
        try:
            client.unsubscribe_topic(TOPIC)
        finally:
            bar.close()
            if own:
                close_client(client)
    for row, _ in todo:
        remove_partials(Path(row.output_path(out)))  # left by workers that died mid-movie
    return results


def check_outputs(rows: Sequence[Any], out: Path) -> None:
    """Refuse, before anything runs, an output outside ``out`` or one that is (or holds) a movie or prompt file
    of any row: publishing it would replace the user's input (e.g. seed labels named ``pos1_labels.tif``)."""
    root = Path(out).resolve()
    inputs = {Path(p).resolve(): row.row for row in rows for p in (row.movie, row.prompts) if p != "auto"}
    for row in rows:
        output = Path(row.output_path(root)).resolve()
        if root not in output.parents:
            raise ValueError(f"row {row.row}, column 'out': {row.output_name()} is outside the batch's --out {root}; "
                             "give a path inside it (no '..', not absolute)")
        for path, other in inputs.items():
            if path == output or output in path.parents:
                raise ValueError(f"row {row.row}: its output {output} would replace row {other}'s input {path}; "
                                 "give the row another 'out' or the batch another --out")


def _rows(sheet_or_rows: str | os.PathLike | Sequence[Any]) -> list[Any]:
    """The sheet's rows: read (and checked) from a CSV path, checked from dicts, or ``MovieRow`` objects as given."""
    if isinstance(sheet_or_rows, (str, os.PathLike)):
        from .batch_sheet import read_sheet

        return list(read_sheet(Path(sheet_or_rows)))
    rows = list(sheet_or_rows)
    if rows and all(isinstance(row, dict) for row in rows):
        from .batch_sheet import rows_from_records

        return list(rows_from_records(rows, base=Path.cwd()))
    return rows


def _model_spec(model: str | os.PathLike | ModelSpec | None) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if model is None:
        from .weights import DEFAULT_MODEL

        return ModelSpec(DEFAULT_MODEL)
    path = Path(model).expanduser()
    return ModelSpec(str(path.resolve()) if path.exists() else os.fspath(model))  # workers may have another cwd


def write_summary(path: Path, summary: list[dict[str, Any]]) -> None:
    """``summary.csv``: one line per movie, written atomically."""
    with atomic_target(path) as partial, open(partial, "x", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for line in summary:
            writer.writerow({key: "" if line.get(key) is None else line[key] for key in SUMMARY_COLUMNS})


class _Progress:
    """A tqdm bar over movies whose postfix shows the frames of the running ones (fed by worker events)."""

    def __init__(self, total: int, initial: int, disabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, unit="movie", desc="batch", disable=disabled,
                         file=sys.stderr)
        self._running: dict[int, str] = {}
        self._lock = threading.Lock()  # events arrive on the client's event loop thread

    def event_handler(self, batch: str):
        def handle(event: tuple[float, dict[str, Any]]) -> None:
            message = event[1]
            if not isinstance(message, dict) or message.get("batch") != batch:
                return  # another batch on the same scheduler
            if message["event"] in ("start", "frame"):
                done, total = message["done"], message["total"]
                with self._lock:
                    self._running[message["row"]] = f"{Path(message['movie']).stem} {done}/{total or '?'}"
                    self._show()

        return handle

    def finished(self, row: Any, result: dict[str, Any]) -> None:
        with self._lock:
            self._running.pop(row.row, None)
            if result["status"] == "failed" and not self._bar.disable:
                self._bar.write(f"napari-sam2: {row.movie} failed: {result['error']}", file=sys.stderr)
            self._bar.update(1)
            self._show()

    def _show(self) -> None:
        self._bar.set_postfix_str(", ".join(self._running.values()), refresh=True)

    def close(self) -> None:
        self._bar.close()
