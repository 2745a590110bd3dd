"""One movie of a batch, as a dask task: the single-movie ``napari-sam2 track`` code path on a worker.

Each worker process loads the model once (a module-level cache keyed by :class:`ModelSpec`) and reuses it for
every movie it is given. The output is written into a hidden folder beside its final name and moved into place
at the end, followed by a small manifest (``<output>.done.json``) holding the row's fingerprint: a worker that
dies mid-movie leaves no output under the final name, and a later batch skips a movie whose manifest matches.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_target
from .batch_sheet import MANIFEST_SUFFIX

TOPIC = "napari-sam2-batch"  # dask event topic of the per-frame progress messages (Client.subscribe_topic)
PARTIAL_INFIX = ".partial-"
SUMMARY_COLUMNS = ("movie", "status", "frames", "objects", "seconds", "output", "error")


@dataclass(frozen=True)
class ModelSpec:
    """Which model a worker loads: a known model name or a checkpoint path, its input size and device
    (``None``: CUDA, then MPS, then the CPU; a LocalCluster gives each worker its own GPU)."""

    name: str
    image_size: int = 1024
    device: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_MODELS: dict[ModelSpec, Any] = {}  # per worker process: loaded once, reused for every movie
_MODELS_LOCK = threading.Lock()  # a worker with several threads must not load the same model twice


def worker_model(spec: ModelSpec) -> Any:
    """The model of ``spec``, loaded on the first call in this process and cached."""
    with _MODELS_LOCK:
        model = _MODELS.get(spec)
        if model is None:
            from .weights import load_model

            model = load_model(spec.name, device=spec.device, image_size=spec.image_size, progress=False,
                               verbose=False)
            _MODELS[spec] = model
        return model


def row_fingerprint(row: Any, spec: ModelSpec) -> dict[str, Any]:
    """What a row's output is made from: the row's own fingerprint (arguments, files, version) and the model's
    input size, which the command line does not choose (the device does not change what a row means)."""
    return {**row.fingerprint(spec.name), "image_size": spec.image_size}


def manifest_path(output: Path) -> Path:
    """The done-marker of ``output``: ``labels.tif`` -> ``labels.tif.done.json``."""
    return output.with_name(output.name + MANIFEST_SUFFIX)


def finished(output: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of ``output`` when the output exists and was made from this very row, else ``None``."""
    marker = manifest_path(output)
    if not output.exists() or not marker.is_file():
        return None
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a damaged marker: the movie is simply run again
        return None
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != _jsonable(fingerprint):
        return None
    return manifest


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so that it compares with a manifest."""
    return json.loads(json.dumps(value, default=str))


class MovieCancelled(Exception):
    """The batch stopped wanting this movie (Ctrl-C, or its client went away): the task stops between frames."""


def run_movie(row: Any, out_dir: Path, spec: ModelSpec, fingerprint: dict[str, Any], batch: str) -> dict[str, Any]:
    """Track one sheet row; returns its summary row. A bad input (``ValueError``: prompts, axes, ...) is a
    "failed" row with its one-line error and is not retried; any other exception propagates, so that dask
    retries the task (``retries=``). A task the batch cancelled stops at the next frame and writes nothing."""
    from .cli import _one_line, track_movie

    output = Path(row.output_path(Path(out_dir)))
    started = time.perf_counter()
    emit = _emitter(batch, row)
    still_wanted = _cancel_check()
    emit("start", 0, 0)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f"{partial_prefix(output, batch)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    messages: list[str] = []  # the command's messages of this movie alone (a worker may run several at once)

    def on_frame(done: int, total: int) -> None:
        still_wanted()
        emit("frame", done, total)

    try:
        try:
            result = track_movie([*map(str, row.track_args(spec.name)), "--quiet"], model=worker_model(spec),
                                 out=partial / output.name, on_frame=on_frame, say=messages.append)
        except ValueError as exc:
            return summary_row(row, "failed", output, seconds=time.perf_counter() - started, error=_one_line(exc))
        still_wanted()  # not published for a batch that has given up on it
        seconds = time.perf_counter() - started
        _publish(partial, output)
        write_manifest(output, {"fingerprint": fingerprint, "model": spec.as_dict(), "frames": result.frames,
                                "objects": result.objects, "seconds": round(seconds, 3)})
        for message in messages:  # shown in the worker's log (the terminal of a LocalCluster)
            if message.lower().startswith("warning:"):
                print(f"napari-sam2: {row.movie}: {message}", file=sys.stderr)
        emit("done", result.frames, result.frames)
        return summary_row(row, "done", output, frames=result.frames, objects=result.objects, seconds=seconds)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _cancel_check():
    """A function raising :class:`MovieCancelled` once the scheduler has cancelled this task; a no-op outside a
    dask worker. It reads the worker's own task state (no message to the scheduler): dask cannot stop a running
    task, so without it a movie cancelled on a shared scheduler would run to its end."""
    worker = _this_worker()
    if worker is None:
        return lambda: None
    key = worker.get_current_task()

    def check() -> None:
        task = worker.state.tasks.get(key)
        if task is None or task.state in ("cancelled", "released", "forgotten"):
            raise MovieCancelled(f"the batch no longer wants {key}")

    return check


def write_manifest(output: Path, content: dict[str, Any]) -> None:
    """Write the done-marker of ``output`` atomically (a reader sees the old one or the new one, whole)."""
    with atomic_target(manifest_path(output)) as target:
        target.write_text(json.dumps(content, indent=1, default=str), encoding="utf-8")


def _publish(partial: Path, output: Path) -> None:
    """Move what the run wrote in ``partial`` beside ``output`` (renames in one folder: atomic per file).

    The done-marker first becomes a "publishing" one that matches no row, so that an interruption here never
    pairs an old marker with a new output, and the output stays known as the batch's own (a later run may
    replace it; an output without a marker is the user's and is refused). An earlier run's outputs of the same
    names (a division CSV this run did not write) are replaced or removed; an earlier output folder is first
    renamed aside (a hidden ``.NAME.replaced-*`` beside it) and deleted only once the new one is in place, so
    a worker killed in between never takes it down with its partial folder.
    """
    from .cli_lineage import proposals_path

    if not (partial / output.name).exists():  # never publish (or delete an earlier good output) for nothing
        raise RuntimeError(f"the run wrote no {output.name} in {partial}")
    write_manifest(output, {"fingerprint": None, "publishing": True})
    aside: list[tuple[Path, Path]] = []  # (older folder's hidden name, its name)
    try:
        for name in (proposals_path(output).name, output.name):  # the output last: it exists only when complete
            source, target = partial / name, output.parent / name
            if target.is_dir() and not target.is_symlink():  # os.replace cannot replace a non-empty folder
                aside.append((output.parent / f".{name}.replaced-{uuid.uuid4().hex[:8]}", target))
                os.replace(target, aside[-1][0])
            elif target.exists() and not source.exists():
                target.unlink()
            if source.exists():
                os.replace(source, target)
    except Exception:  # a failed rename (not a killed worker): the older folders go back where they were
        for hidden, target in aside:
            if not target.exists():
                os.replace(hidden, target)
        raise
    for hidden, _ in aside:
        shutil.rmtree(hidden, ignore_errors=True)


def partial_prefix(output: Path, batch: str) -> str:
    """The name start of the hidden folders the movies of ``batch`` write ``output`` in before publishing it."""
    return f".{output.name}{PARTIAL_INFIX}{batch}-"


def remove_partials(output: Path, batch: str) -> None:
    """Remove the hidden folders the movies of ``batch`` left beside ``output`` (workers that died, or tasks
    cancelled mid-write); another batch's, still writing, are left alone."""
    if output.parent.is_dir():
        for stale in output.parent.glob(f"{glob.escape(partial_prefix(output, batch))}*"):
            shutil.rmtree(stale, ignore_errors=True)


def summary_row(row: Any, status: str, output: Path, *, frames: int | None = None, objects: int | None = None,
                seconds: float | None = None, error: str = "") -> dict[str, Any]:
    """One line of ``summary.csv``."""
    return {"movie": str(row.movie), "status": status, "frames": frames, "objects": objects,
            "seconds": None if seconds is None else round(seconds, 2), "output": str(output), "error": error}


def _emitter(batch: str, row: Any):
    """A function sending ``(event, done, total)`` of this movie to the client as a dask worker event; a no-op
    outside a dask worker (the task run as a plain function)."""
    worker = _this_worker()
    if worker is None:
        return lambda event, done, total: None
    base = {"batch": batch, "row": row.row, "movie": str(row.movie), "pid": os.getpid(), "worker": worker.address}

    def emit(event: str, done: int, total: int) -> None:
        worker.log_event(TOPIC, {**base, "event": event, "done": done, "total": total})

    return emit


def _this_worker() -> Any:
    """The dask worker running this task, or None (no dask, or the task run as a plain function)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None
