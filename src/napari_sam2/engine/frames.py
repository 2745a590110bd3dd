"""Lazy access to a movie held in any array napari can hold, with microscopy-aware intensity mapping.

Axis order is napari's: (T, Y, X) or (T, Y, X, C), where T is the axis to track along (time, or Z for
a volume). Frames are read one at a time, only when the model needs them; the stack itself is never
converted or copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model.resize import resize_bilinear

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PERCENTILES = (0.5, 99.5)
MAX_SAMPLE_FRAMES = 8


class FrameError(ValueError):
    """A frame, or the frame stack, cannot be used as model input. The message says why and what to do."""


@dataclass(frozen=True)
class IntensityMapping:
    """Linear map of raw intensities to [0, 1]: (value - low) / (high - low), clipped."""

    low: float
    high: float


class FrameSource:
    """A (T, Y, X[, C]) movie read frame by frame and turned into model input.

    Parameters
    ----------
    frames : array-like
        numpy array or memmap, dask or zarr array, or anything with ``shape``, ``ndim`` and integer
        indexing along the first axis, in (T, Y, X) or (T, Y, X, C) order.
    contrast_limits : (low, high), optional
        Intensities mapped to 0 and 1 (napari's contrast limits). Default: robust percentiles
        (0.5 %, 99.5 %) over up to 8 evenly spaced frames, the same mapping for every frame.
    rgb : bool, optional
        Whether the last axis is colour. ``None``: a last axis of size 3 or 4 (RGBA; alpha dropped) is colour.
    channel : int, optional
        For multichannel (T, Y, X, C) stacks that are not RGB: the channel to track on.
    """

    def __init__(self, frames: Any, contrast_limits: tuple[float, float] | None = None,
                 rgb: bool | None = None, channel: int | None = None) -> None:
        shape = tuple(getattr(frames, "shape", ()))
        if len(shape) not in (3, 4):
            raise FrameError(
                f"frames must be (T, Y, X) or (T, Y, X, C), got shape {shape}. For a single 2-D image "
                "add a leading axis (image[None]); for (T, Z, Y, X) data pick one Z plane or track along Z.")
        if shape[0] < 1 or shape[1] < 2 or shape[2] < 2:
            raise FrameError(f"frames shape {shape} is empty or too small; need at least 1 frame of 2x2 pixels")
        self.frames = frames
        self.num_frames, self.height, self.width = (int(s) for s in shape[:3])
        self.reads = 0  # number of frames read so far (tests and diagnostics)
        self._colour, self._channel = _resolve_channels(shape, rgb, channel)
        dtype = np.dtype(getattr(frames, "dtype", np.float32))
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == bool):
            raise FrameError(f"frames have dtype {dtype}; need integer, float or bool intensities")
        if contrast_limits is None:
            self.mapping = self._estimate_mapping()
        else:
            low, high = (float(v) for v in contrast_limits)
            if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
                raise FrameError(f"contrast_limits must be two finite numbers with low < high, got {contrast_limits}")
            self.mapping = IntensityMapping(low, high)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, Y, X) of the movie."""
        return self.num_frames, self.height, self.width

    def check_index(self, frame: int) -> int:
        """Validate a frame index and return it as int; negative indices are refused (ambiguous in napari)."""
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise FrameError(f"frame index must be an integer, got {frame!r}")
        if not 0 <= frame < self.num_frames:
            raise FrameError(f"frame index {frame} is out of range; the movie has frames 0..{self.num_frames - 1}")
        return int(frame)

    def read(self, frame: int) -> np.ndarray:
        """Raw frame ``frame`` as (Y, X) or (Y, X, 3) numpy, channels already selected."""
        frame = self.check_index(frame)
        data = np.asarray(self.frames[frame])
        self.reads += 1
        if self._channel is not None:
            data = data[..., self._channel]
        elif self._colour:
            data = data[..., :3]
        return data

    def normalized(self, frame: int) -> np.ndarray:
        """Frame mapped to [0, 1] as float32 (Y, X, 3); grey frames become three equal channels.

        The map is computed in float64 so that 8-bit input reproduces the reference's ``/ 255`` exactly.
        """
        data = self.read(frame)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise FrameError(f"frame {frame} contains NaN or infinite values; replace them (e.g. np.nan_to_num) "
                             "before tracking")
        low, high = self.mapping.low, self.mapping.high
        scaled = (data.astype(np.float64) - low) / (high - low)
        scaled = np.clip(scaled, 0.0, 1.0).astype(np.float32)
        if scaled.ndim == 2:
            scaled = np.repeat(scaled[..., None], 3, axis=-1)
        return scaled

    def model_input(self, frame: int, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(1, 3, S, S) model input: [0, 1] intensities, resized to S x S, ImageNet-normalised.

        Resizing (only when the frame is not already S x S) is bilinear with antialiasing, in float32
        on ``device``. The reference instead resizes 8-bit images with PIL's bicubic filter, so for
        other sizes the inputs differ slightly (and the reference clips 16-bit data to 255 first).
        Like the reference, the aspect ratio is not kept: frames are stretched to a square.
        """
        image = torch.from_numpy(self.normalized(frame))
        if torch.device(device).type == "cuda":  # page-locked memory: the upload runs asynchronously
            image = image.pin_memory().to(device, non_blocking=True)
        else:
            image = image.to(device)
        return square_model_input(image, image_size)

    def _estimate_mapping(self) -> IntensityMapping:
        """Robust percentiles over a few evenly spaced frames (one mapping for all frames: no flicker)."""
        count = min(self.num_frames, MAX_SAMPLE_FRAMES)
        picks = np.unique(np.linspace(0, self.num_frames - 1, count).round().astype(int))
        values = np.concatenate([self.read(int(t)).astype(np.float64).ravel() for t in picks])
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise FrameError("the sampled frames contain no finite values; cannot choose an intensity range. "
                             "Pass contrast_limits=(low, high).")
        low, high = np.percentile(values, DEFAULT_PERCENTILES)
        if high <= low:  # flat image: fall back to the full range, then to a unit span
            low, high = float(values.min()), float(values.max())
            if high <= low:
                high = low + 1.0
        return IntensityMapping(float(low), float(high))


def _resolve_channels(shape: tuple[int, ...], rgb: bool | None, channel: int | None) -> tuple[bool, int | None]:
    """(is colour, channel index) for a stack shape, or a FrameError saying what to pass."""
    if len(shape) == 3:
        if rgb:
            raise FrameError(f"rgb=True needs a (T, Y, X, C) stack with C = 3 or 4, got shape {shape}")
        if channel is not None:
            raise FrameError(f"channel={channel} was given but the stack {shape} has no channel axis")
        return False, None
    n_channels = shape[3]
    if channel is not None:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < n_channels:
            raise FrameError(f"channel must be an integer in 0..{n_channels - 1}, got {channel!r}")
        return False, int(channel)
    if rgb is None:
        rgb = n_channels in (3, 4)
    if rgb:
        if n_channels not in (3, 4):
            raise FrameError(f"rgb=True needs 3 or 4 colour channels, the last axis has {n_channels}")
        return True, None
    if n_channels == 1:
        return False, 0
    raise FrameError(f"the stack {shape} has {n_channels} channels; pass channel=<index> to choose the one to "
                     "track on (or rgb=True for colour data)")


def square_model_input(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """(1, 3, S, S) model input of a (Y, X, 3) float32 [0, 1] image tensor: stretched to S x S (bilinear,
    antialiased, only when not already that size) and ImageNet-normalised, on the image's device."""
    image = image.permute(2, 0, 1)[None]
    if image.shape[-2:] != (image_size, image_size):
        image = resize_bilinear(image, (image_size, image_size), antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=image.device)[:, None, None]
    return (image - mean) / std
