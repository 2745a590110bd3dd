"""Grouping many writes into a napari Labels layer into one undo step, also across Qt event-loop iterations.

napari groups history atoms into one undo item while ``layer._block_history`` is set. The public way to set it is
the ``Labels.block_history()`` context manager; ``_begin_stroke``/``_commit_stroke`` do the same for brush strokes
but are private. A propagation run writes frames across many Qt event-loop iterations, which no ``with`` block can
span, so :meth:`UndoGroup.begin`/:meth:`UndoGroup.end` enter and exit that same public context manager by hand
(``__enter__`` on begin, ``__exit__`` on end): the flag simply stays set in between.

While the flag is set napari stages *every* edit, the user's too (a fill, a script's ``data_setitem``), and emits
the layer's paint event only when the group is committed. So the writer cannot learn of the user's edits from paint
events while a group is open: it compares the frame with its record before writing it (see
``LabelsWriter.edited_ids``), and the commit's paint event, which holds the engine's atoms and the user's, is read
like any other (the engine's atoms match the record and are dropped there).

Caveats, inherent to napari's single staging list: a brush stroke the user finishes while a group is open commits
the group's atoms so far together with the stroke and clears the flag (``_commit_stroke``), so the rest of the run
gives one undo step per frame; an undo pressed while the group is open undoes the step before the run. The widget
should therefore keep the layer in pan_zoom mode during a run -- not set ``layer.editable = False``, which makes
napari clear the layer's whole undo history. The group is always committed, also when the run fails, so whatever
was written can be undone. Qt-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


class UndoGroup:
    """Nesting begin/end of one undo step on ``layer``; committing emits the layer's paint event for the group, inside
    ``around_commit()`` (a context manager factory: the writer reads that event once the data is in the layer)."""

    def __init__(self, layer: Any, around_commit: Callable[[], AbstractContextManager[Any]]) -> None:
        self._layer = layer
        self._around_commit = around_commit
        self._depth = 0
        self._cm: Any = None

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
