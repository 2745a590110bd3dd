"""Label images straight from the model's low-resolution logits, without (objects, Y, X) at frame size.

A frame's label image (pixel = id of the object with the highest logit above 0, 0 elsewhere; ties go to
the first object, as numpy's argmax does: :func:`~napari_sam2.engine.postprocess.labels_from_logits`)
needs every object's logits at frame resolution only one tile of rows at a time. The low-resolution
logits are resampled bilinearly (``F.interpolate(..., mode="bilinear", align_corners=False)``) inside
the tile, on the device they are on, with the two source rows and columns and the weights of each output
row and column computed the way ATen computes them, so that the values equal the whole-frame
interpolation up to float rounding (on the CPU they are bit-identical for the usual sizes).

An object takes part in a tile only where it can win a pixel: bilinear weights are >= 0, so an output
pixel whose four source logits are all <= 0 is <= 0 too (also in floating point) and never labelled.
Objects judged absent (every logit -1024) and rows away from an object cost nothing: the work follows
the rows each object spans (times the frame's width) rather than objects x pixels. Axes follow napari:
(row, col) = (y, x).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model.cpu_workers import map_blocks

# The float32 logits of one tile's objects (a tile's peak is about twice this). The CPU computes one tile per
# core at a time and is fastest with small tiles that stay in its caches; an accelerator, with fewer launches.
CPU_TILE_BYTES = 8 * 2**20
DEVICE_TILE_BYTES = 64 * 2**20
_BLOCK_ROWS = 8  # tiles are made of blocks of this many output rows


@dataclass(frozen=True)
class AxisWeights:
    """Bilinear resampling of one axis: output index i reads source ``first[i]`` with weight ``w_first[i]``
    and ``second[i]`` with ``w_second[i]`` (int64 indices, float32 weights)."""

    first: np.ndarray
    second: np.ndarray
    w_first: np.ndarray
    w_second: np.ndarray


def axis_weights(src: int, dst: int) -> AxisWeights:
    """Resampling of an axis of ``src`` samples to ``dst`` as ``F.interpolate`` (bilinear,
    ``align_corners=False``, an output size) does it: scale src / dst in float32, source position
    scale * (i + 0.5) - 0.5 rounded once to float32 (ATen's kernels fuse it), clamped at 0."""
    scale = np.float32(src) / np.float32(dst)
    position = (np.float64(scale) * (np.arange(dst, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    position = np.maximum(position, np.float32(0))
    first = np.minimum(np.floor(position).astype(np.int64), src - 1)
    w_second = np.clip(position - first.astype(np.float32), 0, 1).astype(np.float32)
    second = np.where(first < src - 1, first + 1, first)
    return AxisWeights(first, second, (np.float32(1) - w_second).astype(np.float32), w_second)


def tiled_label_image(low_res: torch.Tensor, obj_ids: Sequence[int], frame_shape: tuple[int, int],
                      dtype: np.dtype | type, tile_bytes: int | None = None) -> np.ndarray:
    """(Y, X) numpy label image of ``dtype`` from (n, h, w) low-resolution logits of objects ``obj_ids``.

    Equals ``labels_from_logits(obj_ids, F.interpolate(low_res[:, None], frame_shape, mode="bilinear",
    align_corners=False)[:, 0], dtype=dtype)`` except where two logits (or a logit and 0) are within float
    rounding of each other. Runs on ``low_res``'s device; the resampled logits of the objects in one tile
    of rows take about ``tile_bytes`` (default :data:`CPU_TILE_BYTES` or :data:`DEVICE_TILE_BYTES`), and
    the result comes back to the host in one copy. On the CPU the
    tiles go to single-threaded workers, one per core (:func:`~napari_sam2.model.cpu_workers.map_blocks`):
    small ops split across busy cores wait for each other far longer than they compute.
    """
    if low_res.ndim != 3 or low_res.shape[0] != len(obj_ids):
        raise ValueError(f"low_res must be (n_objects, h, w) with n_objects = {len(obj_ids)}, "
                         f"got {tuple(low_res.shape)}")
    table = np.zeros(len(obj_ids) + 1, dtype=dtype)  # winner index + 1 -> label
    table[1:] = np.asarray(list(obj_ids), dtype=np.int64)
    if len(obj_ids) == 0:
        return np.zeros(frame_shape, dtype=dtype)
    resampler = TileResampler(low_res, frame_shape)
    # Output rows each object can win: those whose source rows hold a logit > 0 (or NaN: not <= 0).
    live_rows = (~(resampler.low_res.amax(dim=2) <= 0)).cpu().numpy()
    live = live_rows[:, resampler.rows.first] | live_rows[:, resampler.rows.second]
    on_cpu = resampler.low_res.device.type == "cpu"
    if tile_bytes is None:
        tile_bytes = CPU_TILE_BYTES if on_cpu else DEVICE_TILE_BYTES
    # On the CPU at least one tile per thread (when there are rows enough), so that every core gets work and
    # every op runs in a single-threaded worker.
    live_count = max(int(live.any(axis=0).sum()), 1)
    max_rows = -(-live_count // max(torch.get_num_threads(), 1)) if on_cpu else frame_shape[0]
    tiles = list(row_tiles(live, frame_shape[1] * 4, tile_bytes, max_rows))
    if on_cpu:
        found = map_blocks(lambda tile: resampler.winners(*tile, tile_bytes), tiles)
    else:
        found = [resampler.winners(*tile, tile_bytes) for tile in tiles]
    winners = torch.zeros(frame_shape, dtype=torch.int32, device=resampler.low_res.device)
    for (top, bottom, _), tile in zip(tiles, found, strict=True):
        winners[top:bottom] = tile
    return table[winners.cpu().numpy()]


class TileResampler:
    """The logits of some objects on some output rows, resampled from (n, h, w) low-resolution logits to
    ``frame_shape`` (Y, X) as the whole-frame ``F.interpolate`` (bilinear, ``align_corners=False``) does."""

    def __init__(self, low_res: torch.Tensor, frame_shape: tuple[int, int]) -> None:
        self.low_res = low_res.float()
        device = self.low_res.device
        self.rows = axis_weights(low_res.shape[1], frame_shape[0])
        cols = axis_weights(low_res.shape[2], frame_shape[1])
        self.col_first, self.col_second = (torch.from_numpy(a).to(device) for a in (cols.first, cols.second))
        self.col_w_first, self.col_w_second = (torch.from_numpy(a).to(device) for a in (cols.w_first, cols.w_second))

    def values(self, objects: np.ndarray, top: int, bottom: int) -> torch.Tensor:
        """(k, bottom - top, X) float32 logits of objects ``objects`` (indices) on output rows top..bottom-1."""
        device = self.low_res.device
        rows = self.rows
        src_top, src_bottom = int(rows.first[top]), int(rows.second[bottom - 1]) + 1
        window = slice(top, bottom)
        row_first = torch.from_numpy(rows.first[window] - src_top).to(device)
        row_second = torch.from_numpy(rows.second[window] - src_top).to(device)
        row_w_first = torch.from_numpy(rows.w_first[window, None]).to(device)
        row_w_second = torch.from_numpy(rows.w_second[window, None]).to(device)
        source = self.low_res[torch.from_numpy(objects).to(device), src_top:src_bottom]  # (k, source rows, w)
        # The operations of ATen's CPU kernel: along x, then along y, each second product fused (addcmul).
        across = source[:, :, self.col_second].mul_(self.col_w_second)
        across.addcmul_(source[:, :, self.col_first], self.col_w_first)
        del source
        values = across[:, row_second].mul_(row_w_second)
        return values.addcmul_(across[:, row_first], row_w_first)

    def winners(self, top: int, bottom: int, objects: np.ndarray, tile_bytes: int) -> torch.Tensor:
        """(bottom - top, X) int32: 1 + the index (a row of the low-resolution logits) of the object among
        ``objects`` with the highest logit above 0, 0 where none is; taken in chunks of ~``tile_bytes``."""
        best = winner = None
        chunks = min(len(objects), -(-len(objects) * (bottom - top) * self.col_first.numel() * 4 // tile_bytes))
        for chunk in np.array_split(objects, chunks):
            top_value, top_index = self.values(chunk, top, bottom).max(dim=0)  # the first of equal maxima
            top_index = torch.from_numpy(chunk).to(top_index.device)[top_index]
            if best is None:
                best, winner = top_value, top_index
            else:  # a later chunk wins only with a strictly higher logit (ties stay with the first object)
                better = top_value > best
                best, winner = torch.where(better, top_value, best), torch.where(better, top_index, winner)
        return torch.where(best > 0, winner + 1, 0).to(torch.int32)


def row_tiles(live: np.ndarray, row_bytes: int, tile_bytes: int,
              max_rows: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(top, bottom, objects)`` tiles of output rows covering every row where some object is live.

    ``live`` (n, Y) bool says where each object can win a pixel. Blocks of rows are merged while the
    objects live in the tile times its rows times ``row_bytes`` stay within ``tile_bytes`` (a single block
    may exceed it; its objects are then split into chunks) and the tile has at most ``max_rows`` rows
    (rounded up to whole blocks). ``objects`` are indices, in increasing order.
    """
    n, height = live.shape
    starts = np.arange(0, height, _BLOCK_ROWS)
    blocks = np.logical_or.reduceat(live, starts, axis=1).T if height else np.zeros((0, n), dtype=bool)
    top, members = 0, np.zeros(n, dtype=bool)
    for start, block in zip(starts.tolist(), blocks, strict=True):
        end = min(start + _BLOCK_ROWS, height)
        if not members.any():  # rows without live objects need no tile
            top = start
        merged = members | block
        too_big = int(merged.sum()) * (end - top) * row_bytes > tile_bytes
        if start > top and (too_big or (max_rows is not None and end - top > max_rows)):
            yield top, start, np.flatnonzero(members)
            top, merged = start, block
        members = merged
    if members.any():
        yield top, height, np.flatnonzero(members)
