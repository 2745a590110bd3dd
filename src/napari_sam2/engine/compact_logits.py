"""A result's low-resolution logits as kept: the crop of the box where they matter, and one value outside.

Every object keeps its logits (S/4 x S/4 float32: 256 KiB at model input 1024) on every frame it was tracked
on, for the whole movie: 500 cells over 1000 frames would be 128 GB. A cell covers a small box of the frame,
so a result keeps only the crop of that box and one ``fill`` value for the rest, chosen so that nothing that
reads the logits can tell (:meth:`CompactLogits.of` takes the smaller of two exact forms):

* **constant outside**: the box of the pixels that differ from the result's minimum. Exact: an absent
  object (-1024 everywhere) keeps nothing; a mask prompt (-10 outside the mask) keeps the mask's box.
* **floor**: the box of the pixels above :data:`LOGIT_FLOOR` (-32), grown by one pixel; outside it the
  logits read as -32. What is read back differs from the logits only where both are at most -32 (at every
  pixel, and also after bilinear resampling to any size: a resampled pixel reads its 2 x 2 source
  neighbours, all inside the grown box or all at most -32). That changes nothing a session computes from
  them: a mask or label is logits > 0; hole filling looks at signs only; a click on the frame feeds the
  logits back clamped to [-32, 32]; and the memory encoder maps a logit x to 20 * sigmoid(x) - 10, which is
  -10 in float32 for every x <= -17.5 (checked at import: :data:`FLOOR_IS_EXACT`).

So a result costs 4 bytes per pixel of its box (at most the whole S/4 x S/4 map) plus 16 bytes, and the
logits a session reports are exact wherever they are above -32 (``frame_logits`` may read -32, or a lower
value near the box, where they were lower).
Coordinates are the low-res map's (row, col) = (y, x).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..model.sam2 import MEM_ENC_SIGMOID_BIAS, MEM_ENC_SIGMOID_SCALE

LOGIT_FLOOR = -32.0  # = the clamp of logits fed back as a mask input (prompting.PREV_LOGIT_CLAMP)


def _floor_is_exact() -> bool:
    """Whether the memory encoder's input is the same float32 for every logit at or below the floor."""
    bias = np.float32(MEM_ENC_SIGMOID_BIAS)
    at_floor = np.float32(MEM_ENC_SIGMOID_SCALE) * np.float32(1.0 / (1.0 + math.exp(-LOGIT_FLOOR))) + bias
    return bool(np.float32(at_floor) == bias) and bias != 0


FLOOR_IS_EXACT = _floor_is_exact()


class CompactLogits:
    """(1, 1, h, w) float32 logits kept as ``crop`` (a (h1 - h0, w1 - w0) tensor) at ``box`` = (h0, w0, h1,
    w1) of the (h, w) map (ends exclusive) and ``fill`` everywhere else. Build with :meth:`of`."""

    __slots__ = ("box", "crop", "fill", "shape")

    def __init__(self, shape: tuple[int, int], box: tuple[int, int, int, int], crop: torch.Tensor,
                 fill: float) -> None:
        self.shape, self.box, self.crop, self.fill = shape, box, crop, float(fill)

    @classmethod
    def of(cls, logits: torch.Tensor, floor: float = LOGIT_FLOOR) -> CompactLogits:
        """The compact form of one result's (1, 1, h, w) logits, kept on their device (a copy).

        ``floor`` (<= 0) is the value below which logits need not be kept (see :func:`check_floor`): the
        default changes nothing a session computes; a higher one keeps less."""
        if logits.dim() != 4 or logits.shape[:2] != (1, 1):
            raise ValueError(f"one result's logits are (1, 1, h, w), got {tuple(logits.shape)}")
        plane = logits[0, 0].float()
        height, width = plane.shape
        lowest = plane.min()
        differ = plane != lowest
        rows, cols = differ.any(dim=1), differ.any(dim=0)
        above = plane > floor
        rows_above, cols_above = above.any(dim=1), above.any(dim=0)
        flags = torch.cat([rows, cols, rows_above, cols_above, (lowest <= floor)[None]]).cpu().numpy()
        rows, cols = flags[:height], flags[height:height + width]
        rows_above, cols_above = flags[height + width:2 * height + width], flags[2 * height + width:-1]
        options = [(_box(rows, cols, grow=0), float(lowest))]
        usable = floor > LOGIT_FLOOR or FLOOR_IS_EXACT  # a floor above the default is the caller's choice
        if usable and flags[-1]:  # the floor can only drop something where a logit is at or below it
            options.append((_box(rows_above, cols_above, grow=1, size=(height, width)), floor))
        box, fill = min(options, key=lambda option: _area(option[0]))
        h0, w0, h1, w1 = box
        return cls((height, width), box, plane[h0:h1, w0:w1].clone(), fill)

    @property
    def nbytes(self) -> int:
        """Bytes kept: the crop and the fill value (the full map would take 4 * h * w)."""
        return self.crop.numel() * self.crop.element_size() + 16

    @property
    def device(self) -> torch.device:
        return self.crop.device

    def dense(self) -> torch.Tensor:
        """The (1, 1, h, w) float32 logits as read back (a new tensor on the crop's device)."""
        out = torch.full((1, 1, *self.shape), self.fill, dtype=torch.float32, device=self.crop.device)
        h0, w0, h1, w1 = self.box
        out[0, 0, h0:h1, w0:w1] = self.crop
        return out

    def write_into(self, plane: np.ndarray) -> None:
        """Write the logits as read back into a float32 (h, w) numpy ``plane`` (host crops only)."""
        plane.fill(self.fill)
        h0, w0, h1, w1 = self.box
        plane[h0:h1, w0:w1] = self.crop.numpy()

    def __repr__(self) -> str:
        return f"CompactLogits(shape={self.shape}, box={self.box}, fill={self.fill})"


def check_floor(floor: float) -> float:
    """``floor`` as a float, or ValueError: results keep their logits where they are above it, so it must be
    <= 0 for masks and labels (logits > 0) to stay exact. At -32 (the default) or below, everything else a
    session computes stays exact too; above it, a dropped memory re-encoded from a result and a click that
    refines a tracked result see the floor where the logits were lower."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float, np.floating, np.integer)) \
            or not math.isfinite(floor) or floor > 0:
        raise ValueError(f"result_floor must be a number <= 0 (default {LOGIT_FLOOR}), got {floor!r}")
    return float(floor)


def _box(rows: np.ndarray, cols: np.ndarray, grow: int, size: tuple[int, int] | None = None
         ) -> tuple[int, int, int, int]:
    """(r0, c0, r1, c1) of the flagged rows and columns, grown by ``grow`` within ``size``; empty if none."""
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    if r.size == 0:
        return 0, 0, 0, 0
    r0, c0, r1, c1 = int(r[0]) - grow, int(c[0]) - grow, int(r[-1]) + 1 + grow, int(c[-1]) + 1 + grow
    if size is not None:
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, size[0]), min(c1, size[1])
    return r0, c0, r1, c1


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
