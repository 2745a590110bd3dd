"""Which frames of a napari Image layer are tracked: the tracked axis, the plane of every other axis, the intensities.

Qt-free. Axis order is the layer's own (napari's): leading axes such as (T,), (T, Z), (Z,) or (T, C), then (Y, X), then
a colour axis for RGB(A) layers. One leading axis is tracked (time, or Z for a volume); every other leading axis (a Z
plane of a 4-D movie, a channel of a multichannel stack) stays at the index chosen when tracking starts, normally the
viewer's current position. Frames are read lazily, one at a time (see :class:`napari_sam2.movie_files.ReorderedFrames`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..movie_files import ReorderedFrames


class TargetError(ValueError):
    """An image layer (or axis choice) that cannot be tracked; the message says why and what to do."""


def leading_axes(layer: Any) -> int:
    """Number of axes before (Y, X) in an Image layer (the colour axis of an RGB layer is not counted)."""
    return int(layer.ndim) - 2


def layer_data(layer: Any) -> Any:
    """The full-resolution array of an Image layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def current_indices(layer: Any, world_point: Any) -> list[int]:
    """Data index of every leading axis of ``layer`` at the viewer's current world point (clipped to the layer)."""
    data_point = np.asarray(layer.world_to_data(world_point), dtype=float)
    shape = layer_data(layer).shape
    return [int(np.clip(round(float(data_point[axis])), 0, shape[axis] - 1)) for axis in range(leading_axes(layer))]


@dataclass
class TrackTarget:
    """The movie a tracking session runs on, taken from one Image layer.

    ``track_axis`` is the layer axis tracked (frames); ``fixed`` maps every other leading axis to its index. ``frames``
    is the lazy (T, Y, X[, C]) view the engine reads; ``contrast_limits`` the layer's display range, so the model sees
    what the user sees.
    """

    layer: Any
    track_axis: int
    fixed: dict[int, int]
    contrast_limits: tuple[float, float]
    frames: Any = field(repr=False)

    @classmethod
    def from_layer(cls, layer: Any, track_axis: int, world_point: Any = None) -> TrackTarget:
        """Build the target; other leading axes take their index at ``world_point`` (default: index 0)."""
        data = layer_data(layer)
        n_lead = leading_axes(layer)
        if n_lead < 1:
            raise TargetError(
                f"layer {layer.name!r} is a single 2-D image (shape {tuple(data.shape)}); SAM 2 tracking needs a "
                "time or Z axis to propagate along. Open a time-lapse or a Z-stack (or stack your images into one).")
        if not 0 <= track_axis < n_lead:
            raise TargetError(f"axis {track_axis} cannot be tracked in layer {layer.name!r}: its leading axes are "
                              f"0..{n_lead - 1} (shape {tuple(data.shape)})")
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "iufb":
            raise TargetError(f"layer {layer.name!r} has dtype {dtype}; only integer, float or bool intensities can "
                              "be tracked")
        if getattr(layer, "rgb", False) and data.shape[-1] not in (3, 4):
            raise TargetError(f"RGB layer {layer.name!r} has {data.shape[-1]} colour channels; need 3 or 4")
        here = current_indices(layer, world_point) if world_point is not None else [0] * n_lead
        fixed = {axis: here[axis] for axis in range(n_lead) if axis != track_axis}
        names = "".join(str(axis) for axis in range(n_lead)) + "YX"
        rgb = bool(getattr(layer, "rgb", False))
        frames = ReorderedFrames(data, names + ("C" if rgb else ""), track=str(track_axis),
                                 channel="C" if rgb else None, fixed={str(a): i for a, i in fixed.items()})
        return cls(layer, track_axis, fixed, _display_range(layer), frames)

    def refresh_contrast(self) -> None:
        """Take the layer's current contrast limits (done when a session starts)."""
        self.contrast_limits = _display_range(self.layer)

    @property
    def rgb(self) -> bool:
        return bool(getattr(self.layer, "rgb", False))

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """Shape a Labels layer for this image must have: the image's shape without the colour axis."""
        shape = tuple(int(n) for n in layer_data(self.layer).shape)
        return shape[:-1] if self.rgb else shape

    def frame_of(self, data_point: Any) -> int | None:
        """The frame a data-coordinate point (a row of a prompt layer) lies on, or None when it lies on another
        plane of a fixed axis or outside the movie."""
        point = np.asarray(data_point, dtype=float)
        for axis, index in self.fixed.items():
            if round(float(point[axis])) != index:
                return None
        frame = round(float(point[self.track_axis]))
        return frame if 0 <= frame < self.num_frames else None

    def describe(self, axis_labels: list[str] | None = None) -> str:
        """E.g. ``"axis t (40 frames); z = 12"``: what is tracked and where the other axes stand."""
        def name(axis: int) -> str:
            return axis_labels[axis] if axis_labels and axis < len(axis_labels) else f"axis {axis}"
        text = f"{name(self.track_axis)} ({self.num_frames} frames)"
        others = ", ".join(f"{name(axis)} = {index}" for axis, index in sorted(self.fixed.items()))
        return f"{text}; {others}" if others else text


def _display_range(layer: Any) -> tuple[float, float]:
    low, high = (float(v) for v in layer.contrast_limits)
    return (low, high) if high > low else (low, low + 1.0)
