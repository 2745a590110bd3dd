"""The engine's label images of the last frames written, so that a click re-renders only what it can change.

With hundreds of objects a frame's label image costs the engine time in proportion to the objects and the pixels they
cover (0.5 s for 500 cells on a 1024 x 1024 frame on two CPU cores), while a click changes one object's result on one
frame. :class:`FrameLabels` keeps the engine's label image of the few frames written last (by a click, a painted mask,
a propagation); a click on an object then needs the labels of every *other* object (its *background*) and that
object's new result, each only where they can differ from what is kept:

* the background differs from the kept labels only where the object won (its pixels there): that window, the box of
  those pixels, is rendered again without the object (``session.label_image(frame, window=..., obj_ids=...)``, whose
  cost follows the window and the objects that reach it). Once found, the background is kept with the labels, so that
  the next click on the same object needs no such window;
* the object can win only inside ``session.object_box`` (outside it its logits are <= 0). There, at each pixel, it
  wins exactly when it beats the background's winner, so only the object and the background's objects in that box
  are rendered (a label image of just those objects), and the object is drawn where it wins among them.

Every other object's results are as they were, so the labels equal ``session.label_image(frame)``; a frame not kept is
rendered whole (``FrameOutput.label_image``). What the plugin does with user-painted pixels is unchanged: the result
is a whole frame's engine labels, which :meth:`~napari_sam2.plugin.controller.TrackingController.apply` writes as
always.

Work methods keep the entries in the worker thread (one job at a time); an entry belongs to one session and is used
only with it. Whatever changes results other than a prompt for one object on one frame (a propagation, painted masks,
seeding, removing an object) must :meth:`FrameLabels.clear` first. Label images and boxes are (row, col) = (y, x);
kept arrays are shared with the writes that carry them and must not be changed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

KEPT_FRAMES = 3  # label images kept (each one or two (Y, X) arrays of the layer's dtype)

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), frame pixels, ends exclusive


@dataclass(frozen=True)
class _Entry:
    session: Any
    labels: np.ndarray  # the engine's labels of the frame
    without: int | None = None  # the object whose background is ``background``
    background: np.ndarray | None = None  # the labels of every object but ``without``


class FrameLabels:
    """The engine's label images of the last :data:`KEPT_FRAMES` frames written (see the module docstring)."""

    def __init__(self, kept_frames: int = KEPT_FRAMES) -> None:
        self._kept = kept_frames
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self.local_renders = 0  # clicks rendered in windows of a kept frame (tests and benchmarks read it)
        self.last_render = ""  # how the last click was rendered (for benchmarks)

    def clear(self) -> None:
        """Forget every label image (results changed on more than one object of a frame)."""
        self._entries.clear()

    def store(self, session: Any, frame: int, labels: np.ndarray) -> np.ndarray:
        """Keep ``labels``, the engine's current label image of ``frame`` in ``session``; returns it."""
        self._put(frame, _Entry(session, labels))
        return labels

    def after_prompt(self, session: Any, frame: int, obj_id: int, output: Any, dtype: np.dtype) -> np.ndarray:
        """The label image of ``frame`` after a prompt changed only ``obj_id`` there (``output``: the FrameOutput that
        the prompt call returned): drawn from the object's background where the frame's labels were kept, else the
        whole frame from ``output``."""
        entry = self._entries.get(frame)
        if (entry is None or entry.session is not session or entry.labels.dtype != dtype
                or obj_id > np.iinfo(dtype).max):  # (an id that does not fit: the write says so)
            self.last_render = "whole frame: its labels were not kept"
            return self.store(session, frame, output.label_image(dtype))
        if entry.without == obj_id:
            background, how = entry.background, "background kept"
        else:
            background, won = _background(session, frame, obj_id, entry.labels)
            how = f"background {_share(won, entry.labels)} (where object {obj_id} was)"
        labels, box = _with_object(session, frame, obj_id, background)
        self.local_renders += 1
        self.last_render = f"windows: {how}, object {_share(box, labels)} (where it can be)"
        self._put(frame, _Entry(session, labels, obj_id, background))
        return labels

    def _put(self, frame: int, entry: _Entry) -> None:
        self._entries.pop(frame, None)
        self._entries[frame] = entry
        while len(self._entries) > self._kept:
            self._entries.popitem(last=False)


def _background(session: Any, frame: int, obj_id: int, labels: np.ndarray) -> tuple[np.ndarray, Box | None]:
    """The labels of every object but ``obj_id`` from the frame's ``labels``: the same, but in the box of the object's
    pixels, rendered again without it; and that box (None: it had no pixel, ``labels`` is the background)."""
    box = _box_of(labels, obj_id)
    if box is None:
        return labels, None
    others = [i for i in session.obj_ids if i != obj_id]
    background = labels.copy()
    row0, col0, row1, col1 = box
    background[row0:row1, col0:col1] = session.label_image(frame, window=box, obj_ids=others)
    return background, box


def _with_object(session: Any, frame: int, obj_id: int, background: np.ndarray) -> tuple[np.ndarray, Box | None]:
    """``background`` with ``obj_id`` drawn where it beats the background's winner, and the box where it can.

    In that box every object of the background is at most as high as the pixel's background winner, so a label image
    of ``obj_id`` and those objects alone (ties to the earlier object, as everywhere) shows ``obj_id`` exactly where
    it beats that winner."""
    box = session.object_box(frame, obj_id)
    if box is None:
        return background, None
    row0, col0, row1, col1 = box
    under = background[row0:row1, col0:col1]
    rivals = np.unique(under)
    rivals = [obj_id, *(int(i) for i in rivals[rivals != 0])]
    drawn = session.label_image(frame, window=box, obj_ids=rivals)
    labels = background.copy()
    labels[row0:row1, col0:col1] = np.where(drawn == obj_id, labels.dtype.type(obj_id), under)
    return labels, box


def _share(box: Box | None, labels: np.ndarray) -> str:
    """``box`` and the part of the frame it covers, for :attr:`FrameLabels.last_render`."""
    if box is None:
        return "none"
    return f"{box} ({(box[2] - box[0]) * (box[3] - box[1]) / labels.size:.1%} of the frame)"


def _box_of(labels: np.ndarray, obj_id: int) -> Box | None:
    """The bounding box of the pixels of ``labels`` that hold ``obj_id`` (None: none)."""
    rows = np.flatnonzero((labels == obj_id).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((labels[rows[0]:rows[-1] + 1] == obj_id).any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
