"""The Points and Shapes layers that hold the user's prompts, and reading them as per-frame, per-object prompts.

Qt-free. Prompt layers share the image layer's axes and scale, so a row of their data is a data coordinate of the image:
leading axes (e.g. (T,) or (T, Z)), then (row, col) = (y, x). Each point carries the features ``positive`` (bool:
a positive click, shown green, or a negative one, shown red) and ``obj_id`` (the object, i.e. the label value it is
for); each rectangle of the Shapes layer is a box prompt with an ``obj_id`` feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .track_target import TrackTarget

POSITIVE_COLOUR = "lime"
NEGATIVE_COLOUR = "red"


@dataclass(frozen=True)
class FramePrompts:
    """All prompts of one object on one frame: clicks (N, 2) as (row, col) with labels 1/0, and the latest box
    (y0, x0, y1, x1) or None."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    def same_as(self, other: FramePrompts | None) -> bool:
        if other is None:
            return self.empty
        if (self.box is None) != (other.box is None):
            return False
        return (np.array_equal(self.points, other.points) and np.array_equal(self.labels, other.labels)
                and (self.box is None or np.array_equal(self.box, other.box)))


PromptKey = tuple[int, int]  # (frame, obj_id)


def _geometry(image_layer: Any) -> dict[str, Any]:
    return {"scale": image_layer.scale, "translate": image_layer.translate}


def make_points_layer(image_layer: Any, obj_id: int, name: str = "SAM 2 clicks") -> Any:
    """A Points layer for click prompts over ``image_layer``, in add mode, new clicks positive and for ``obj_id``."""
    from napari.layers import Points

    features = pd.DataFrame({"positive": pd.Series([], dtype=bool), "obj_id": pd.Series([], dtype=np.int64)})
    layer = Points(
        np.empty((0, image_layer.ndim)), ndim=image_layer.ndim, name=name, features=features,
        face_color="positive", face_color_cycle={True: POSITIVE_COLOUR, False: NEGATIVE_COLOUR},
        border_color="white", size=max(4.0, 0.02 * float(min(image_layer.data.shape[-2:]))),
        text={"string": "{obj_id}", "color": "white", "anchor": "upper_left", "size": 9},
        **_geometry(image_layer))
    layer.feature_defaults = {"positive": True, "obj_id": int(obj_id)}
    layer.mode = "add"
    return layer


def make_shapes_layer(image_layer: Any, obj_id: int, name: str = "SAM 2 boxes") -> Any:
    """A Shapes layer for box prompts over ``image_layer``, in rectangle mode, new boxes for ``obj_id``."""
    from napari.layers import Shapes

    features = pd.DataFrame({"obj_id": pd.Series([], dtype=np.int64)})
    layer = Shapes(ndim=image_layer.ndim, name=name, features=features, face_color="transparent",
                   edge_color="yellow", edge_width=2, text={"string": "{obj_id}", "color": "yellow", "size": 9},
                   **_geometry(image_layer))
    layer.feature_defaults = {"obj_id": int(obj_id)}
    layer.mode = "add_rectangle"
    return layer


def set_prompt_defaults(layer: Any, obj_id: int | None = None, positive: bool | None = None) -> None:
    """Make new points / shapes of a prompt layer belong to ``obj_id`` and (points) be positive or negative."""
    if layer is None:
        return
    defaults = {name: layer.feature_defaults[name].iloc[0] for name in layer.feature_defaults.columns}
    if obj_id is not None and "obj_id" in defaults:
        defaults["obj_id"] = int(obj_id)
    if positive is not None and "positive" in defaults:
        defaults["positive"] = bool(positive)
    layer.feature_defaults = defaults


def _feature(layer: Any, name: str, default: Any, n: int) -> np.ndarray:
    if name in layer.features.columns:
        return np.asarray(layer.features[name])
    return np.full(n, default)


def read_prompts(target: TrackTarget, points_layer: Any = None,
                 shapes_layer: Any = None) -> dict[PromptKey, FramePrompts]:
    """Every (frame, obj_id) that has clicks or a box in the prompt layers, with its prompts in (row, col) pixels.

    Points and boxes that lie on another plane of a fixed axis (e.g. another Z of a 4-D movie) or outside the movie are
    left out. Boxes must be rectangles drawn on one frame; other shapes are ignored. Of several boxes of one object on
    one frame, the last one drawn counts (SAM 2 takes one box per prompt).
    """
    clicks: dict[PromptKey, list[tuple[np.ndarray, int]]] = {}
    if points_layer is not None and len(points_layer.data):
        data = np.asarray(points_layer.data, dtype=float)
        positive = _feature(points_layer, "positive", True, len(data))
        obj_ids = _feature(points_layer, "obj_id", 1, len(data))
        for row, pos, obj in zip(data, positive, obj_ids, strict=True):
            frame = target.frame_of(row)
            if frame is not None and int(obj) >= 1:
                clicks.setdefault((frame, int(obj)), []).append((row[-2:], 1 if bool(pos) else 0))
    boxes: dict[PromptKey, np.ndarray] = {}
    if shapes_layer is not None and len(shapes_layer.data):
        obj_ids = _feature(shapes_layer, "obj_id", 1, len(shapes_layer.data))
        for vertices, kind, obj in zip(shapes_layer.data, shapes_layer.shape_type, obj_ids, strict=True):
            vertices = np.asarray(vertices, dtype=float)
            if kind != "rectangle" or int(obj) < 1:
                continue
            frames = {target.frame_of(v) for v in vertices}
            if len(frames) != 1 or None in frames:
                continue
            yx = vertices[:, -2:]
            boxes[(frames.pop(), int(obj))] = np.array([*yx.min(axis=0), *yx.max(axis=0)])
    prompts = {}
    for key in set(clicks) | set(boxes):
        rows = clicks.get(key, [])
        points = np.array([p for p, _ in rows], dtype=float).reshape(-1, 2)
        labels = np.array([lab for _, lab in rows], dtype=np.int64)
        prompts[key] = FramePrompts(points, labels, boxes.get(key))
    return prompts


def prompt_rows(target: TrackTarget, frame: int, yx: np.ndarray) -> np.ndarray:
    """Data rows of a prompt layer for (row, col) positions ``yx`` (N, 2) on ``frame`` of the target."""
    n_lead = 1 + len(target.fixed)
    rows = np.zeros((len(yx), n_lead + 2))
    rows[:, target.track_axis] = frame
    for axis, index in target.fixed.items():
        rows[:, axis] = index
    rows[:, -2:] = yx
    return rows


def remove_object_prompts(layer: Any, obj_id: int) -> None:
    """Delete every point or shape of ``obj_id`` from a prompt layer."""
    if layer is None or not len(layer.data) or "obj_id" not in layer.features.columns:
        return
    keep = np.asarray(layer.features["obj_id"]) != obj_id
    if keep.all():
        return
    layer.selected_data = set(np.flatnonzero(~keep).tolist())
    layer.remove_selected()


def add_session_prompts(session: Any, target: TrackTarget, points_layer: Any, shapes_layer: Any) -> None:
    """Show a (loaded) session's current clicks and boxes in the prompt layers, with their object ids (mask prompts
    have no place there: they are in the Labels layer)."""
    for obj_id in session.obj_ids:
        for frame, prompt in session.prompts(obj_id).items():
            if points_layer is not None and len(prompt.points):
                for yx, label in zip(prompt.points, prompt.labels, strict=True):
                    set_prompt_defaults(points_layer, obj_id=obj_id, positive=bool(label))
                    points_layer.add(prompt_rows(target, frame, yx[None]))
            if shapes_layer is not None and prompt.box is not None:
                y0, x0, y1, x1 = prompt.box
                set_prompt_defaults(shapes_layer, obj_id=obj_id)
                shapes_layer.add_rectangles([prompt_rows(target, frame, np.array([[y0, x0], [y0, x1], [y1, x1],
                                                                                   [y1, x0]]))])
