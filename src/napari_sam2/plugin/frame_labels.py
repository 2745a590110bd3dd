"""The engine's label images of the last frames written, so that a click re-renders only what it can change.

With hundreds of objects a frame's label image costs the engine time in proportion to the objects (0.5 s for 500
cells on a 1024 x 1024 frame on two CPU cores), while a click changes one object. :class:`FrameLabels` keeps the
engine's label image of the few frames written last (by a click, a painted mask, a propagation); a click on an object
then needs the labels of every *other* object (its *background*) and that object's new logits:

* the object had no pixel in the kept labels (a new object, or one absent there): the kept labels are its background
  (it won nowhere, so the winner of every pixel was the winner among the others);
* the last click on that frame was on that object and went this way: its background is kept with the labels.

Where the object's new logits are > 0 it wins over the background's winner when its logit is higher (ties go to the
object earlier in ``session.obj_ids``, as ``labels_from_logits`` does), so only that object and the background's
objects under it are read, through ``session.frame_logits``. In every other case (an object that had pixels there, a
frame not kept, too many objects under the new mask) the whole frame comes from ``FrameOutput.label_image``. Either
way the labels equal ``labels_from_logits(*session.frame_logits(frame))``.

Work methods keep the entries in the worker thread (one job at a time); an entry belongs to one session and is used
only with it. Whatever changes results other than a click on one frame (a propagation, painted masks, seeding,
removing an object) must :meth:`FrameLabels.clear` first. Label images are (Y, X) = (row, col); kept arrays are
shared with the writes that carry them and must not be changed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

KEPT_FRAMES = 3  # label images kept (each one or two (Y, X) arrays of the layer's dtype)
# Objects under a clicked object's new mask up to which only those objects are read (each costs one object's (Y, X)
# logits, about 5 ms at 1024 x 1024 on two CPU cores), or up to a quarter of the frame's objects where that is more.
LOCAL_MAX_OBJECTS = 64
_READ_AT_ONCE = 8  # their logits are read this many objects at a time (each a (Y, X) float32 array)


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
        self.local_renders = 0  # clicks rendered from a background (tests and benchmarks read it)
        self.last_render = ""  # how the last click was rendered, and why (for benchmarks)

    def clear(self) -> None:
        """Forget every label image (results changed on more than one object of a frame)."""
        self._entries.clear()

    def store(self, session: Any, frame: int, labels: np.ndarray) -> np.ndarray:
        """Keep ``labels``, the engine's current label image of ``frame`` in ``session``; returns it."""
        self._put(frame, _Entry(session, labels))
        return labels

    def after_prompt(self, session: Any, frame: int, obj_id: int, output: Any, dtype: np.dtype) -> np.ndarray:
        """The label image of ``frame`` after a prompt changed ``obj_id`` there (``output``: the FrameOutput that the
        prompt call returned), rendered from the background where one is known, else from ``output``."""
        background, self.last_render = self._background(session, frame, obj_id, dtype)
        labels = None if background is None else _with_object(session, frame, obj_id, background)
        if labels is None:
            if background is not None:
                self.last_render = f"whole frame: too many objects under object {obj_id}"
            return self.store(session, frame, output.label_image(dtype))
        self.local_renders += 1
        self._put(frame, _Entry(session, labels, obj_id, background))
        return labels

    def _background(self, session: Any, frame: int, obj_id: int, dtype: np.dtype) -> tuple[np.ndarray | None, str]:
        """The labels of every object but ``obj_id`` on ``frame`` if known, and how they were found (or why not)."""
        entry = self._entries.get(frame)
        if (entry is None or entry.session is not session or entry.labels.dtype != dtype
                or obj_id > np.iinfo(dtype).max):  # (an id that does not fit: the write says so)
            return None, "whole frame: its labels were not kept"
        if entry.without == obj_id:
            return entry.background, "local: the object's background was kept"
        if not (entry.labels == obj_id).any():
            return entry.labels, "local: the object had no pixel there"
        return None, f"whole frame: object {obj_id} had pixels there"

    def _put(self, frame: int, entry: _Entry) -> None:
        self._entries.pop(frame, None)
        self._entries[frame] = entry
        while len(self._entries) > self._kept:
            self._entries.popitem(last=False)


def _with_object(session: Any, frame: int, obj_id: int, background: np.ndarray) -> np.ndarray | None:
    """``background`` with ``obj_id`` drawn where its logit is > 0 and beats the background's winner; None when more
    objects lie under it than :data:`LOCAL_MAX_OBJECTS` and a quarter of all (reading them costs more than the whole
    frame)."""
    _, focus = session.frame_logits(frame, [obj_id])
    inside = focus[0] > 0
    labels = background.copy()
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return labels
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    under, wins, logit = background[box], inside[box], focus[0][box]
    others = np.unique(under[wins])
    others = others[others != 0]
    if others.size > max(LOCAL_MAX_OBJECTS, len(session.obj_ids) // 4):
        return None
    order = {i: n for n, i in enumerate(session.obj_ids)}
    for start in range(0, others.size, _READ_AT_ONCE):
        chunk = others[start:start + _READ_AT_ONCE].tolist()
        _, their = session.frame_logits(frame, chunk)
        for other, other_logit in zip(chunk, their, strict=True):
            theirs = other_logit[box]
            beats = logit >= theirs if order[obj_id] < order[other] else logit > theirs
            wins &= (under != other) | beats
    labels[box] = np.where(wins, labels.dtype.type(obj_id), under)
    return labels
