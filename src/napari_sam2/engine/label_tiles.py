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
the rows each object spans (times the frame's width, or on the CPU times the bands of :data:`BAND_COLUMNS`
columns it reaches, where that saves enough) rather than objects x pixels. Axes follow napari:
(row, col) = (y, x).

A *window* ``(row0, col0, row1, col1)`` (frame pixels, ends exclusive) gives that part of the label image, the
same numbers as the whole frame's (every value is computed by the same operations on the same inputs): only its
columns are resampled, only its rows tiled, and only the source rows and columns it reads
(:func:`source_span`) are looked at. :func:`reaches` says, from an object's stored crop, whether it can label
any pixel of a window at all, so that the other objects cost nothing there.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model.cpu_workers import map_blocks
from .compact_logits import CompactLogits

# The float32 logits of one tile's objects (a tile's peak is about twice this). The CPU computes one tile per
# core at a time and is fastest with small tiles that stay in its caches; an accelerator, with fewer launches.
CPU_TILE_BYTES = 8 * 2**20
DEVICE_TILE_BYTES = 64 * 2**20
_BLOCK_ROWS = 8  # tiles are made of blocks of this many output rows
# On the CPU a wide label image may be made in bands of this many output columns: an object then costs the rows it
# spans times the bands it reaches, not times the frame's width. Bands are taken when they resample fewer logits by
# this factor (their ops are more and smaller: with every object everywhere, the same work takes ~1.4x as long).
BAND_COLUMNS = 256
BAND_OVERHEAD = 1.5

Window = tuple[int, int, int, int]  # (row0, col0, row1, col1) in frame pixels, ends exclusive


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


def check_window(window: object, frame_shape: tuple[int, int]) -> Window:
    """``window`` as four ints ``(row0, col0, row1, col1)`` with 0 <= row0 <= row1 <= Y and 0 <= col0 <= col1 <= X
    (frame pixels, napari (row, col) = (y, x), ends exclusive), or a one-line ValueError."""
    try:
        values = [operator.index(v) for v in window]  # type: ignore[union-attr]
    except TypeError:
        values = []
    if len(values) != 4 or any(isinstance(v, bool) for v in window):  # type: ignore[union-attr]
        raise ValueError(f"window must be four integers (row0, col0, row1, col1), got {window!r}")
    row0, col0, row1, col1 = values
    height, width = frame_shape
    if not (0 <= row0 <= row1 <= height and 0 <= col0 <= col1 <= width):
        raise ValueError(f"window {tuple(values)} is not within the {height} x {width} frame "
                         "(0 <= row0 <= row1 <= Y, 0 <= col0 <= col1 <= X)")
    return row0, col0, row1, col1


def source_span(weights: AxisWeights, start: int, stop: int) -> tuple[int, int]:
    """The source indices ``[lo, hi)`` that output indices ``start..stop-1`` read ((0, 0) for none)."""
    if start >= stop:
        return 0, 0
    return int(weights.first[start]), int(weights.second[stop - 1]) + 1


def output_span(weights: AxisWeights, lo: int, hi: int) -> tuple[int, int]:
    """The output indices ``[start, stop)`` that read some source index of ``lo..hi-1`` ((0, 0) for none).

    Output i reads ``first[i]`` and ``second[i]`` (both non-decreasing in i, second <= first + 1), so it reads
    one of them in [lo, hi) exactly when ``second[i] >= lo`` and ``first[i] < hi``."""
    start = int(np.searchsorted(weights.second, lo, side="left"))
    stop = int(np.searchsorted(weights.first, hi, side="left"))
    return (start, stop) if start < stop else (0, 0)


def window_source(map_shape: tuple[int, int], frame_shape: tuple[int, int], window: Window) -> Window:
    """The box ``(h0, w0, h1, w1)`` of the (h, w) low-resolution map that ``window`` of the frame reads."""
    row0, col0, row1, col1 = window
    h0, h1 = source_span(axis_weights(map_shape[0], frame_shape[0]), row0, row1)
    w0, w1 = source_span(axis_weights(map_shape[1], frame_shape[1]), col0, col1)
    return h0, w0, h1, w1


def frame_box(map_box: Window, map_shape: tuple[int, int], frame_shape: tuple[int, int]) -> Window | None:
    """The frame-pixel box whose pixels read some low-resolution pixel of ``map_box`` (None if none do)."""
    h0, w0, h1, w1 = map_box
    row0, row1 = output_span(axis_weights(map_shape[0], frame_shape[0]), h0, h1)
    col0, col1 = output_span(axis_weights(map_shape[1], frame_shape[1]), w0, w1)
    return (row0, col0, row1, col1) if row0 < row1 and col0 < col1 else None


def reaches(logits: list[CompactLogits], region: Window, hole_area: int) -> list[bool]:
    """Whether each object's stored logits, once hole filling (holes up to ``hole_area`` pixels) is applied, can
    be > 0 (or NaN) somewhere in ``region`` (a box of the low-resolution map), read from the crops alone.

    Hole filling sets background components of at most ``hole_area`` pixels to a positive value; such a component
    is not the whole plane (unless the plane has at most ``hole_area`` pixels: then every object counts), so it
    touches a pixel > 0 and lies within ``hole_area`` pixels (Chebyshev) of it. An object can therefore be > 0 in
    ``region`` only if it is already > 0 within ``region`` grown by ``hole_area``: in its crop there, or anywhere
    outside its box when its ``fill`` is not <= 0. Host crops are read by numpy; device crops in one transfer."""
    if not logits or region[0] >= region[2] or region[1] >= region[3]:
        return [False] * len(logits)
    height, width = logits[0].shape
    if height * width <= hole_area:
        return [True] * len(logits)
    grow = max(hole_area, 0)
    r0, c0 = max(region[0] - grow, 0), max(region[1] - grow, 0)
    r1, c1 = min(region[2] + grow, height), min(region[3] + grow, width)
    found: list[bool | None] = []
    on_device: list[tuple[int, torch.Tensor]] = []
    for i, result in enumerate(logits):
        h0, w0, h1, w1 = result.box
        inside = (max(r0, h0), max(c0, w0), min(r1, h1), min(c1, w1))
        covered = inside[0] == r0 and inside[1] == c0 and inside[2] == r1 and inside[3] == c1
        if not covered and not result.fill <= 0:  # some of the region reads the fill value
            found.append(True)
            continue
        if inside[0] >= inside[2] or inside[1] >= inside[3]:
            found.append(False)
            continue
        part = result.crop[inside[0] - h0:inside[2] - h0, inside[1] - w0:inside[3] - w0]
        if part.device.type == "cpu":
            found.append(not part.numpy().max() <= 0)
        else:
            found.append(None)
            on_device.append((i, part.amax()))
    if on_device:
        peaks = torch.stack([peak.to(on_device[0][1].device) for _, peak in on_device]).cpu().numpy()
        for (i, _), peak in zip(on_device, peaks, strict=True):
            found[i] = not peak <= 0
    return [bool(f) for f in found]


def tiled_label_image(low_res: torch.Tensor, obj_ids: Sequence[int], frame_shape: tuple[int, int],
                      dtype: np.dtype | type, tile_bytes: int | None = None,
                      window: Window | None = None) -> np.ndarray:
    """(Y, X) numpy label image of ``dtype`` from (n, h, w) low-resolution logits of objects ``obj_ids``; with a
    ``window`` (row0, col0, row1, col1), only that part of it, (row1 - row0, col1 - col0), the same labels as the
    whole image's there (checked with :func:`check_window`).

    Equals ``labels_from_logits(obj_ids, F.interpolate(low_res[:, None], frame_shape, mode="bilinear",
    align_corners=False)[:, 0], dtype=dtype)`` except where two logits (or a logit and 0) are within float
    rounding of each other. Runs on ``low_res``'s device; the resampled logits of the objects in one tile
    of rows take about ``tile_bytes`` (default :data:`CPU_TILE_BYTES` or :data:`DEVICE_TILE_BYTES`), and
    the result comes back to the host in one copy. On the CPU the
    tiles go to single-threaded workers, one per core (:func:`~napari_sam2.model.cpu_workers.map_blocks`):
    small ops split across busy cores wait for each other far longer than they compute; a wide image is cut
    into bands of columns too when that resamples :data:`BAND_OVERHEAD` times fewer logits (cells: 2x faster).
    """
    if low_res.ndim != 3 or low_res.shape[0] != len(obj_ids):
        raise ValueError(f"low_res must be (n_objects, h, w) with n_objects = {len(obj_ids)}, "
                         f"got {tuple(low_res.shape)}")
    row0, col0, row1, col1 = (0, 0, *frame_shape) if window is None else check_window(window, frame_shape)
    out_shape = (row1 - row0, col1 - col0)
    table = np.zeros(len(obj_ids) + 1, dtype=dtype)  # winner index + 1 -> label
    table[1:] = np.asarray(list(obj_ids), dtype=np.int64)
    if len(obj_ids) == 0 or 0 in out_shape:
        return np.zeros(out_shape, dtype=dtype)
    low_res = low_res.float()
    on_cpu = low_res.device.type == "cpu"
    if tile_bytes is None:
        tile_bytes = CPU_TILE_BYTES if on_cpu else DEVICE_TILE_BYTES
    tiles = _plan(low_res, frame_shape, (row0, row1), [(col0, col1)], tile_bytes)
    if on_cpu and col1 - col0 >= 2 * BAND_COLUMNS:
        # Bands of columns, so that an object costs the bands it reaches, not the whole width; taken when that
        # saves work enough to pay for their more and smaller ops (an accelerator takes the width at once).
        starts = range(col0, col1 - BAND_COLUMNS // 2, BAND_COLUMNS)
        bands = [(start, min(start + BAND_COLUMNS, col1)) for start in starts]
        bands[-1] = (bands[-1][0], col1)
        banded = _plan(low_res, frame_shape, (row0, row1), bands, tile_bytes)
        if BAND_OVERHEAD * _work(banded) < _work(tiles):
            tiles = banded
    winners = torch.zeros(out_shape, dtype=torch.int32, device=low_res.device)

    def fill(tile: tuple) -> None:
        # Each tile writes its part at once: small results kept between the tiles' large temporaries would
        # fragment glibc's heap (peak RSS 570-950 MiB instead of about 60 for 100 whole-frame objects at 2048 px).
        resampler, top, bottom, objects = tile
        part = resampler.winners(top, bottom, objects, tile_bytes)
        winners[top - row0:bottom - row0, resampler.cols[0] - col0:resampler.cols[1] - col0] = part

    if on_cpu:
        map_blocks(fill, tiles)
    else:
        for tile in tiles:
            fill(tile)
    return table[winners.cpu().numpy()]


Tile = tuple["TileResampler", int, int, np.ndarray]  # (resampler of a band, top, bottom, objects): frame rows


def _plan(low_res: torch.Tensor, frame_shape: tuple[int, int], rows: tuple[int, int], bands: list[tuple[int, int]],
          tile_bytes: int) -> list[Tile]:
    """The tiles of output rows ``rows`` in each band of columns: :func:`row_tiles` of the rows each object can win
    there, those whose source rows hold a logit > 0 (or NaN: not <= 0) in the band's source columns. A band's tiles
    are as tall as the whole frame's width would allow (a tile's objects are computed on all its rows). On the CPU
    at least one tile per thread over all bands (when there are rows enough), so that every core gets work and
    every op runs in a single-threaded worker."""
    row0, row1 = rows
    threads = max(torch.get_num_threads(), 1) if low_res.device.type == "cpu" else 1
    per_band = -(-threads // len(bands))
    tiles: list[Tile] = []
    for band in bands:
        resampler = TileResampler(low_res, frame_shape, cols=band)
        w0, w1 = resampler.source_cols
        live_rows = (~(resampler.low_res[:, :, w0:w1].amax(dim=2) <= 0)).cpu().numpy()
        live = live_rows[:, resampler.rows.first[row0:row1]] | live_rows[:, resampler.rows.second[row0:row1]]
        max_rows = -(-max(int(live.any(axis=0).sum()), 1) // per_band)
        budget = max(tile_bytes * (band[1] - band[0]) // frame_shape[1], 1)
        tiles.extend((resampler, top + row0, bottom + row0, objects)
                     for top, bottom, objects in row_tiles(live, (band[1] - band[0]) * 4, budget, max_rows))
    return tiles


def _work(tiles: list[Tile]) -> int:
    """The logits a plan resamples: objects x rows x columns of each tile."""
    return sum(len(objects) * (bottom - top) * resampler.col_first.numel() for resampler, top, bottom, objects in tiles)


class TileResampler:
    """The logits of some objects on some output rows, resampled from (n, h, w) low-resolution logits to
    ``frame_shape`` (Y, X) as the whole-frame ``F.interpolate`` (bilinear, ``align_corners=False``) does; with
    ``cols`` = (col0, col1), only those output columns (the same values as the whole frame's there)."""

    def __init__(self, low_res: torch.Tensor, frame_shape: tuple[int, int],
                 cols: tuple[int, int] | None = None) -> None:
        self.low_res = low_res.float()
        device = self.low_res.device
        self.rows = axis_weights(low_res.shape[1], frame_shape[0])
        weights = axis_weights(low_res.shape[2], frame_shape[1])
        col0, col1 = self.cols = (0, frame_shape[1]) if cols is None else cols
        self.source_cols = source_span(weights, col0, col1)  # the source columns read, [w0, w1)
        w0 = self.source_cols[0]
        window = slice(col0, col1)
        self.col_first, self.col_second = (torch.from_numpy(a[window] - w0).to(device)
                                           for a in (weights.first, weights.second))
        self.col_w_first, self.col_w_second = (torch.from_numpy(a[window]).to(device)
                                               for a in (weights.w_first, weights.w_second))

    def values(self, objects: np.ndarray, top: int, bottom: int) -> torch.Tensor:
        """(k, bottom - top, columns) float32 logits of objects ``objects`` (indices) on output rows
        top..bottom-1 (the frame's rows; every column, or those of ``cols``)."""
        device = self.low_res.device
        rows = self.rows
        src_top, src_bottom = int(rows.first[top]), int(rows.second[bottom - 1]) + 1
        window = slice(top, bottom)
        row_first = torch.from_numpy(rows.first[window] - src_top).to(device)
        row_second = torch.from_numpy(rows.second[window] - src_top).to(device)
        row_w_first = torch.from_numpy(rows.w_first[window, None]).to(device)
        row_w_second = torch.from_numpy(rows.w_second[window, None]).to(device)
        w0, w1 = self.source_cols
        # (k, source rows, source columns)
        source = self.low_res[torch.from_numpy(objects).to(device), src_top:src_bottom, w0:w1]
        # The operations of ATen's CPU kernel: along x, then along y, each second product fused (addcmul).
        across = source[:, :, self.col_second].mul_(self.col_w_second)
        across.addcmul_(source[:, :, self.col_first], self.col_w_first)
        del source
        values = across[:, row_second].mul_(row_w_second)
        return values.addcmul_(across[:, row_first], row_w_first)

    def winners(self, top: int, bottom: int, objects: np.ndarray, tile_bytes: int) -> torch.Tensor:
        """(bottom - top, columns) int32: 1 + the index (a row of the low-resolution logits) of the object among
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
