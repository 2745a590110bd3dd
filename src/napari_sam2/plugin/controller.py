"""What the dock widget does, without Qt: prompts in, masks out, through one :class:`~napari_sam2.TrackingSession`.

The widget calls the ``compute_*`` / ``propagation`` methods in a worker thread (they run the model) and everything
else in the GUI thread (they read or write napari layers). One worker runs at a time, so the session is never used
from two threads at once. Axis order is napari's: the image layer's leading axes, then (row, col) = (y, x).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.postprocess import labels_from_logits
from ..engine.session import TrackingSession
from .labels_writer import LabelsWriter
from .prompt_layers import FramePrompts, PromptKey
from .track_target import TargetError, TrackTarget


@dataclass(frozen=True)
class FrameWrite:
    """A label image (Y, X) for frame ``frame`` to be written for the objects ``obj_ids`` only.

    ``focus`` is the object a prompt was just given for; the frame's other objects are written too (where objects
    overlap the higher logit wins) unless the user has painted them there since, which is kept for propagation.
    """

    frame: int
    obj_ids: tuple[int, ...]
    labels: np.ndarray
    focus: int | None = None


@dataclass(frozen=True)
class Correction:
    """A mask the user painted for ``obj_id`` on ``frame`` (all False: the user erased the object there)."""

    frame: int
    obj_id: int
    mask: np.ndarray


class TrackingController:
    """Holds the model, the tracked movie (a :class:`TrackTarget`), the session and the Labels writer."""

    def __init__(self) -> None:
        self.model: Any = None
        self.target: TrackTarget | None = None
        self.session: TrackingSession | None = None
        self.writer: LabelsWriter | None = None
        self._sent: dict[PromptKey, FramePrompts] = {}  # what the session was last given from the prompt layers

    # ------------------------------------------------------------------ set-up (GUI thread)

    def set_model(self, model: Any) -> None:
        """Use ``model`` from now on; a running session is rebuilt on it with every prompt replayed."""
        self.model = model
        if self.session is not None:
            self.session = self._replayed(self.session)

    def set_target(self, target: TrackTarget | None) -> None:
        """Track ``target`` from now on; the old session (if any) ends, results already written stay in the layer."""
        self.target = target
        self.session = None
        self._sent.clear()

    def set_labels_layer(self, layer: Any) -> None:
        """Write into ``layer`` from now on. Its current content is taken as the baseline: only what the user paints
        from now on counts as a correction."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if layer is None:
            return
        if self.target is not None and tuple(layer.data.shape) != self.target.labels_shape:
            raise TargetError(f"Labels layer {layer.name!r} has shape {tuple(layer.data.shape)}, but the image needs "
                              f"{self.target.labels_shape}; pick a Labels layer of the image's shape or create one")
        fixed = self.target.fixed if self.target is not None else {a: 0 for a in range(1, layer.ndim - 2)}
        axis = self.target.track_axis if self.target is not None else 0
        self.writer = LabelsWriter(layer, frame_axis=axis, fixed_index=fixed)
        for t in range(self.writer.n_frames):
            present = np.unique(self.writer.read_frame(t))
            if present[-1] != 0:
                self.writer.mark_synced(t, present[present != 0].tolist())

    def ensure_session(self) -> TrackingSession:
        """The session, created on first use from the model and target."""
        if self.model is None:
            raise RuntimeError("no model loaded yet: choose a model and press Load")
        if self.target is None:
            raise RuntimeError("no image to track: choose an image layer")
        if self.session is None:
            self.target.refresh_contrast()  # the display range when tracking starts is what the model sees
            self.session = TrackingSession(self.model, self.target.frames, contrast_limits=self.target.contrast_limits,
                                           rgb=self.target.rgb or None)
        return self.session

    def restart(self) -> list[FrameWrite]:
        """Rebuild the session with the image layer's current contrast limits, replaying every prompt (clicks, boxes
        and painted masks); the prompted frames' new results. Worker thread."""
        if self.session is None:
            return []
        self.session = self._replayed(self.session)
        return self._prompted_frame_writes()

    def load_session(self, path: Any) -> list[FrameWrite]:
        """Replace the session by a saved one (on the target's frames, with the intensities saved in the file); the
        prompted frames' results. Worker thread."""
        self.session = TrackingSession.load(path, self.target.frames, self.model)
        return self._prompted_frame_writes()

    def _prompted_frame_writes(self) -> list[FrameWrite]:
        return [self._object_write(frame, obj_id) for obj_id in self.session.obj_ids
                for frame in self.session.prompted_frames(obj_id)]

    def _replayed(self, old: TrackingSession) -> TrackingSession:
        self.session = None
        new = self.ensure_session()
        history = [(frame, obj_id, prompt) for obj_id in old.obj_ids
                   for frame, steps in old.prompt_history(obj_id).items() for prompt in steps]
        new.restore_prompts(history)
        return new

    # ------------------------------------------------------------------ prompts (GUI thread)

    def changed_prompts(self, prompts: dict[PromptKey, FramePrompts]) -> list[tuple[PromptKey, FramePrompts]]:
        """(frame, obj_id) whose clicks / box differ from what the session was last given, with the new prompts
        (empty ones mean: the user removed every prompt there)."""
        keys = sorted(set(prompts) | set(self._sent))
        empty = FramePrompts(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), None)
        return [(key, prompts.get(key, empty)) for key in keys if not prompts.get(key, empty).same_as(self._sent.get(key))]

    def collect_corrections(self, obj_ids: list[int]) -> list[Correction]:
        """Masks the user painted or erased for ``obj_ids`` since the engine last wrote them (accepted as synced)."""
        if self.writer is None or not obj_ids:
            return []
        corrections = []
        for frame, masks in sorted(self.writer.edited_frames(obj_ids).items()):
            for obj_id, mask in sorted(masks.items()):
                corrections.append(Correction(frame, obj_id, mask))
            self.writer.mark_synced(frame, list(masks))
        return corrections

    def painted_mask(self, frame: int, obj_id: int) -> Correction:
        """What the Labels layer holds for ``obj_id`` on ``frame``, to be sent as a mask prompt."""
        if self.writer is None:
            raise RuntimeError("no Labels layer to take the mask from")
        mask = self.writer.read_frame(frame) == obj_id
        if not mask.any():
            raise ValueError(f"object {obj_id} has no pixels on frame {frame}; paint it in the Labels layer first")
        self.writer.mark_synced(frame, [obj_id])
        return Correction(frame, obj_id, mask)

    # ------------------------------------------------------------------ model work (worker thread)

    def compute_prompt(self, key: PromptKey, prompts: FramePrompts) -> FrameWrite:
        """Give one object's clicks / box on one frame to the session; the frame's new mask of that object."""
        frame, obj_id = key
        session = self.ensure_session()
        # Recorded first: a prompt the session refuses (e.g. a click outside the image) is reported once, not retried.
        if prompts.empty:
            self._sent.pop(key, None)
        else:
            self._sent[key] = prompts
        if prompts.empty:
            if obj_id in session.obj_ids and frame in session.prompted_frames(obj_id):
                session.clear_prompts(frame, obj_id)
        elif prompts.box is not None:
            session.add_box(frame, obj_id, prompts.box, prompts.points, prompts.labels)
        else:
            session.add_points(frame, obj_id, prompts.points, prompts.labels)
        return self._object_write(frame, obj_id)

    def compute_masks(self, corrections: list[Correction]) -> list[FrameWrite]:
        """Give painted masks to the session as mask prompts; the frames' new masks of those objects."""
        session = self.ensure_session()
        for c in corrections:
            session.add_mask(c.frame, c.obj_id, c.mask)
        return [self._object_write(c.frame, c.obj_id) for c in corrections]

    def propagation(self, start: int, direction: str, first: int, last: int) -> Iterator[FrameWrite]:
        """Track every prompted object from ``start`` over frames ``first..last``, frame by frame."""
        session = self.ensure_session()
        for obj_id in session.obj_ids:  # objects whose prompts were all removed cannot be tracked
            if not session.prompted_frames(obj_id):
                session.remove_object(obj_id)
        for run_start, run_direction, span in _runs(start, direction, first, last):
            for frame, obj_ids, logits in session.propagate(run_start, run_direction, span):
                labels = labels_from_logits(obj_ids, logits, dtype=self._label_dtype())
                yield FrameWrite(frame, tuple(obj_ids), labels)

    def frames_in_run(self, start: int, direction: str, first: int, last: int) -> int:
        """How many frames :meth:`propagation` visits (for the progress bar)."""
        return sum(span + 1 for _, _, span in _runs(start, direction, first, last))

    def _object_write(self, frame: int, obj_id: int) -> FrameWrite:
        obj_ids, logits = self.session.frame_logits(frame)
        labels = labels_from_logits(obj_ids, logits, dtype=self._label_dtype())
        return FrameWrite(frame, tuple(sorted({*obj_ids, obj_id})), labels, focus=obj_id)

    def _label_dtype(self) -> np.dtype:
        return np.dtype(self.writer.layer.data.dtype) if self.writer is not None else np.dtype(np.uint32)

    # ------------------------------------------------------------------ writing (GUI thread)

    def apply(self, write: FrameWrite) -> None:
        """Write a result into the Labels layer, scoped to its objects (other labels never change)."""
        if self.writer is None:
            raise RuntimeError("no Labels layer to write into; pick or create one")
        ids, labels = list(write.obj_ids), write.labels
        if write.focus is not None:
            others = [i for i in ids if i != write.focus]
            painted = list(self.writer.edited_frames(others).get(write.frame, {})) if others else []
            if painted:  # keep the user's unsent corrections of other objects on this frame
                ids = [i for i in ids if i not in painted]
                labels = np.where(np.isin(labels, painted), 0, labels)
        self.writer.write_frame(write.frame, ids, labels)

    def remove_object(self, obj_id: int) -> None:
        """Forget ``obj_id`` in the session and the writer (the layer's pixels are the widget's business)."""
        if self.session is not None and obj_id in self.session.obj_ids:
            self.session.remove_object(obj_id)
        if self.writer is not None:
            self.writer.forget(obj_id)
        for key in [k for k in self._sent if k[1] == obj_id]:
            del self._sent[key]

    def mark_prompts_sent(self, prompts: dict[PromptKey, FramePrompts]) -> None:
        """Record ``prompts`` as already given to the session (after a session file was loaded)."""
        self._sent = dict(prompts)


def _runs(start: int, direction: str, first: int, last: int) -> list[tuple[int, str, int]]:
    """The engine runs of a propagation over ``first..last``: (start, direction, frames past the start)."""
    runs = []
    if direction in ("forward", "both") and last >= start:
        runs.append((start, "forward", last - start))
    if direction == "backward" and first <= start:
        runs.append((start, "backward", start - first))
    if direction == "both" and first < start:
        # Backward from ``start`` again (a conditioning frame is not recomputed): a backward run from
        # start - 1 = 0 would cover nothing, as in the reference.
        runs.append((start, "backward", start - first))
    return runs
