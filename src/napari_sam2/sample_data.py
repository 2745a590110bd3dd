"""Synthetic 16-bit fluorescence samples for napari's File > Open Sample menu (and for tests).

The time-lapse has the events that make cell tracking hard: cells that move (drift and random walk),
two cells that slide past each other in contact, and a cell that divides (elongates, pinches and
separates into two daughters with new ids). The ground-truth labels come with it, so the sample can
check tracking as well as show it. The Z-stack has spheroid cells through depth, for tracking along Z.

Arrays follow napari's axis order: (T, Y, X) or (Z, Y, X); positions are (row, col) = (y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_TEXTURE = 128  # side of the periodic texture tile that cells sample in their own coordinates


@dataclass(frozen=True)
class _Blob:
    """One elliptical cell (or half of a dividing cell) in one frame; lengths in pixels."""

    label: int
    y: float
    x: float
    a: float  # semi-axis along `angle`
    b: float  # semi-axis across it
    angle: float  # radians, measured from the +y (row) axis towards +x
    peak: float  # counts at the centre before texture
    tex: tuple[int, int]  # offset into the texture tile, so that texture moves with the cell


def _texture(rng: np.random.Generator) -> np.ndarray:
    """Periodic smooth noise of mean 1 (granular cytoplasm); wraps so that any offset is valid."""
    field = ndimage.gaussian_filter(rng.normal(size=(_TEXTURE, _TEXTURE)), 2.0, mode="wrap")
    return np.clip(1.0 + 0.2 * field / field.std(), 0.5, 1.5).astype(np.float32)


def _draw(img: np.ndarray, lab: np.ndarray, dist: np.ndarray, blob: _Blob, texture: np.ndarray) -> None:
    """Paint one blob into a frame, in its bounding box only.

    Intensity: the brighter of what is there and the blob (touching cells do not add up). Labels:
    each pixel goes to the blob whose normalised elliptical distance is smallest, so overlapping
    cells split along a seam and stay adjacent, as segmented touching cells do.
    """
    h, w = img.shape
    r = max(blob.a, blob.b) + 4
    y0, y1 = max(int(blob.y - r), 0), min(int(blob.y + r) + 2, h)
    x0, x1 = max(int(blob.x - r), 0), min(int(blob.x + r) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - blob.y
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - blob.x
    c, s = np.cos(blob.angle), np.sin(blob.angle)
    u, v = dy * c + dx * s, dx * c - dy * s
    d = np.sqrt((u / blob.a) ** 2 + (v / blob.b) ** 2)
    edge = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * min(blob.a, blob.b) / 0.8, -30, 30)))
    ty = (np.rint(dy).astype(int) + blob.tex[0]) % _TEXTURE
    tx = (np.rint(dx).astype(int) + blob.tex[1]) % _TEXTURE
    profile = blob.peak * edge * (0.75 + 0.25 * np.clip(1.0 - d * d, 0.0, 1.0)) * texture[ty, tx]
    np.maximum(img[y0:y1, x0:x1], profile, out=img[y0:y1, x0:x1])
    win_lab, win_dist = lab[y0:y1, x0:x1], dist[y0:y1, x0:x1]
    inside = (d < 1.0) & (d < win_dist)
    win_lab[inside] = blob.label
    win_dist[inside] = d[inside]


def _walk(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(n, 2) random walk in pixels, starting at 0."""
    steps = rng.normal(0.0, sigma, (n, 2))
    steps[0] = 0.0
    return np.cumsum(steps, axis=0)


def _to_uint16(expected: np.ndarray, rng: np.random.Generator, read_noise: float = 12.0) -> np.ndarray:
    """Shot noise (Poisson) plus camera read noise, clipped to the 16-bit range."""
    counts = rng.poisson(expected).astype(np.float32) + rng.normal(0.0, read_noise, expected.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def division_frame(num_frames: int) -> int:
    """First frame in which the dividing cell of `synthetic_cells_movie` is two daughters."""
    return num_frames // 2


def synthetic_cells_movie(num_frames: int = 40, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit fluorescence-like time-lapse of moving, touching and dividing cells, with ground truth.

    Returns ``(movie, labels)``, both (T, Y, X) uint16 in napari's axis order. The movie has a dim,
    slowly varying background (about 300-800 counts) and seven bright textured elliptical cells
    (peaks of about 16000-40000 counts, so 8 bits would not hold it) with Poisson and read noise.
    Labels 1-7 are the cells; cells 1 and 2 slide past each other in contact for a few frames
    around 0.4 T; cell 3 elongates and pinches before ``division_frame(num_frames)``, where it is
    replaced by its daughters 8 and 9. All cells move by a shared drift, their own drift and a random walk of a few
    pixels per frame at most. The same seed gives the same arrays.
    """
    if num_frames < 4 or size < 64:
        raise ValueError(f"need num_frames >= 4 and size >= 64, got {num_frames} and {size}")
    rng = np.random.default_rng(seed)
    t_count, k = num_frames, size / 256.0  # geometry is laid out for 256 pixels and scaled
    f = np.linspace(0.0, 1.0, t_count)[:, None]  # movie fraction, (T, 1)
    drift = f * rng.normal(0.0, 6.0 * k, 2)  # shared stage drift, a few pixels over the movie
    texture = _texture(rng)
    blobs: list[list[_Blob]] = [[] for _ in range(t_count)]

    def cell(label: int, track: np.ndarray, radius: float, ecc: float, angle: float) -> None:
        """A cell following `track` ((T, 2) pixels), with a slowly turning, slightly wobbling shape."""
        peak, tex = rng.uniform(16000, 30000), tuple(rng.integers(0, _TEXTURE, 2))
        turn = angle + np.cumsum(rng.normal(0.0, 0.04, t_count))
        wobble = 1.0 + 0.04 * np.sin(np.linspace(0, 2 * np.pi, t_count) * rng.uniform(1, 3) + rng.uniform(0, 6))
        for t in range(t_count):
            a, b = radius * (1 + ecc) * wobble[t], radius / (1 + ecc) / wobble[t]
            blobs[t].append(_Blob(label, *track[t], a, b, turn[t], peak * (1 - 0.004 * t), tex))

    # Cells 1 and 2: opposite directions on rows 4 px closer than their radii, so they touch in passing.
    r1, r2 = 11.0 * k, 10.0 * k
    shared = _walk(rng, t_count, 0.3 * k) + drift
    track1 = np.hstack([np.full_like(f, 0.30 * size), (0.20 + 0.30 * f) * size]) + shared
    track2 = np.hstack([np.full_like(f, 0.30 * size + r1 + r2 - 4 * k), (0.44 - 0.30 * f) * size]) + shared
    cell(1, track1, r1, 0.0, 0.0)
    cell(2, track2, r2, 0.0, 0.0)

    # Cells 4-7: their own slow drift and random walk, far enough apart never to meet.
    for label, (y, x) in zip((4, 5, 6, 7), ((0.15, 0.82), (0.52, 0.78), (0.82, 0.85), (0.90, 0.55))):
        own = f * rng.uniform(-8, 8, 2) * k
        track = np.array([y, x]) * size + own + _walk(rng, t_count, 0.35 * k) + drift
        cell(label, track, rng.uniform(9.0, 12.0) * k, rng.uniform(0.0, 0.25), rng.uniform(0, np.pi))

    # Cell 3 divides: two halves of one label move apart along `axis` and shrink (a pinched peanut),
    # then become daughters 8 and 9, which drift apart and slow down.
    split, pinch = division_frame(t_count), max(2, round(0.2 * t_count))
    r0, r_end = 12.5 * k, 9.5 * k
    centre = np.array([0.68, 0.30]) * size + _walk(rng, t_count, 0.3 * k) + drift
    axis_angle = rng.uniform(0, np.pi)
    axis = np.array([np.cos(axis_angle), np.sin(axis_angle)])
    peak, tex = rng.uniform(16000, 30000), np.array(rng.integers(0, _TEXTURE, 2))
    apart = np.cumsum(np.r_[0.0, 0.5 * k * 0.85 ** np.arange(t_count)])  # extra separation after the split
    walks = (_walk(rng, t_count, 0.3 * k), _walk(rng, t_count, 0.3 * k))
    for t in range(t_count):
        p = float(np.clip((t - (split - pinch) + 1) / pinch, 0.0, 1.0))  # 0 before the pinch, 1 from split - 1
        rho = r0 + (r_end - r0) * p
        # Centre-to-half distance: the halves overlap less and less (a waist of 0.5 rho just before the
        # split), then the daughters are 0.2 rho apart and drift further.
        half = 0.97 * rho * p if t < split else 1.1 * rho + apart[t - split]
        for sign, daughter, walk in ((1, 8, walks[0]), (-1, 9, walks[1])):
            offset = sign * half * axis + (walk[t] - walk[split] if t >= split else 0.0)
            shift = tuple(int(v) for v in (tex + np.rint(sign * half * axis)) % _TEXTURE)
            label = 3 if t < split else daughter
            y, x = centre[t] + offset
            blobs[t].append(_Blob(label, y, x, rho, rho, 0.0, peak * (1 - 0.004 * t), shift))

    cells = np.zeros((t_count, size, size), np.float32)
    labels = np.zeros((t_count, size, size), np.uint16)
    dist = np.full((size, size), np.inf, np.float32)
    for t in range(t_count):
        dist.fill(np.inf)
        for blob in blobs[t]:
            _draw(cells[t], labels[t], dist, blob, texture)
    cells = ndimage.gaussian_filter(cells, (0, 0.8, 0.8))  # optical blur

    # Uneven illumination (brighter off-centre) that slowly breathes over time.
    yy, xx = np.ogrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.5 * size) ** 2)).astype(np.float32)
    breathe = 1.0 + 0.05 * np.sin(2 * np.pi * f[:, 0] + rng.uniform(0, 2 * np.pi))
    background = (320.0 + 380.0 * spot)[None] * breathe[:, None, None].astype(np.float32)
    return _to_uint16(background + cells, rng), labels


def synthetic_z_stack(num_slices: int = 32, size: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit Z-stack of five spheroid cells at different depths, with ground truth.

    Returns ``(stack, labels)``, both (Z, Y, X) uint16. Each cell is a tilted ellipsoid, so its
    cross-section appears, grows, moves a little in (row, col) = (y, x), shrinks and vanishes through
    the stack, like an object to track along Z. The blur is stronger along Z and the signal dims with
    depth, as in a widefield or confocal stack.
    """
    rng = np.random.default_rng(seed)
    k = size / 192.0
    zz, yy, xx = (a.astype(np.float32) for a in np.ogrid[0:num_slices, 0:size, 0:size])
    depth = num_slices / 32.0
    centres = [(0.35, 0.28, 0.30), (0.55, 0.30, 0.72), (0.45, 0.70, 0.25), (0.62, 0.72, 0.70), (0.40, 0.50, 0.50)]
    cells = np.zeros((num_slices, size, size), np.float32)
    labels = np.zeros((num_slices, size, size), np.uint16)
    best = np.full(labels.shape, np.inf, np.float32)
    texture = _texture(rng)
    for label, (z, y, x) in enumerate(centres, start=1):
        z, y, x = z * num_slices, (y + rng.normal(0, 0.02)) * size, (x + rng.normal(0, 0.02)) * size
        rz, ry, rx = rng.uniform(7, 10) * depth, rng.uniform(14, 19) * k, rng.uniform(14, 19) * k
        tilt_y, tilt_x = rng.uniform(-0.6, 0.6, 2) * k / depth  # lateral shift (pixels) per slice
        dy, dx = yy - (y + tilt_y * (zz - z)), xx - (x + tilt_x * (zz - z))
        d = np.sqrt(((zz - z) / rz) ** 2 + (dy / ry) ** 2 + (dx / rx) ** 2)
        edge = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * min(ry, rx) / 0.8, -30, 30)))
        tex = texture[(np.rint(dy).astype(int) + 7 * label) % _TEXTURE, (np.rint(dx).astype(int)) % _TEXTURE]
        np.maximum(cells, rng.uniform(16000, 30000) * edge * tex, out=cells)
        inside = (d < 1.0) & (d < best)
        labels[inside], best[inside] = label, d[inside]
    cells = ndimage.gaussian_filter(cells, (1.5, 0.8, 0.8)) * np.exp(-zz / (3.0 * num_slices))
    background = 300.0 + 300.0 * np.exp(-((yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2) / (2 * (0.5 * size) ** 2))
    return _to_uint16(background + cells, rng), labels


def _contrast_limits(data: np.ndarray) -> list[float]:
    """Robust display range: 0.1 and 99.9 percentiles of a subsample (bright cells, dark background)."""
    low, high = np.percentile(data[..., ::2, ::2], [0.1, 99.9])
    return [float(low), float(max(high, low + 1))]


def sample_time_lapse() -> list[tuple]:
    """File > Open Sample: the synthetic time-lapse and its (hidden) ground-truth labels."""
    movie, labels = synthetic_cells_movie()
    split = division_frame(len(movie))
    metadata = {
        "source": "napari_sam2.sample_data.synthetic_cells_movie(num_frames=40, size=256, seed=0)",
        "axes": "TYX",
        "events": f"cells 1 and 2 touch in passing (frames 13-18); cell 3 divides into 8 and 9 at frame {split}",
        "division_frame": split,
    }
    return [
        (movie, {"name": "synthetic cells (16-bit)", "contrast_limits": _contrast_limits(movie),
                 "metadata": metadata}, "image"),
        (labels, {"name": "ground truth", "visible": False, "metadata": {"axes": "TYX"}}, "labels"),
    ]


def sample_z_stack() -> list[tuple]:
    """File > Open Sample: the synthetic Z-stack (step through Z as if it were time) and its labels."""
    stack, labels = synthetic_z_stack()
    metadata = {"source": "napari_sam2.sample_data.synthetic_z_stack(num_slices=32, size=192, seed=0)", "axes": "ZYX"}
    return [
        (stack, {"name": "synthetic Z-stack (16-bit)", "contrast_limits": _contrast_limits(stack),
                 "metadata": metadata}, "image"),
        (labels, {"name": "ground truth (Z)", "visible": False, "metadata": {"axes": "ZYX"}}, "labels"),
    ]
