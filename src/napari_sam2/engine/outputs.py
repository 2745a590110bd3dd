"""What the session returns for a frame: ``(frame, obj_ids, logits)``, computed only as far as it is read.

With hundreds of objects the dense logits cost objects x pixels (2 GB for 500 objects on a 1024 x 1024
frame), so a :class:`FrameOutput` keeps the frame's results as stored and builds the dense array only when
``logits`` is read; :meth:`FrameOutput.label_image` gives the frame's labels without it (what the plugin,
the CLI and exports use). Axes follow napari: logits are (n_objects, Y, X), labels (Y, X) = (row, col).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from .postprocess import labels_from_logits

_REPR_OBJECTS = 6  # objects whose area a repr lists before "..."


class FrameResults(Protocol):
    """One frame's stored results of ``n`` objects, read on demand (see ``ModelRuntime.frame_results``)."""

    shape: tuple[int, int, int]  # (n, Y, X) of the dense logits

    def logits(self, rows: list[int] | None = None) -> np.ndarray:
        """float32 (len(rows), Y, X) logits of the objects at ``rows`` (all when None)."""

    def label_image(self, obj_ids: list[int], dtype: np.dtype) -> np.ndarray:
        """(Y, X) labels: the id of the object with the highest logit above 0, else 0."""


def default_label_dtype(obj_ids: list[int]) -> np.dtype:
    """uint16 while every object id fits, else uint32 (what TIFF and napari handle well)."""
    return np.dtype(np.uint16 if max(obj_ids, default=0) <= np.iinfo(np.uint16).max else np.uint32)


class FrameOutput:
    """One frame's result: returned by ``add_points`` / ``add_box`` / ``add_mask`` / ``clear_prompts`` and
    yielded by ``propagate``. Unpacks and indexes as the tuple ``(frame, obj_ids, logits)``.

    ``frame`` is the T index; ``obj_ids`` the object ids in the session's order; ``logits`` float32
    (n_objects, Y, X) at the frame's resolution, one row per id (> 0 inside the object; -1024 where an
    object has no result), computed on first read (objects x pixels: read :meth:`label_image` instead
    when only the labels are needed). The repr shows the shape and the first objects' areas in pixels.

    Build one from dense ``logits``, or from a frame's stored ``results`` (a :class:`FrameResults`).
    ``divisions``: the division proposals (:class:`~napari_sam2.engine.divisions.DivisionProposal`) that
    ``propagate`` made on this frame (empty elsewhere).
    """

    __slots__ = ("_logits", "_results", "divisions", "frame", "obj_ids")

    def __init__(self, frame: int, obj_ids: list[int], logits: np.ndarray | None = None, *,
                 results: FrameResults | None = None, divisions: tuple[Any, ...] = ()) -> None:
        if (logits is None) == (results is None):
            raise TypeError("FrameOutput takes either dense logits or stored results")
        self.divisions = tuple(divisions)
        self.frame = frame
        self.obj_ids = obj_ids
        self._logits = logits
        self._results = results

    @property
    def logits(self) -> np.ndarray:
        """float32 (n_objects, Y, X) logits, built on the first read and kept."""
        if self._logits is None:
            self._logits = self._results.logits()
        return self._logits

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_objects, Y, X) of :attr:`logits`, without computing them."""
        return tuple(self._logits.shape) if self._logits is not None else tuple(self._results.shape)

    def label_image(self, dtype: np.dtype | type | None = None) -> np.ndarray:
        """(Y, X) = (row, col) label image: the id of the object with the highest logit above 0, 0 elsewhere
        (ties to the earlier object), as ``labels_from_logits(obj_ids, logits, dtype=dtype)``, without the
        dense logits when they were not read. ``dtype`` defaults to uint16 (uint32 for ids above 65535)."""
        dtype = default_label_dtype(self.obj_ids) if dtype is None else np.dtype(dtype)
        if self._logits is not None:
            return labels_from_logits(self.obj_ids, self.logits, dtype=dtype)
        return self._results.label_image(self.obj_ids, dtype)

    def areas(self, obj_ids: list[int] | None = None) -> dict[int, int]:
        """Pixels inside each object (logit > 0), by object id (``obj_ids``: some of them, default all).
        Reads one object's logits at a time when the dense logits were not built."""
        wanted = self.obj_ids if obj_ids is None else obj_ids
        rows = [self.obj_ids.index(obj_id) for obj_id in wanted]
        if self._logits is not None:
            return {obj_id: int(np.count_nonzero(self._logits[row] > 0)) for obj_id, row in zip(wanted, rows)}
        return {obj_id: int(np.count_nonzero(self._results.logits([row])[0] > 0))
                for obj_id, row in zip(wanted, rows)}

    # ------------------------------------------------------------------ the tuple (frame, obj_ids, logits)
    def __iter__(self) -> Iterator[Any]:
        yield self.frame
        yield self.obj_ids
        yield self.logits

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(3)[index])
        return (lambda: self.frame, lambda: self.obj_ids, lambda: self.logits)[index]()

    def __repr__(self) -> str:
        shown = self.areas(self.obj_ids[:_REPR_OBJECTS])
        areas = [f"{obj_id}: {area}" for obj_id, area in shown.items()]
        hidden = len(self.obj_ids) - len(shown)
        if hidden > 0:
            areas.append(f"... {hidden} more")
        ids = self.obj_ids if not hidden else f"<{len(self.obj_ids)} ids>"
        shape = "x".join(str(n) for n in self.shape)
        return (f"FrameOutput(frame={self.frame}, obj_ids={ids}, logits=<{shape} float32>, "
                f"area_px={{{', '.join(areas)}}})")
