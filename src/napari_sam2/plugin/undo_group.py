"""Grouping many writes into a napari Labels layer into one undo step, also across Qt event-loop iterations.

napari groups history atoms into one undo item while ``layer._block_history`` is set. The public way to set it is
the ``Labels.block_history()`` context manager; ``_begin_stroke``/``_commit_stroke`` do the same for brush strokes
but are private. A propagation run writes frames across many Qt event-loop iterations, which no ``with`` block can
span, so :meth:`UndoGroup.begin`/:meth:`UndoGroup.end` enter and exit that same public context manager by hand
(``__enter__`` on begin, ``__exit__`` on end): the flag simply stays set in between.

While the flag is set napari stages *every* edit, the user's too (a fill, a brush dab, a script's
``data_setitem``), and emits the layer's paint event only when the group is committed, for all of its atoms at once.
So that the user's edits made meanwhile are known before the next frame is written, the group reads napari's staged
atoms as they come (:meth:`UndoGroup.take_foreign`) and tells them from the writer's own (:meth:`UndoGroup.own`).
napari has no public way to see staged atoms: ``Labels._staged_history`` is read (never changed); without it (a
future napari) edits made during a group are learnt only from its commit event, which is then read like any other.

Caveats, inherent to napari's single staging list: a brush stroke the user finishes while a group is open commits
the group's atoms so far together with the stroke and clears the flag (``_commit_stroke``), so the rest of the run
gives one undo step per frame; an undo pressed while the group is open undoes the step before the run. The widget
should therefore keep the layer in pan_zoom mode during a run -- not set ``layer.editable = False``, which makes
napari clear the layer's whole undo history. The group is always committed, also when the run fails, so whatever
was written can be undone. Qt-free.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


class UndoGroup:
    """Nesting begin/end of one undo step on ``layer``; committing emits the layer's paint event for the group, inside
    ``around_commit()`` (a context manager factory: the writer's guard, as the user's atoms were taken before)."""

    def __init__(self, layer: Any, around_commit: Callable[[], AbstractContextManager[Any]]) -> None:
        self._layer = layer
        self._around_commit = around_commit
        self._depth = 0
        self._cm: Any = None
        self._staged: list | None = None  # napari's staging list of the open group, as last seen
        self._seen = 0  # how many of its atoms have been taken (the writer's or the user's)

    def _read_staged(self) -> list | None:
        """napari's staging list, or None where it cannot be read. napari 0.9 warns (FutureWarning) on a plugin's
        access to private attributes; this read is deliberate (see the module docstring) and the warning would
        only alarm users, so it is silenced here, for this one read."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            staged = getattr(self._layer, "_staged_history", None)
        return staged if isinstance(staged, list) else None

    def _staged_now(self) -> list | None:
        staged = self._read_staged() if self.active else None
        if staged is None:
            return None
        if staged is not self._staged:  # a new list: napari committed (e.g. a brush stroke ended) and started anew
            self._staged, self._seen = staged, 0
        return staged

    def take_foreign(self) -> list:
        """Atoms staged in the open group by someone other than the writer (the user) since the last call."""
        staged = self._staged_now()
        if staged is None:
            return []
        atoms, self._seen = staged[self._seen:], len(staged)
        return atoms

    @contextmanager
    def own(self) -> Iterator[None]:
        """Atoms staged inside this block are the writer's (take the user's with :meth:`take_foreign` first)."""
        try:
            yield
        finally:
            staged = self._staged_now()
            if staged is not None:
                self._seen = len(staged)

    @property
    def active(self) -> bool:
        """True between :meth:`begin` and the matching :meth:`end`."""
        return self._depth > 0

    def begin(self) -> None:
        """Start collecting writes into one undo step (may span Qt event-loop iterations); calls nest."""
        if self._depth == 0:
            cm = self._layer.block_history()
            cm.__enter__()
            self._cm = cm
        self._depth += 1

    def end(self) -> None:
        """Commit the writes since the outermost :meth:`begin` as one undo step."""
        if self._depth == 0:
            raise RuntimeError("end_undo_group() without begin_undo_group()")
        self._depth -= 1
        if self._depth == 0:
            cm, self._cm = self._cm, None
            if self._read_staged() is None:  # the user's atoms could not be taken: the writer reads the commit event
                cm.__exit__(None, None, None)
                return
            with self._around_commit():
                cm.__exit__(None, None, None)

    @contextmanager
    def one_step(self) -> Iterator[None]:
        """``with group.one_step(): ...`` -- all writes inside become one undo step (also on an error)."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    def close(self) -> None:
        """Commit an open group, however deeply nested."""
        while self._depth:
            self.end()
