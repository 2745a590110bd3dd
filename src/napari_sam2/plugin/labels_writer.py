"""Writing tracking results into a napari Labels layer, and finding the user's corrections.

Qt-free (it imports no Qt widget and nothing of torch) so that it can be tested on its own and used from scripts.

The engine (:class:`napari_sam2.TrackingSession`) produces, per frame, a (Y, X) label image in which each tracked
object has its id and the rest is 0 (:func:`napari_sam2.labels_from_logits`). :class:`LabelsWriter` puts such a
label image into one (Y, X) plane of a Labels layer without disturbing anything the engine does not own:

* **scoped writes** -- only pixels that hold 0 or one of the tracked ids may change; every other label (a
  hand-drawn label 9, a segmentation of other cells) is left exactly as it is, also where a tracked object's new
  mask covers it. A pixel that held a tracked id the new result no longer has there becomes 0;
* **undo** -- every write goes through the public ``Labels.data_setitem`` so it lands in napari's undo history
  (one frame = one undo step, or a whole propagation run = one undo step, see
  :meth:`LabelsWriter.one_undo_step` / :meth:`LabelsWriter.begin_undo_group`) and the displayed slice is updated;
* **corrections** -- the writer remembers (compressed) what it last wrote on each frame for the tracked ids and
  reports where the user has since painted or erased a tracked object (:meth:`LabelsWriter.edited_frames`, or
  :meth:`LabelsWriter.edited_ids` for one frame, cheap enough to ask before every write);
* **removal** -- :meth:`LabelsWriter.clear_object` erases an object from the tracked plane in one undo step.

The pieces live apart: the compressed records in ``packed_planes``, the paint-event parsing in ``edit_detection``,
the undo grouping in ``undo_group``, the corrections (what the user changed since the
engine wrote) in ``user_corrections``, id lists and ``next_free_label`` in ``label_ids``.

Axis order follows napari: the layer is (T, Y, X), (T, Z, Y, X) with one Z plane tracked over T, (Z, Y, X) tracked
along Z, or any other order whose last two axes are (Y, X); pixel coordinates are (row, col) = (y, x).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np

from .edit_detection import UserEdit
from .label_ids import as_ids, isin_ids, next_free_label
from .packed_planes import PackedPlane, grid_nonzero, mask_grid, pack_grid, regrid, take_grid, unpack_plane
from .undo_group import UndoGroup
from .user_corrections import AllIds, UserCorrections

__all__ = ["LabelsWriter", "TrackedPlanes", "next_free_label"]




class LabelsWriter(UserCorrections):
    """Writes the engine's per-frame label images into one napari Labels layer and reports the user's corrections.

    Parameters
    ----------
    layer
        The ``napari.layers.Labels`` layer (single scale) to write into. Its last two axes are (Y, X).
    frame_axis
        The axis that is tracked: 0 for (T, Y, X), (T, Z, Y, X) or (Z, Y, X) tracked along Z. Negative values count
        from the end.
    fixed_index
        ``{axis: index}`` for every leading axis other than ``frame_axis``: for a (T, Z, Y, X) layer in which plane
        z is tracked over T, ``frame_axis=0, fixed_index={1: z}``.

    ``frame_slice(t)`` is the key of the (Y, X) plane of frame ``t``. The writer listens to the layer's ``paint``
    event (emitted by napari's brush, fill, polygon and ``data_setitem``) to learn which frames and ids the user
    has touched; see :meth:`edited_frames` for the rules. Call :meth:`close` to stop listening.
    """

    def __init__(self, layer: Any, frame_axis: int = 0, fixed_index: Mapping[int, int] | None = None):
        if getattr(layer, "multiscale", False):
            raise ValueError("a multiscale Labels layer cannot be edited; convert it to a single-scale layer first")
        self.layer = layer
        shape = tuple(int(n) for n in layer.data.shape)
        ndim = len(shape)
        if ndim < 3:
            raise ValueError(f"the Labels layer must have a frame axis before (Y, X); its shape is {shape}")
        if not -ndim <= frame_axis < ndim - 2:
            raise ValueError(f"frame_axis {frame_axis} is not a leading axis of a layer of shape {shape}")
        self.frame_axis = frame_axis % ndim
        fixed: dict[int, int] = {}
        for axis, index in (fixed_index or {}).items():
            axis = operator.index(axis)
            if not -ndim <= axis < ndim - 2 or axis % ndim == self.frame_axis:
                raise ValueError(f"fixed_index axis {axis} is not a leading axis other than the frame axis")
            index = operator.index(index)
            if not 0 <= index < shape[axis % ndim]:
                raise ValueError(f"fixed_index {index} is out of range for axis {axis} of length {shape[axis % ndim]}")
            fixed[axis % ndim] = index
        missing = [ax for ax in range(ndim - 2) if ax != self.frame_axis and ax not in fixed]
        if missing:
            raise ValueError(f"fixed_index must give an index for every leading axis other than the frame axis; "
                             f"missing axes {missing} of a layer of shape {shape}")
        self.fixed_index = fixed
        self._shape = shape
        self._plane_shape = shape[-2:]
        # What the engine last wrote per frame, restricted to the ids it wrote there (see _store_record).
        self._records: dict[int, PackedPlane] = {}
        # Per frame: the user's edits (paint events) of ids the engine has not written/synced there since.
        self._edits: dict[int, list[UserEdit]] = {}
        # Per frame: ids found in content of unknown origin (before the writer, or after layer.data was replaced).
        self._found: dict[int, set[int]] = {}
        # Per frame: ids whose recorded pixels a write of other ids took over. The layer no longer held them there,
        # and the engine did not remove them: the user did (e.g. painted another object over them). Their record
        # cannot show that any more, so they are reported as edited until the engine writes or syncs them.
        self._taken: dict[int, set[int]] = {}
        # Per frame: ids whose state on that frame is known (written, synced, or scanned and found absent).
        # A frame missing here is entirely unknown: whatever was there before the writer existed may be a prompt.
        self._known: dict[int, set[int] | AllIds] = {}
        self._tracked: set[int] = set()
        self._writing = 0
        self._undo = UndoGroup(layer, self._writing_guard)
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)

    # ------------------------------------------------------------------ geometry

    @property
    def n_frames(self) -> int:
        """Length of the frame axis."""
        return self._shape[self.frame_axis]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(Y, X) shape of one frame."""
        return self._plane_shape

    def frame_slice(self, t: int) -> tuple[int | slice, ...]:
        """Key into ``layer.data`` of the (Y, X) plane of frame ``t``."""
        t = self._check_frame(t)
        key: list[int | slice] = []
        for axis in range(len(self._shape) - 2):
            key.append(t if axis == self.frame_axis else self.fixed_index[axis])
        return (*key, slice(None), slice(None))

    def read_frame(self, t: int) -> np.ndarray:
        """The current (Y, X) plane of frame ``t`` as a numpy array (a view for a numpy layer: do not modify)."""
        return np.asarray(self.layer.data[self.frame_slice(t)])

    def _check_frame(self, t: int) -> int:
        t = operator.index(t)
        if not 0 <= t < self.n_frames:
            raise IndexError(f"frame {t} is out of range: the frame axis has {self.n_frames} frames")
        return t

    def _full_indices(self, t: int, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, ...]:
        lead = [
            np.full(ys.size, t if axis == self.frame_axis else self.fixed_index[axis], dtype=np.intp)
            for axis in range(len(self._shape) - 2)
        ]
        return (*lead, ys.astype(np.intp, copy=False), xs.astype(np.intp, copy=False))

    def check_ids_fit(self, obj_ids: Iterable[int]) -> None:
        """Raise ValueError unless every id in ``obj_ids`` fits the layer's dtype (uint8 cannot hold 300)."""
        ids = as_ids(obj_ids)
        dtype = np.dtype(self.layer.data.dtype)
        if not np.issubdtype(dtype, np.integer):
            raise ValueError(f"the Labels layer has dtype {dtype}, not an integer dtype")
        if ids.size and int(ids[-1]) > np.iinfo(dtype).max:
            raise ValueError(f"object id {int(ids[-1])} does not fit the Labels layer's dtype {dtype} "
                             f"(largest {np.iinfo(dtype).max}); use a layer with a wider dtype, e.g. int32")

    # ------------------------------------------------------------------ writing

    @property
    def is_writing(self) -> bool:
        """True while the writer itself changes the layer (so that listeners can tell its edits from the user's)."""
        return self._writing > 0

    @contextmanager
    def _writing_guard(self) -> Iterator[None]:
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1

    def write_frame(self, t: int, obj_ids: Iterable[int], frame_labels: np.ndarray, refresh: bool = True) -> int:
        """Write the engine's (Y, X) label image of frame ``t`` for the objects ``obj_ids``; returns pixels changed.

        ``frame_labels`` holds 0 or an id of ``obj_ids`` per pixel (row, col) = (y, x), e.g. from
        :func:`napari_sam2.labels_from_logits`. Only pixels that currently hold 0 or one of ``obj_ids`` change:
        they take the value of ``frame_labels`` (so a tracked id the result no longer has there becomes 0). Any
        other label stays as it is, also where a new mask covers it. The change is one ``Labels.data_setitem``
        call: one undo step, or part of the open undo group (:meth:`begin_undo_group`).

        Raises ValueError, before anything is written, when an id does not fit the layer's dtype, when
        ``frame_labels`` has the wrong shape or holds a value that is neither 0 nor in ``obj_ids``.
        """
        t = self._check_frame(t)
        ids = as_ids(obj_ids)
        self.check_ids_fit(ids)
        new = np.asarray(frame_labels)
        if new.shape != self._plane_shape:
            raise ValueError(f"frame_labels has shape {new.shape}, the layer's (Y, X) planes are {self._plane_shape}")
        if new.dtype == bool or not np.issubdtype(new.dtype, np.integer):
            raise ValueError(f"frame_labels must be an integer label image, got dtype {new.dtype}")
        new_rows, new_cols = mask_grid(new != 0)
        labelled = take_grid(new, new_rows, new_cols)  # every non-zero pixel of new, in raster order
        new_tracked = isin_ids(labelled, ids)
        if np.count_nonzero(new_tracked) != np.count_nonzero(labelled):  # ids are >= 1: tracked implies non-zero
            stray = labelled[(labelled != 0) & ~new_tracked]
            raise ValueError(f"frame_labels holds label {int(stray[0])}, which is not in obj_ids")

        # Only pixels that hold a tracked id now, or a non-zero label in ``new``, can change; they all lie on the
        # grid of the rows and columns that hold such a pixel (a few cells: a small part of the frame), so the
        # comparison, np.nonzero and the record work on that grid. All is computed before writing: for a numpy
        # layer ``current`` is a view that the write changes.
        current = self.read_frame(t)
        current_tracked = isin_ids(current, ids)
        tracked_rows, tracked_cols = mask_grid(current_tracked)
        rows, cols = np.union1d(new_rows, tracked_rows), np.union1d(new_cols, tracked_cols)
        new_g, current_g = take_grid(new, rows, cols), take_grid(current, rows, cols)
        writable = take_grid(current_tracked, rows, cols)
        writable |= current_g == 0
        changed = current_g != new_g
        changed &= writable
        gy, gx = np.nonzero(changed)
        # After the write the tracked ids sit exactly where the new labels are and the pixel was writable (where a
        # writable pixel did not change, it already held the new label). Every non-zero label of new is tracked.
        written = np.where((new_g != 0) & writable, new_g, 0)
        if gy.size:
            values = new_g[gy, gx].astype(self.layer.data.dtype, copy=False)
            self._take_staged_edits()  # the user's edits staged so far are theirs, what this write stages is ours
            with self._writing_guard(), self._undo.own():
                self.layer.data_setitem(self._full_indices(t, rows[gy], cols[gx]), values, refresh=refresh)
        self._store_record(t, ids, rows, cols, written)
        return int(gy.size)

    def _store_record(self, t: int, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, written: np.ndarray) -> None:
        """Record that frame ``t`` holds, for ``ids``, the labels ``written`` on the grid ``rows`` x ``cols`` (0
        elsewhere); the record of other ids stays."""
        old = self._records.get(t)
        id_list = [int(i) for i in ids]
        record_ids = set(id_list)
        if old is not None and not old.ids <= record_ids:
            all_rows, all_cols, previous = old.on_grid(self._plane_shape, rows, cols)
            written = regrid(written, rows, cols, all_rows, all_cols)
            taken = previous[(written != 0) & (previous != 0) & ~isin_ids(previous, ids)]
            if taken.size:
                self._taken.setdefault(t, set()).update(int(i) for i in np.unique(taken))
            written = np.where(written != 0, written, np.where(isin_ids(previous, ids), 0, previous))
            rows, cols = all_rows, all_cols
            record_ids |= old.ids
        packed = pack_grid(self._plane_shape, rows, cols, written, record_ids)
        if packed is None:
            self._records.pop(t, None)
        else:
            self._records[t] = packed
        self._tracked.update(id_list)
        self._drop_ids(t, id_list)
        self._known.setdefault(t, set()).update(id_list)

    def _drop_ids(self, t: int, ids: Iterable[int]) -> None:
        """The user's edits and found content of ``ids`` on frame ``t`` are synced (or forgotten)."""
        ids = set(ids)
        for per_frame in (self._found, self._taken):
            present = per_frame.get(t)
            if present is not None:
                present -= ids
                if not present:
                    del per_frame[t]
        edits = self._edits.get(t)
        if edits is not None:
            for edit in edits:
                edit.ids -= ids
            edits[:] = [edit for edit in edits if edit.ids]
            if not edits:
                del self._edits[t]

    # ------------------------------------------------------------------ undo grouping (see undo_group.py)

    @property
    def in_undo_group(self) -> bool:
        """True between :meth:`begin_undo_group` and the matching :meth:`end_undo_group`."""
        return self._undo.active

    def begin_undo_group(self) -> None:
        """Start collecting writes into one undo step (may span Qt event-loop iterations); calls nest."""
        self._undo.begin()

    def end_undo_group(self) -> None:
        """Commit the writes since the outermost :meth:`begin_undo_group` as one undo step (the user's edits staged in
        it are remembered first; the commit's paint event is then the writer's)."""
        self._take_staged_edits()
        self._undo.end()

    def one_undo_step(self) -> AbstractContextManager[None]:
        """``with writer.one_undo_step(): ...`` -- all writes inside become one undo step (also on an error)."""
        return self._undo.one_step()

    def forget(self, obj_id: int) -> None:
        """Drop everything the writer remembers about ``obj_id`` (a removed object). The layer is not changed."""
        obj_id = operator.index(obj_id)
        self._tracked.discard(obj_id)
        for t, packed in list(self._records.items()):
            if obj_id not in packed.ids:
                continue
            rows, cols, labels = packed.grid(self._plane_shape)
            labels = np.where(labels == obj_id, 0, labels)
            repacked = pack_grid(self._plane_shape, rows, cols, labels, packed.ids - {obj_id})
            if repacked is None:
                del self._records[t]
            else:
                self._records[t] = repacked
        for t in set(self._edits) | set(self._found) | set(self._taken):
            self._drop_ids(t, [obj_id])
        for known in self._known.values():
            known.discard(obj_id)

    def clear_object(self, obj_id: int) -> list[int]:
        """Set every pixel of ``obj_id`` on the tracked plane of every frame to 0, then :meth:`forget` the id.

        Only the tracked (Y, X) planes are read and changed (another Z plane of a (T, Z, Y, X) layer keeps its
        pixels of the same id), one frame at a time. All frames change in ONE undo step (part of an open undo
        group, if any), written as the writer's own write, so it is not taken for a user edit. Returns the frames
        that changed.
        """
        obj_id = int(as_ids([obj_id])[0])
        zero = np.dtype(self.layer.data.dtype).type(0)
        changed: list[int] = []
        # The guard is entered first, so that it also covers the commit of the undo step (its paint event).
        with self._writing_guard(), self.one_undo_step():
            for t in range(self.n_frames):
                ys, xs = grid_nonzero(self.read_frame(t) == obj_id)
                if ys.size:
                    with self._undo.own():
                        self.layer.data_setitem(self._full_indices(t, ys, xs), zero)
                    changed.append(t)
        self.forget(obj_id)
        return changed

    def reset(self) -> None:
        """Forget all records: every frame counts as never written and of unknown content."""
        self._records.clear()
        self._edits.clear()
        self._found.clear()
        self._taken.clear()
        self._known.clear()
        self._tracked.clear()

    # ------------------------------------------------------------------ introspection

    @property
    def tracked_ids(self) -> set[int]:
        """Ids the writer has written or synced (and not forgotten)."""
        return set(self._tracked)

    @property
    def written_frames(self) -> list[int]:
        """Frames whose record holds at least one tracked pixel."""
        return sorted(self._records)

    def recorded_frame(self, t: int) -> np.ndarray:
        """The engine's last write on frame ``t`` as a (Y, X) label plane (0 where it wrote nothing)."""
        return unpack_plane(self._records.get(self._check_frame(t)), self._plane_shape)

    def tracked_planes(self) -> TrackedPlanes:
        """The tracked (Y, X) plane of every frame as a lazy, read-only (T, Y, X) stack (for the exporters)."""
        return TrackedPlanes(self)

    def record_nbytes(self) -> int:
        """Approximate memory held by the records of all frames."""
        return sum(p.nbytes for p in self._records.values())

    def close(self) -> None:
        """Stop listening to the layer's events (an open undo group is committed)."""
        self._undo.close()
        for emitter, callback in ((self.layer.events.paint, self._on_paint), (self.layer.events.data, self._on_data)):
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass


class TrackedPlanes:
    """(T, Y, X) read-only view of a Labels layer's tracked plane, one frame at a time (copies, safe to keep)."""

    def __init__(self, writer: LabelsWriter) -> None:
        self._writer = writer
        self.shape = (writer.n_frames, *writer.plane_shape)
        self.dtype = np.dtype(writer.layer.data.dtype)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> np.ndarray:
        return np.array(self._writer.read_frame(t))
