"""Saving a tracking session's prompts to one JSON file and re-creating the session from it.

The file holds what the user did, not what the model computed: every object's prompts (points, boxes,
masks) in napari (row, col) = (y, x) frame coordinates, object ids, intensity and post-processing
settings, the model's name and the movie's shape, and (from version 2) the lineage: links, start frames,
rejected division proposals and pending ones (their two parts run-length encoded). Version 1 files, without
a lineage, still load, and a session without any lineage is written as version 1, so that older napari-sam2
versions open it. JSON keeps it human-readable and diffable; masks
are run-length encoded. Results are not stored: they are recomputed from the prompts (one decoder pass
per prompted frame on load, ``propagate()`` for the rest), which keeps files small and exact.

A layer above :mod:`napari_sam2.engine.session`: it uses the session's public API only, and the session
does not know about files::

    from napari_sam2 import load_session, save_session
    save_session(session, "movie.session.json")
    session = load_session("movie.session.json", movie, model)
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_target
from .divisions import DivisionProposal
from .lineage import LineageError, LineageState
from .object_state import FramePrompt
from .session import TrackingSession

if TYPE_CHECKING:
    from ..model.sam2 import SAM2Model

FORMAT_NAME = "napari-sam2 session"
FORMAT_VERSION = 2  # 2: the lineage (links, start frames, division proposals); 1 still loads


class SessionFileError(ValueError):
    """A session file that cannot be used; the message says what is wrong and what to do."""


def save_session(session: TrackingSession, path: str | os.PathLike) -> Path:
    """Write every object's prompts (napari (row, col) coordinates), the object ids, the settings and the
    model's name of ``session`` to ``path`` (JSON), replacing the file atomically; returns the path.
    Results are not saved: :func:`load_session` recomputes them."""
    path = Path(path)
    model = session.model
    lineage = session.lineage_state()
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION if lineage != LineageState() else 1,
        "axes": "napari order: movie (T, Y, X[, C]); points (row, col) = (y, x); boxes (y0, x0, y1, x1)",
        "model": {"name": model.source or model.config.name, "config": model.config.name,
                  "image_size": model.image_size},
        "movie": {"shape": list(session.movie_shape)},
        "settings": session.settings(),
        "objects": [
            {"obj_id": obj_id,
             "prompts": [_frame_to_json(frame, steps)
                         for frame, steps in sorted(session.prompt_history(obj_id).items())]}
            for obj_id in session.obj_ids
        ],
    }
    if lineage != LineageState():
        document["lineage"] = _lineage_to_json(lineage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as partial:
        partial.write_text(_readable_json(document) + "\n", encoding="utf-8")
    return path


def read_session_file(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed, format-checked content of a session file."""
    path = Path(path)
    if not path.is_file():
        raise SessionFileError(f"session file {path} does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionFileError(f"{path} is not a napari-sam2 session file (not valid JSON: {exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise SessionFileError(f"{path} is not a napari-sam2 session file (no '\"format\": \"{FORMAT_NAME}\"')")
    version = document.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SessionFileError(f"{path} has session format version {version!r}; this napari-sam2 reads versions "
                               f"up to {FORMAT_VERSION}. Upgrade napari-sam2 to open it.")
    return document


def load_session(path: str | os.PathLike, frames: Any, model: SAM2Model, **options: Any) -> TrackingSession:
    """Re-create a saved session on ``frames`` (T, Y, X[, C]), which must have the saved movie's shape.

    Every prompt is re-applied in its order (prompted frames show their masks at once); call
    ``propagate()`` for the rest. Saved settings (contrast limits, channel, RGB, hole filling) are used
    unless ``options`` override them; other ``options`` (device, storage_device, feature_cache_size, any
    :class:`TrackingSession` keyword) go to the session. Raises :class:`SessionFileError` for a file that
    cannot be used or a movie of another shape; warns when the model differs from the saved one.
    """
    document = read_session_file(path)
    saved_shape = tuple(document["movie"]["shape"])
    shape = tuple(int(s) for s in getattr(frames, "shape", ()))
    if shape != saved_shape:
        raise SessionFileError(f"session {path} was saved for a movie of shape {saved_shape} (T, Y, X[, C]), but "
                               f"this movie has shape {shape}; open the movie the session was made on")
    saved_model = document["model"]
    if saved_model.get("config") != model.config.name or saved_model.get("image_size") != model.image_size:
        warnings.warn(f"session {path} was made with model {saved_model.get('name')} (config "
                      f"{saved_model.get('config')}, image size {saved_model.get('image_size')}); it is being "
                      f"loaded with {model.config.name} at image size {model.image_size}, so the masks will differ",
                      UserWarning, stacklevel=3)
    settings = {**document["settings"], **options}
    if settings.get("contrast_limits") is not None:
        settings["contrast_limits"] = tuple(settings["contrast_limits"])
    session = TrackingSession(model, frames, **settings)
    prompts = []
    approximate = []
    for entry in document["objects"]:
        obj_id = entry["obj_id"]
        for item in entry["prompts"]:
            frame = int(item["frame"])
            for step in [*item.get("earlier_steps", []), item]:
                prompts.append((frame, obj_id, _prompt_from_json(step, session.frame_shape, path)))
            if item.get("corrects_tracked_result"):
                approximate.append(f"object {obj_id} frame {frame}")
    if approximate:
        warnings.warn(f"session {path}: the corrections on {', '.join(approximate)} were made on tracked results; "
                      "they are re-applied from their clicks alone, so those masks can differ slightly from the "
                      "saved session's until you propagate and check them", UserWarning, stacklevel=3)
    session.restore_prompts(prompts)
    if "lineage" in document:
        state = _lineage_from_json(document["lineage"], session.frame_shape, path)
        try:
            session.restore_lineage(state)
        except LineageError as exc:
            raise SessionFileError(f"the lineage in {path} does not fit its objects: {exc}") from exc
    return session


def _lineage_to_json(state: LineageState) -> dict[str, Any]:
    """The lineage as JSON: [child, parent] links, [obj_id, frame] starts, [frame, parent] rejections, and the
    pending proposals with their parts as run lengths (see :func:`encode_mask_rle`)."""
    return {
        "parents": [list(pair) for pair in state.parents],
        "starts": [list(pair) for pair in state.starts],
        "rejected": [list(pair) for pair in state.rejected],
        "rejected_splits": [list(pair) for pair in state.rejected_splits],
        "proposals": [{"frame": p.frame, "parent": p.parent, "kind": p.kind,
                       "daughters": None if p.daughters is None else list(p.daughters),
                       "parts_rle": [part.rle() for part in p.compact_parts]} for p in state.proposals],
    }


def _lineage_from_json(item: Any, frame_shape: tuple[int, int], path: Any) -> LineageState:
    """Inverse of :func:`_lineage_to_json`; a malformed entry is a SessionFileError naming the file."""
    try:
        keys = ("parents", "starts", "rejected", "rejected_splits")
        pairs = {key: tuple((int(a), int(b)) for a, b in item.get(key, [])) for key in keys}
        proposals = tuple(
            DivisionProposal(int(p["frame"]), int(p["parent"]),
                             tuple(decode_mask_rle(runs, frame_shape, path) for runs in p["parts_rle"]),
                             None if p.get("daughters") is None else tuple(int(d) for d in p["daughters"]),
                             p.get("kind", "split"))
            for p in item.get("proposals", []))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SessionFileError):
            raise
        raise SessionFileError(f"the lineage in {path} is malformed ({exc}); fix or remove its "
                               "\"lineage\" entry") from exc
    return LineageState(pairs["parents"], pairs["starts"], pairs["rejected"], proposals, pairs["rejected_splits"])


def _readable_json(value: Any, indent: str = "") -> str:
    """Indented JSON with every list of numbers on one line (a point, a box, a mask's run lengths)."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_readable_json(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and value and not all(isinstance(v, (int, float)) for v in value):
        return "[\n" + ",\n".join(inner + _readable_json(item, inner) for item in value) + f"\n{indent}]"
    return json.dumps(value)


def _frame_to_json(frame: int, steps: list[FramePrompt]) -> dict[str, Any]:
    """The frame's current prompt, with the prompts it refined (SAM 2 feeds each result into the next
    prompt on the same frame, so replaying them in order reproduces the mask exactly)."""
    item = {"frame": frame, **_prompt_to_json(steps[-1])}
    if len(steps) > 1:
        item["earlier_steps"] = [_prompt_to_json(step) for step in steps[:-1]]
    if steps[0].refines_result:  # the first prompt corrected a tracked (not a prompted) result
        item["corrects_tracked_result"] = True
    return item


def _prompt_to_json(prompt: FramePrompt) -> dict[str, Any]:
    item: dict[str, Any] = {"type": prompt.kind}
    if prompt.compact_mask is not None:
        item["mask_rle"] = prompt.compact_mask.rle()  # encode_mask_rle(prompt.mask), without the full mask
        return item
    if prompt.box is not None:
        item["box"] = prompt.box.tolist()
    item["points"] = prompt.points.tolist()
    item["labels"] = prompt.labels.tolist()
    return item


def _prompt_from_json(item: dict[str, Any], frame_shape: tuple[int, int], path: Any) -> FramePrompt:
    if item.get("type") == "mask":
        return FramePrompt(np.zeros((0, 2)), np.zeros(0, dtype=np.int64),
                           mask=decode_mask_rle(item["mask_rle"], frame_shape, path))
    box = item.get("box")
    return FramePrompt(np.asarray(item.get("points", []), dtype=np.float64).reshape(-1, 2),
                       np.asarray(item.get("labels", []), dtype=np.int64),
                       None if box is None else np.asarray(box, dtype=np.float64))


def encode_mask_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool (Y, X) mask in row-major order, starting with a (possibly empty) False run."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [0, *runs] if flat[0] else runs


def decode_mask_rle(runs: list[int], shape: tuple[int, int], path: Any = "session") -> np.ndarray:
    """Inverse of :func:`encode_mask_rle` for a mask of ``shape`` (Y, X)."""
    lengths = np.asarray(runs, dtype=np.int64)
    if lengths.sum() != shape[0] * shape[1] or (lengths < 0).any():
        raise SessionFileError(f"a mask prompt in {path} does not match the frame shape (Y, X) = {shape}")
    values = np.arange(len(lengths)) % 2 == 1
    return np.repeat(values, lengths).reshape(shape)
