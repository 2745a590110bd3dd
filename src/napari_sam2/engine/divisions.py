"""Division proposals: the pure mask geometry that says "this object looks like two cells now".

Two rules, both on bool masks in napari (row, col) = (y, x) order, with no model and no session:

* **split** (:func:`split_parts`): an object's mask falls into two parts of comparable size. The parts are the
  connected components of the mask's pixels that lie deeper than ``neck_ratio`` times the mask's largest depth
  (its Euclidean distance to the background, ``scipy.ndimage.distance_transform_edt``): a neck narrower than
  that breaks, so two touching or pinched (peanut-shaped) daughters come apart as well as disconnected ones.
  Every mask pixel is then given to its nearest part. The depth threshold is relative, so it does not depend
  on the cell size, and a convex shape never splits whatever its elongation (the pixels deeper than a given
  depth in a convex shape form one convex set): an elongated ellipse is not a division.
* **cells** (:func:`daughter_pair`): two separate cells of a segmentation (sharing at most a sliver), each at
  least ``cell_inside`` inside the object's mask on the previous frame or on this one, of comparable size.

Cost of :func:`split_parts`: linear in the pixels of the mask's bounding box (two distance transforms and two
labellings), but the box is first reduced by block averaging until its longer side is at most ``max_side``
pixels, so one object costs at most about ``max_side**2`` pixel operations whatever its size (500 objects at
the default 96: under 5 million); the parts are brought back to full resolution only when they are proposed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .compact_mask import CompactMask

DIVISION_MODES = ("propose", "auto", "off")
DIVISION_KINDS = ("split", "cells")


@dataclass(frozen=True)
class DivisionOptions:
    """Thresholds of the division rules (``TrackingSession.propagate(..., division_options=...)``).

    ``min_area_ratio``: the smaller part (or cell) has at least this fraction of the larger one's area.
    ``min_part_area``: each part has at least this many pixels (frame resolution).
    ``neck_ratio``: the neck width, relative to the mask's widest place, below which a mask splits: the parts
    are the pixels deeper than ``neck_ratio`` times the mask's largest distance to the background (0 < r < 1;
    higher splits fatter necks; parts thinner than it vanish, so keep it below ``sqrt(min_area_ratio)``).
    ``min_coverage``: the two parts together hold at least this fraction of the mask (a third part, or pieces
    far from both, lower it). ``cell_inside``: for the "cells" rule, the fraction of each cell's pixels inside
    the object's mask on the previous frame or this one. ``max_pair_overlap``: for the "cells" rule, two
    cells are a pair only when the pixels they share are below this fraction of the smaller (a whole cell and
    its half, or a cell and its nucleus, are not two daughters). ``max_side``: masks whose box has a longer
    side are examined at a resolution reduced by an integer factor so that it is at most this (bounds the cost).
    """

    min_area_ratio: float = 0.5
    min_part_area: int = 16
    neck_ratio: float = 0.6
    min_coverage: float = 0.9
    cell_inside: float = 0.5
    max_pair_overlap: float = 0.1
    max_side: int = 96

    def __post_init__(self) -> None:
        for name in ("min_area_ratio", "neck_ratio", "min_coverage", "cell_inside"):
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not number:  # a user's mistake: one ValueError line, as for the ranges below
                raise ValueError(f"DivisionOptions {name} must be a number, got {value!r}")
            if not 0 < value <= 1:
                raise ValueError(f"DivisionOptions {name} must be in (0, 1], got {value!r}")
        overlap = self.max_pair_overlap
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.integer, np.floating)) \
                or not 0 <= overlap < 1:
            raise ValueError(f"DivisionOptions max_pair_overlap must be a number in [0, 1), got {overlap!r}")
        if self.neck_ratio >= 1:
            raise ValueError(f"DivisionOptions neck_ratio must be below 1, got {self.neck_ratio!r}")
        for name, low in (("min_part_area", 1), ("max_side", 8)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"DivisionOptions {name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True, eq=False, init=False)
class DivisionProposal:
    """A proposed division of object ``parent`` at T index ``frame`` (the parent's last frame is ``frame - 1``).

    ``parts``: the two daughters' bool (Y, X) masks on ``frame`` (new read-only arrays on each read: a proposal
    keeps them as :class:`~napari_sam2.engine.compact_mask.CompactMask` crops, ``compact_parts``, since a
    full-frame pair costs 8 MiB at 2048 x 2048). ``daughters``: the two existing objects that are the daughters
    (objects that start on ``frame``), else None (accepting creates them from ``parts``). ``kind``: "split" (the
    parent's own mask came apart) or "cells" (two segmented cells lie in it). Two proposals are the same
    proposal when their :attr:`key` ``(frame, parent)`` is.
    """

    frame: int
    parent: int
    compact_parts: tuple[CompactMask, CompactMask]
    daughters: tuple[int, int] | None
    kind: str

    def __init__(self, frame: int, parent: int, parts: Sequence[np.ndarray | CompactMask],
                 daughters: Sequence[int] | None = None, kind: str = "split") -> None:
        if kind not in DIVISION_KINDS:
            raise ValueError(f"a division proposal's kind is one of {DIVISION_KINDS}, got {kind!r}")
        if len(parts) != 2:
            raise ValueError(f"a division proposal has two parts, got {len(parts)}")
        compact = tuple(CompactMask.of(part) for part in parts)
        if compact[0].shape != compact[1].shape:
            raise ValueError(f"a division proposal's parts are masks of one frame, got shapes "
                             f"{compact[0].shape} and {compact[1].shape}")
        object.__setattr__(self, "frame", int(frame))
        object.__setattr__(self, "parent", int(parent))
        object.__setattr__(self, "compact_parts", compact)
        object.__setattr__(self, "daughters", None if daughters is None else tuple(int(d) for d in daughters))
        object.__setattr__(self, "kind", kind)

    @property
    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """The two parts as full-frame bool (Y, X) masks (read-only)."""
        full = tuple(part.full() for part in self.compact_parts)
        for part in full:
            part.flags.writeable = False
        return full

    @property
    def part_areas(self) -> tuple[int, int]:
        """The two parts' areas in pixels (without expanding them)."""
        first, second = (int(np.count_nonzero(part.crop)) for part in self.compact_parts)
        return first, second

    @property
    def key(self) -> tuple[int, int]:
        """(frame, parent): what identifies the proposal (rejections are remembered by it)."""
        return self.frame, self.parent

    def __repr__(self) -> str:
        areas = ", ".join(map(str, self.part_areas))
        return (f"DivisionProposal(frame={self.frame}, parent={self.parent}, kind={self.kind!r}, "
                f"daughters={self.daughters}, part areas=({areas}))")


def check_mode(divisions: str) -> str:
    """``divisions`` of ``propagate``: one of :data:`DIVISION_MODES`."""
    if divisions not in DIVISION_MODES:
        raise ValueError(f"divisions must be one of {DIVISION_MODES}, got {divisions!r}")
    return divisions


# ------------------------------------------------------------------ the split rule
def split_parts(mask: np.ndarray, options: DivisionOptions | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The two daughters of a bool (Y, X) mask (e.g. an object's crop) that fell apart, or None.

    Returns two disjoint bool masks of ``mask``'s shape covering the two parts (see the module docstring), the
    one whose first pixel comes first in row-major order first; None when the mask is not two parts of
    comparable size by ``options``. A large mask is examined at reduced resolution (``options.max_side``).
    """
    options = options or DivisionOptions()
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (Y, X), got shape {mask.shape}")
    factor = reduction(mask.shape, options)
    owner = split_labels(mask if factor == 1 else _reduced(mask, factor), options, factor)
    return None if owner is None else parts_at_full_resolution(owner, mask, factor, options)


def reduction(shape: tuple[int, int], options: DivisionOptions) -> int:
    """The integer factor that brings a (Y, X) box's longer side to at most ``options.max_side``."""
    return max(1, math.ceil(max(shape, default=0) / options.max_side))


def split_labels(mask: np.ndarray, options: DivisionOptions, factor: int = 1) -> np.ndarray | None:
    """The split rule on a bool mask seen at 1 / ``factor`` of the frame's resolution: an int label image of its
    shape, 1 and 2 on the two parts' pixels (0 elsewhere), or None when it is not two comparable parts (areas
    are compared in frame pixels)."""
    return _two_parts(mask, options, min_area=options.min_part_area / factor**2)


def parts_at_full_resolution(owner: np.ndarray, mask: np.ndarray, factor: int,
                             options: DivisionOptions) -> tuple[np.ndarray, np.ndarray] | None:
    """The two parts on the full-resolution bool ``mask`` from :func:`split_labels` at 1 / ``factor`` of it,
    checked again at full resolution (None when they fail the thresholds there)."""
    if factor > 1:
        owner = _full_resolution(owner, mask, factor)
        if _sizes_fail(np.bincount(owner.ravel(), minlength=3)[1:3], int(mask.sum()), options):
            return None
    return owner == 1, owner == 2


def _reduced(mask: np.ndarray, factor: int) -> np.ndarray:
    """``mask`` block-averaged by ``factor`` (a pixel is in when at least half of its block is)."""
    height, width = mask.shape
    padded = np.zeros((-(-height // factor) * factor, -(-width // factor) * factor), dtype=np.float32)
    padded[:height, :width] = mask
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.mean(axis=(1, 3)) >= 0.5


def _two_parts(mask: np.ndarray, options: DivisionOptions, min_area: float) -> np.ndarray | None:
    """int label image of ``mask``'s shape: 1 and 2 on the two parts' pixels, 0 elsewhere; None if no split."""
    if not mask.any():
        return None
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # outside the crop is background
    seeds, count = ndimage.label(depth > options.neck_ratio * depth.max())
    if count < 2:
        return None
    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    # Each mask pixel goes to its nearest seed pixel, if that lies in the same connected piece of the mask
    # (a pixel nearer another piece's seed stays unassigned and lowers the coverage; with the usual one or two
    # pieces, each around its own seeds, that does not happen).
    _, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[rows, cols]
    owner = np.where(mask & (pieces[rows, cols] == pieces), nearest, 0)
    areas = np.bincount(owner.ravel(), minlength=count + 1)[1:]
    largest = np.argsort(areas, kind="stable")[::-1][:2] + 1  # seed labels of the two largest parts
    if _sizes_fail(areas[largest - 1], int(mask.sum()), options, min_area):
        return None
    first, second = sorted(largest.tolist())  # seed labels follow row-major order of first pixels
    return np.where(owner == first, 1, np.where(owner == second, 2, 0))


def _sizes_fail(areas: np.ndarray, total: int, options: DivisionOptions, min_area: float | None = None) -> bool:
    """Whether two part areas fail the size thresholds (smallest part, area ratio, coverage of ``total``)."""
    small, large = sorted(int(a) for a in areas)
    min_area = options.min_part_area if min_area is None else min_area
    return (small < min_area or small < options.min_area_ratio * large
            or small + large < options.min_coverage * total)


def _full_resolution(owner: np.ndarray, mask: np.ndarray, factor: int) -> np.ndarray:
    """Reduced-resolution part labels brought back onto the full-resolution ``mask``: each mask pixel takes
    the label of its block, or, where that block was out, the label of the nearest labelled pixel."""
    height, width = mask.shape
    full = np.repeat(np.repeat(owner, factor, axis=0), factor, axis=1)[:height, :width]
    full = np.where(mask, full, 0)
    if (mask & (full == 0)).any():
        _, (rows, cols) = ndimage.distance_transform_edt(full == 0, return_indices=True)
        full = np.where(mask, full[rows, cols], 0)
    return full


# ------------------------------------------------------------------ the cells rule
def inside_fraction(cell: CompactMask, mask: CompactMask) -> float:
    """The fraction of ``cell``'s pixels inside ``mask`` (both of one frame), reading their boxes only."""
    if cell.empty or mask.empty:
        return 0.0
    return shared_pixels(cell, mask) / float(np.count_nonzero(cell.crop))


def daughter_pair(parent_masks: Sequence[CompactMask], cells: Sequence[CompactMask],
                  options: DivisionOptions | None = None) -> tuple[int, int] | None:
    """The indices (ascending) of the two ``cells`` that are the daughters of an object whose masks on the
    previous frame and this one are ``parent_masks``, or None.

    A cell qualifies when at least ``options.cell_inside`` of it lies inside one of ``parent_masks``; the pair
    is the two most inside qualifying cells that are separate (they share fewer than
    ``options.max_pair_overlap`` of the smaller's pixels), and is taken when the smaller has at least
    ``options.min_area_ratio`` of the larger's area and ``options.min_part_area`` pixels.
    """
    options = options or DivisionOptions()
    scored = []
    for index, cell in enumerate(cells):
        inside = max((inside_fraction(cell, mask) for mask in parent_masks), default=0.0)
        if inside >= options.cell_inside:
            scored.append((-inside, index))
    ranked = [index for _, index in sorted(scored)]
    areas = {i: int(np.count_nonzero(cells[i].crop)) for i in ranked}
    pair = next(((a, b) for k, a in enumerate(ranked) for b in ranked[k + 1:]
                 if shared_pixels(cells[a], cells[b]) < options.max_pair_overlap * min(areas[a], areas[b])), None)
    if pair is None:
        return None
    small, large = sorted(areas[i] for i in pair)
    if small < options.min_part_area or small < options.min_area_ratio * large:
        return None
    first, second = sorted(pair)
    return first, second


def shared_pixels(a: CompactMask, b: CompactMask) -> int:
    """How many pixels two masks of one frame share, reading their boxes only."""
    if a.empty or b.empty:
        return 0
    (r0, c0, r1, c1), (m0, n0, m1, n1) = a.bounds, b.bounds
    top, left, bottom, right = max(r0, m0), max(c0, n0), min(r1, m1), min(c1, n1)
    if top >= bottom or left >= right:
        return 0
    return int(np.count_nonzero(a.crop[top - r0:bottom - r0, left - c0:right - c0]
                                & b.crop[top - m0:bottom - m0, left - n0:right - n0]))
