"""The user's corrections in a Labels layer the engine writes: which objects on which frames the user has painted,
erased or filled since the engine last wrote (or synced) them there.

Qt-free. Edits are learnt from the layer's ``paint`` events (napari's brush, eraser, fill, polygon and
``data_setitem``), parsed by :mod:`.edit_detection`; a difference counts only where it differs from the writer's
record of that frame (see :meth:`UserCorrections.edited_frames` for the rules). Axis order is napari's: frames along
the tracked axis, then (row, col) = (y, x).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .edit_detection import edits_of
from .label_ids import as_ids, isin_ids
from .packed_planes import mask_grid, take_grid


class AllIds:
    """Stands for 'every id' in the per-frame set of ids whose state is known."""

    def __contains__(self, item: object) -> bool:
        return True

    def add(self, item: int) -> None:
        pass

    def update(self, items: Iterable[int]) -> None:
        pass

    def discard(self, item: int) -> None:
        # Forgetting one id does not make a frame that held no label at all hold one.
        pass


ALL_IDS = AllIds()


class UserCorrections:
    """The :class:`~napari_sam2.plugin.labels_writer.LabelsWriter`'s knowledge of the user's edits: learnt from the
    layer's paint events (and, while an undo group is open, from napari's staged atoms), compared with the writer's
    records. A mixin: the state (``_records``, ``_edits``, ``_found``, ``_taken``, ``_known``, ``_undo``) is the
    writer's, set up in its ``__init__``."""

    # ------------------------------------------------------------------ corrections

    def _on_paint(self, event: Any) -> None:
        if not self._writing:
            self._record_edits(getattr(event, "value", None))

    def _take_staged_edits(self) -> None:
        """Learn the user's edits staged in an open undo group (napari emits no paint event for them yet)."""
        atoms = self._undo.take_foreign()
        if atoms:
            self._record_edits(atoms)

    def _record_edits(self, item: Any) -> None:
        """Remember the user's edits in one history item (a list of atoms)."""
        try:
            edits = edits_of(item, self._shape, self.frame_axis, self.fixed_index)
        except Exception:  # noqa: BLE001 - an unknown history format must not break painting
            edits = None
        if edits is None:  # cannot tell what changed: every frame's state becomes unknown
            self._known.clear()
            return
        for t, edit in edits.items():
            if edit.ids:
                self._edits.setdefault(t, []).append(edit)

    def _on_data(self, event: Any = None) -> None:
        # layer.data was replaced: the records may no longer describe it.
        if tuple(int(n) for n in self.layer.data.shape) != self._shape:
            self._shape = tuple(int(n) for n in self.layer.data.shape)
            self._plane_shape = self._shape[-2:]
            self._records.clear()
            self._edits.clear()
            self._found.clear()
            self._taken.clear()
        self._known.clear()

    def edited_frames(
        self, obj_ids: Iterable[int], frames: Iterable[int] | None = None
    ) -> dict[int, dict[int, np.ndarray]]:
        """The user's corrections of the objects ``obj_ids``: ``{frame: {obj_id: bool mask (Y, X)}}``.

        A frame is reported when, for one of ``obj_ids``, the layer now differs from what the engine last wrote
        there (a pixel painted into the object, or erased from it); each reported object comes with its whole
        current mask on that frame (all False if the user erased it entirely). A frame the engine never wrote on
        counts as written empty, so an object painted there (a user prompt) is reported.

        Which differences count, with ``frames=None`` (the usual call):

        * differences in ids that a user edit still in effect touched (painted, or painted over) since the engine
          last wrote them on that frame -- edits are learnt from the layer's ``paint`` event (napari's brush,
          eraser, fill, polygon and ``data_setitem``); an edit the user has undone is no longer in effect, one
          redone is again;
        * differences on frames whose state the writer does not know: content that was in the layer before the
          writer was created, or after ``layer.data`` was replaced (found by reading those frames once);
        * **not** differences left by undoing (or redoing) the engine's own writes: napari emits no event for
          undo/redo, and the sensible reading of "undo the propagation" is "show the old result", not "the user
          drew the old result as corrections" (which would turn an undone first run into "object absent" prompts
          on every frame). A later stroke of an object on such a frame reports that object's whole current mask,
          as always;
        * **not** direct assignments to ``layer.data[...]`` (no event): pass ``frames`` after such writes.

        With ``frames`` given, exactly those frames are compared for every id of ``obj_ids``, whatever happened:
        any difference from the engine's last write is reported, undo included.

        The record stays as it is: a reported frame is reported again until :meth:`write_frame` or
        :meth:`mark_synced` updates it.
        """
        self._take_staged_edits()
        ids = as_ids(obj_ids)
        out: dict[int, dict[int, np.ndarray]] = {}
        if ids.size == 0:
            return out
        wanted = {int(i) for i in ids}
        candidates = range(self.n_frames) if frames is None else sorted({self._check_frame(t) for t in frames})
        for t in candidates:
            if frames is not None:
                current = self.read_frame(t)
                affected = self._compare(t, current, ids, [])
            else:
                current, affected = self._edited_on(t, wanted)
            if affected:
                out[t] = {i: current == i for i in affected}
        return out

    def edited_ids(self, t: int, obj_ids: Iterable[int]) -> set[int]:
        """The ids among ``obj_ids`` that the user has edited on frame ``t`` since the engine last wrote them there.

        The rules of :meth:`edited_frames` with ``frames=None`` (edits in effect, content of unknown origin; not
        undo of the engine's writes), looking at frame ``t`` only and without building masks: when nothing touched
        the frame it reads nothing, otherwise it compares that one frame. Meant to be called before every write of
        a frame, also during a propagation, so that the user's edits stay exactly as the user left them.
        """
        t = self._check_frame(t)
        wanted = {int(i) for i in as_ids(obj_ids)}
        if not wanted:
            return set()
        self._take_staged_edits()
        return set(self._edited_on(t, wanted)[1])

    def _edited_on(self, t: int, wanted: set[int]) -> tuple[np.ndarray | None, list[int]]:
        """Non-strict check of frame ``t``: (its plane, or None if not read; the ids of ``wanted`` that differ)."""
        known = self._known.get(t, set())
        unknown = [i for i in sorted(wanted) if i not in known]
        edits = self._edits.get(t, [])
        found = self._found.get(t, set()) | self._taken.get(t, set())
        if not unknown and not (wanted & found) and not any(wanted & edit.ids for edit in edits):
            return None, []
        current = self.read_frame(t)
        touched = set(found).union(*(edit.ids for edit in edits if edit.in_effect(current)))
        check = (set(unknown) | touched) & wanted
        if not check:
            return current, []
        return current, self._compare(t, current, np.asarray(sorted(check), dtype=np.int64), unknown)

    def _compare(self, t: int, current: np.ndarray, ids: np.ndarray, unknown: list[int]) -> list[int]:
        """The ids among ``ids`` whose pixels on frame ``t`` differ from the record; ``unknown`` ids become known."""
        packed = self._records.get(t)
        if packed is None and not current.any():
            # Nothing there and nothing written: every id's state on this frame is known (absent).
            self._known[t] = ALL_IDS
            return []
        cur_in = isin_ids(current, ids)
        if packed is None:
            affected = np.unique(current[cur_in])
        else:
            # Both are 0 off the grid of the record and of the tracked pixels now: compare on that grid.
            rows, cols, record = packed.on_grid(self._plane_shape, *mask_grid(cur_in))
            cur_t = np.where(take_grid(cur_in, rows, cols), take_grid(current, rows, cols), 0)
            rec_t = np.where(isin_ids(record, ids), record, 0)
            diff = cur_t != rec_t
            affected = np.union1d(cur_t[diff], rec_t[diff])
        taken = self._taken.get(t, set()) & {int(i) for i in ids}
        affected_ids = sorted({int(i) for i in affected if i != 0} | taken)
        known = self._known.setdefault(t, set())
        for i in unknown:  # scanned: absent ids are now known, present ones stay reported until synced
            known.add(i)
            if i in affected_ids:
                self._found.setdefault(t, set()).add(i)
        return affected_ids

    def mark_synced(self, t: int, obj_ids: Iterable[int] | None = None) -> None:
        """Accept the layer's current content of frame ``t`` for ``obj_ids`` as the engine's (e.g. after handing the
        user's masks to the engine as prompts); None means every id the writer tracks plus those the user touched."""
        t = self._check_frame(t)
        if obj_ids is None:
            edits = self._edits.get(t, [])
            obj_ids = self._tracked | self._found.get(t, set()) | set().union(*(edit.ids for edit in edits))
        ids = as_ids(obj_ids)
        if ids.size:
            current = self.read_frame(t)
            tracked = isin_ids(current, ids)
            rows, cols = mask_grid(tracked)
            labels = np.where(take_grid(tracked, rows, cols), take_grid(current, rows, cols), 0)
            self._store_record(t, ids, rows, cols, labels)
