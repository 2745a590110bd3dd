"""Many new objects on one frame at once: everything SAM 2 finds there (``session.segment_all``), or every label of a
label image that is not an object yet (``session.add_labels``). Work for the widget's job runner (worker thread),
Qt-free.

All or nothing: a :class:`Seeding` records the new objects as soon as the session has them, and until the GUI thread
has written and listed them (:attr:`Seeding.taken`) they can be taken out again (:meth:`Seeding.discard`), which the
widget does for a job that was cancelled, failed or retired. How cancel works:

* segment all: the engine calls the progress callback after each batch of point prompts; once cancelled, the callback
  raises :class:`Stopped`, so the engine stops before it seeds anything. A cancel that comes while the found masks are
  being seeded (the engine cannot stop there) discards them once seeding has finished;
* seed from labels: labels are seeded a batch at a time (progress after each batch); a cancel stops before the next
  batch and the batches already seeded are discarded.

New ids never collide with labels already in the Labels layer: segment all numbers the new objects from ``first_id`` on
(``session.segment_all(..., first_id=...)``), which the widget takes above every label of the layer, every object of
the session and every listed object. Label images are (Y, X) = (row, col).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .controller import FrameWrite, TrackingController

LABEL_BATCH = 32  # labels given to add_labels at a time (progress and cancel between batches)

Progress = Callable[[int, int], None]
StopCheck = Callable[[], bool]


class Stopped(Exception):
    """Raised from the engine's progress callback once the job is cancelled (before anything is seeded)."""


@dataclass
class Seeding:
    """One job's new objects in ``session`` on ``frame``."""

    session: Any
    frame: int
    new_ids: list[int] = field(default_factory=list)
    taken: bool = False  # written into the Labels layer and listed (GUI thread)

    def discard(self, controller: TrackingController) -> list[int]:
        """Take the new objects out of the session again (GUI thread, no job running); returns their ids."""
        gone = [i for i in self.new_ids if i in self.session.obj_ids]
        for obj_id in gone:
            self.session.remove_object(obj_id)
        if gone:
            controller.frame_labels.clear()
        self.new_ids = []
        return gone


def segment_frame(controller: TrackingController, seeding: Seeding, first_id: int, dtype: np.dtype,
                  report: Progress, should_stop: StopCheck, options: Any = None) -> FrameWrite | None:
    """Segment everything on ``seeding.frame`` and seed each mask as a new object with ids from ``first_id`` on (or
    above the session's largest id, should an object have come since); the frame's labels to write, or None when
    stopped (then nothing was seeded, or :meth:`Seeding.discard` takes it out)."""
    session, frame = seeding.session, seeding.frame

    def progress(done: int, total: int) -> None:
        if should_stop():
            raise Stopped
        report(done, total)

    controller.frame_labels.clear()
    first_id = max(first_id, max(session.obj_ids, default=0) + 1)  # (an object added since the job was planned)
    try:
        seeding.new_ids = list(session.segment_all(frame, options, progress=progress, first_id=first_id))
    except Stopped:
        return None
    if should_stop():
        return None
    return controller.frame_write(session, frame, None, dtype)


def new_labels(image: np.ndarray, session: Any) -> list[int]:
    """The labels of a (Y, X) label image that are not objects of ``session``, ascending."""
    present = np.unique(np.asarray(image))
    known = set(session.obj_ids)
    return [int(i) for i in present.tolist() if i > 0 and int(i) not in known]


def seed_labels(controller: TrackingController, seeding: Seeding, image: np.ndarray, labels: list[int],
                dtype: np.dtype, report: Progress, should_stop: StopCheck) -> FrameWrite | None:
    """Seed ``labels`` of the (Y, X) label ``image`` of ``seeding.frame`` as new objects (label = id), a batch at a
    time; the frame's labels to write, or None when stopped (:meth:`Seeding.discard` takes the seeded ones out)."""
    session, frame = seeding.session, seeding.frame
    controller.frame_labels.clear()
    for start in range(0, len(labels), LABEL_BATCH):
        if should_stop():
            return None
        seeding.new_ids.extend(session.add_labels(image, frame, obj_ids=labels[start:start + LABEL_BATCH]))
        report(min(start + LABEL_BATCH, len(labels)), len(labels))
    if should_stop():
        return None
    return controller.frame_write(session, frame, None, dtype)
