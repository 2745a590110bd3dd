"""Opening movies from disk lazily: TIFF / OME-TIFF, ``.npy`` and zarr, as (T, Y, X[, C]) arrays.

Nothing is loaded up front: TIFFs are memory-mapped when their layout allows it (uncompressed,
contiguous) and otherwise read through tifffile's zarr view; ``.npy`` files are memory-mapped; zarr
stores are opened as they are. Axes come from the file's metadata (OME / ImageJ / tifffile) or, when
there is none, from napari's convention (T, Y, X[, C]); ``axes=`` overrides both, but may only rename
the non-spatial axes of a file that records its axes: moving Y and X away from where the file's metadata
puts them is refused (it would read the planes sideways). The tracked axis is time or, for a Z-stack, Z;
both at once is refused with a message saying what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRACK_AXES = "TZQI"  # tifffile: T time, Z depth, Q unknown, I image sequence
CHANNEL_AXES = "CS"  # tifffile: C channel, S samples (RGB)
NAPARI_DEFAULT_AXES = {2: "YX", 3: "TYX", 4: "TYXC"}
GUESSED_TIFF_AXES = "QIYX"  # what tifffile names axes with when the file records none: Q unknown, I sequence
AXES_FROM_FILE, AXES_GIVEN, AXES_ASSUMED = "file", "given", "assumed"


class MovieFileError(ValueError):
    """A movie file that cannot be opened as (T, Y, X[, C]); the message says why and what to do."""


@dataclass
class Movie:
    """A lazily read movie in napari order (T, Y, X[, C]); ``axis`` names the tracked axis ("T" or "Z").

    ``axes`` are the file's axes as read (``file_shape`` their sizes) and ``axes_from`` where they came from:
    the file's metadata, the caller (``axes=``), or napari's convention assumed for a file without any.
    """

    data: Any
    axis: str
    source: str
    axes: str = ""
    axes_from: str = AXES_FROM_FILE
    file_shape: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def layout(self) -> str:
        """How the file was read, e.g. ``4 frames of 96 x 80 (Y x X)``; used in messages about misfits."""
        count, height, width = self.shape[:3]
        unit = "slices" if self.axis == "Z" else "frames"
        return f"{count} {unit} of {height} x {width} (Y x X)"

    def axes_hint(self) -> str:
        """A sentence for errors caused by a frame shape that does not fit, when wrong axes may be the cause:
        empty when the axes come from the file's metadata, else how the axes were chosen and what they gave."""
        name = Path(self.source).name
        if self.axes_from == AXES_GIVEN:
            return (f"with --axes {self.axes}, {name} {self.file_shape} is read as {self.layout()} along "
                    f"{self.axis}: are the axes right?")
        if self.axes_from == AXES_ASSUMED:
            return (f"{name} records no axes, so {self.axes} was assumed and it is read as {self.layout()} along "
                    f"{self.axis}: pass --axes if that is wrong")
        return ""


class ReorderedFrames:
    """Read-only view of an N-d array as (T, Y, X[, C]), one frame at a time.

    Hand-written because zarr arrays have no lazy transpose, and because frames must be read one by one
    (never the whole stack) to keep memory bounded.
    """

    def __init__(self, array: Any, axes: str, track: str | None, channel: str | None,
                 fixed: dict[str, int] | None = None) -> None:
        """``axes`` names every axis of ``array`` (with "Y", "X"); ``track`` is the frame axis, ``channel`` the
        colour axis kept last; any other axis is read at its ``fixed`` index (default 0)."""
        self._array = array
        self._axes = axes
        self._track = track
        self._channel = channel
        self._fixed = dict(fixed or {})
        sizes = dict(zip(axes, array.shape))
        self.shape = ((sizes[track] if track else 1), sizes["Y"], sizes["X"]) + ((sizes[channel],) if channel else ())
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, frame: int) -> np.ndarray:
        if isinstance(frame, (bool, np.bool_)) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"frames are read one at a time by integer index, got {frame!r}")
        if not 0 <= frame < self.shape[0]:
            raise IndexError(f"frame {frame} is out of range 0..{self.shape[0] - 1}")
        index = []
        kept = []
        for name in self._axes:
            if name == self._track:
                index.append(int(frame))
            elif name in ("Y", "X") or name == self._channel:
                index.append(slice(None))
                kept.append(name)
            else:
                index.append(self._fixed.get(name, 0))  # a singleton axis, or a plane chosen by the caller
        plane = np.asarray(self._array[tuple(index)])
        order = [kept.index(name) for name in ("Y", "X", self._channel) if name in kept]
        return np.transpose(plane, order)


def open_movie(path: str | os.PathLike, axes: str | None = None) -> Movie:
    """Open a TIFF / OME-TIFF, ``.npy`` or zarr movie lazily as (T, Y, X[, C]).

    ``axes`` (e.g. "TYX", "ZYX", "TCYX", "YXS") names the file's axes when its metadata is missing or
    wrong; letters: T time, Z depth, Y, X, C channel (S for RGB samples).
    """
    path = Path(path)
    if not path.exists():
        raise MovieFileError(f"input {path} does not exist")
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        array, found_axes, recorded = _open_tiff(path)
    elif name.endswith(".npy"):
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        found_axes, recorded = NAPARI_DEFAULT_AXES.get(array.ndim, ""), False
    elif path.is_dir() or name.endswith(".zarr"):
        array, found_axes, recorded = _open_zarr(path)
    else:
        raise MovieFileError(f"cannot read {path}: use a TIFF / OME-TIFF (.tif, .tiff), a .npy file or a zarr store")
    shape = tuple(int(n) for n in array.shape)
    if axes:
        axes, axes_from = axes.upper(), AXES_GIVEN
        if recorded and not _same_planes(axes, found_axes):
            raise MovieFileError(
                f"--axes {axes} does not match the file's axes {found_axes} (shape {shape}): --axes may rename the "
                f"axes other than Y and X, but not move those; leave --axes out to use {found_axes}")
    else:
        axes, axes_from = found_axes, (AXES_FROM_FILE if recorded else AXES_ASSUMED)
    if len(axes) != array.ndim:
        raise MovieFileError(f"{path} has {array.ndim} axes {shape}, but the axes are {axes!r}; "
                             f"pass --axes with one letter per axis, e.g. {NAPARI_DEFAULT_AXES.get(array.ndim, 'TYX')}")
    track, channel = _roles(axes, shape, path)
    data = array
    if track is None or axes != "".join(a for a in (track, "Y", "X", channel) if a):
        data = ReorderedFrames(array, axes, track, channel)
    return Movie(data=data, axis="Z" if track == "Z" else "T", source=str(path), axes=axes, axes_from=axes_from,
                 file_shape=shape)


def _same_planes(axes: str, other: str) -> bool:
    """Whether two axes strings of one array put Y and X at the same places (the other axes may differ).

    Writers often label the other axes wrongly (ImageJ and OME default to C, T is saved as Z), so those may
    be renamed; but a TIFF page or an NGFF array's Y x X plane is where the file says it is.
    """
    return len(axes) == len(other) and all(a == b for a, b in zip(axes, other) if a in "YX" or b in "YX")


def _open_tiff(path: Path) -> tuple[Any, str, bool]:
    """The TIFF's full-resolution series, its axes and whether the file records them.

    Without metadata tifffile names the page's Y and X and calls the rest Q (unknown) or I (sequence);
    those are read in napari's order when it puts Y and X in the same places.
    """
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes
    recorded = bool(set(axes) - set(GUESSED_TIFF_AXES))
    if not recorded and _same_planes(NAPARI_DEFAULT_AXES.get(len(axes), ""), axes):
        axes = NAPARI_DEFAULT_AXES[len(axes)]
    try:
        array = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed or tiled: read through tifffile's zarr store, still one frame at a time
        # level 0 (full resolution): for a pyramidal file the store of all levels would be a zarr group
        array = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
    return array, axes, recorded


def _open_zarr(path: Path) -> tuple[Any, str, bool]:
    """The store's array (full resolution of an OME-Zarr), its axes and whether NGFF metadata names them."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for non-zarr folders
        raise MovieFileError(f"{path} is not a zarr store ({type(exc).__name__}: {exc})") from exc
    axes = None
    if isinstance(node, zarr.Group):
        multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        if multiscales:  # OME-Zarr: full resolution is the first dataset; axes are named in the metadata
            meta = multiscales[0]
            axes = "".join(str(a["name"] if isinstance(a, dict) else a)[0].upper() for a in meta.get("axes", []))
            node = node[meta["datasets"][0]["path"]]
        else:
            arrays = [name for name, _ in node.arrays()]
            if len(arrays) != 1:
                raise MovieFileError(f"zarr group {path} holds {len(arrays)} arrays {arrays}; "
                                     "point to the one to track (e.g. store.zarr/0)")
            node = node[arrays[0]]
    return node, axes or NAPARI_DEFAULT_AXES.get(node.ndim, ""), bool(axes)


def _roles(axes: str, shape: tuple[int, ...], path: Path) -> tuple[str | None, str | None]:
    """(tracked axis, channel axis) of an axes string; refuses layouts with two axes to track along."""
    if len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        raise MovieFileError(f"axes {axes!r} of {path} must name Y and X once each")
    sizes = dict(zip(axes, shape))
    unknown = [a for a in axes if a not in TRACK_AXES + CHANNEL_AXES + "YX" and sizes[a] > 1]
    if unknown:
        raise MovieFileError(f"{path} has axes {axes} {tuple(shape)}; axis {unknown[0]!r} is not supported. "
                             "Pass --axes with letters from T, Z, Y, X, C")
    tracks = [a for a in axes if a in TRACK_AXES and sizes[a] > 1]
    channels = [a for a in axes if a in CHANNEL_AXES and sizes[a] > 1]
    if len(tracks) > 1:
        raise MovieFileError(f"{path} has axes {axes} {tuple(shape)}: more than one axis to track along "
                             f"({', '.join(tracks)}). Track one time point along Z or one Z plane over time: save "
                             "that sub-stack first")
    if len(channels) > 1:
        raise MovieFileError(f"{path} has two channel axes ({', '.join(channels)}) in {axes} {tuple(shape)}")
    track = tracks[0] if tracks else next((a for a in axes if a in TRACK_AXES), None)
    return track, (channels[0] if channels else None)
