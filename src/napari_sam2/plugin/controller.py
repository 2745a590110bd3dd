"""What the dock widget does, without Qt: prompts in, masks out, through one :class:`~napari_sam2.TrackingSession`.

Two kinds of methods. *Work* (``compute_prompt``, ``mask_writes``, ``propagation``, ``replayed``, ``loaded``) runs
in a worker thread on the session passed to it and returns
:class:`FrameWrite` s; it never touches a napari layer or changes the controller's state, so a job whose target went
away cannot disturb the new one (``replayed`` reads the target, which a job keeps until it has finished). The one
exception is :attr:`TrackingController.frame_labels`, the engine's last label images by frame and session (see
:mod:`.frame_labels`): work keeps them there, so that a click re-renders only what it can change. Label images come
from the engine without dense (objects, Y, X) logits (``FrameOutput.label_image``). Everything
else runs in the GUI thread: it reads the prompt layers, owns the session and writes results through the
:class:`~napari_sam2.plugin.labels_writer.LabelsWriter` (undo-able, scoped to the tracked objects, and leaving the
user's edits exactly as the user left them: see :meth:`TrackingController.apply`).

Axis order is napari's: the image layer's leading axes, then (row, col) = (y, x).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..engine.session import FrameOutput, TrackingSession
from ..engine.session_file import load_session
from .frame_labels import FrameLabels
from .label_ids import as_ids, isin_ids
from .labels_writer import LabelsWriter
from .prompt_layers import FramePrompts, PromptKey
from .track_target import TargetError, TrackTarget


@dataclass(frozen=True)
class FrameWrite:
    """A label image (Y, X) for ``frame``, to be written for the objects ``obj_ids`` only.

    ``focus`` is the object a prompt was just given for (or the parent of a division): it is written as computed.
    The frame's other objects are
    written too (where objects overlap the higher logit wins) unless the user has edited them there since the engine
    last wrote them. ``exact`` maps objects whose prompt on this frame is a mask (painted, or seeded) to that mask,
    as the session keeps it (``FramePrompt.compact_mask``: its bounding-box crop, ``bounds`` (row0, col0, row1, col1)):
    the layer keeps those exact pixels there (the model only sees a 256 x 256 version of it). ``labels`` may be shared
    with :class:`~napari_sam2.plugin.frame_labels.FrameLabels`: it is never changed. ``divisions`` are the division
    proposals the session made on this frame (a propagated frame: ``FrameOutput.divisions``).
    """

    frame: int
    obj_ids: tuple[int, ...]
    labels: np.ndarray
    focus: int | None = None
    exact: Mapping[int, Any] = field(default_factory=dict)
    divisions: tuple[Any, ...] = ()


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
        self.frame_labels = FrameLabels()

    # ------------------------------------------------------------------ set-up (GUI thread)

    def set_target(self, target: TrackTarget | None) -> None:
        """Track ``target`` from now on; the old session (if any) ends, results already written stay in the layer."""
        self.target = target
        self.session = None
        self._sent.clear()
        self.frame_labels.clear()

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
        """The session, created on first use from the model and target (GUI thread: it reads the contrast limits)."""
        if self.model is None:
            raise RuntimeError("no model loaded yet: choose a model and press Load")
        if self.target is None:
            raise RuntimeError("no image to track: choose an image layer")
        if self.session is None:
            self.target.refresh_contrast()  # the display range when tracking starts is what the model sees
            self.session = self.new_session(self.model)
        return self.session

    def new_session(self, model: Any) -> TrackingSession:
        """A fresh session on the target with ``model`` and the target's contrast limits as last read."""
        return TrackingSession(model, self.target.frames, contrast_limits=self.target.contrast_limits,
                               rgb=self.target.rgb or None)

    @property
    def label_dtype(self) -> np.dtype:
        """The output layer's dtype (read in the GUI thread and handed to the work methods)."""
        return np.dtype(self.writer.layer.data.dtype) if self.writer is not None else np.dtype(np.uint32)

    # ------------------------------------------------------------------ prompts (GUI thread)

    def changed_prompts(self, prompts: dict[PromptKey, FramePrompts]) -> list[tuple[PromptKey, FramePrompts]]:
        """(frame, obj_id) whose clicks / box differ from what the session was last given, with the new prompts
        (empty ones mean: the user removed every prompt there)."""
        keys = sorted(set(prompts) | set(self._sent))
        empty = FramePrompts(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), None)
        return [(key, prompts.get(key, empty)) for key in keys
                if not prompts.get(key, empty).same_as(self._sent.get(key))]

    def note_sent(self, key: PromptKey, prompts: FramePrompts) -> FramePrompts | None:
        """Record that ``prompts`` are being given to the session (before the job runs: a prompt the session refuses,
        e.g. a click outside the image, is then reported once, not retried); returns what was recorded before."""
        previous = self._sent.get(key)
        if prompts.empty:
            self._sent.pop(key, None)
        else:
            self._sent[key] = prompts
        return previous

    def restore_sent(self, key: PromptKey, previous: FramePrompts | None) -> None:
        """Undo :meth:`note_sent` for a job that never ran, so that its prompt is sent again."""
        if previous is None:
            self._sent.pop(key, None)
        else:
            self._sent[key] = previous

    def mark_prompts_sent(self, prompts: dict[PromptKey, FramePrompts]) -> None:
        """Record ``prompts`` as already given to the session (after a session file was loaded)."""
        self._sent = dict(prompts)

    def collect_corrections(self, obj_ids: list[int]) -> list[Correction]:
        """Masks the user painted or erased for ``obj_ids`` since the engine last wrote them. They stay pending
        until a job has given them to the session and written them back (:meth:`apply` of its ``exact`` masks)."""
        if self.writer is None or not obj_ids:
            return []
        return [Correction(frame, obj_id, mask) for frame, masks in sorted(self.writer.edited_frames(obj_ids).items())
                for obj_id, mask in sorted(masks.items())]

    def painted_mask(self, frame: int, obj_id: int) -> Correction:
        """What the Labels layer holds for ``obj_id`` on ``frame``, to be sent as a mask prompt."""
        if self.writer is None:
            raise RuntimeError("no Labels layer to take the mask from; pick or create one")
        mask = self.writer.read_frame(frame) == obj_id
        if not mask.any():
            raise ValueError(f"object {obj_id} has no pixels on frame {frame}; paint it in the Labels layer first "
                             "(or click on it)")
        return Correction(frame, obj_id, mask.copy())

    # ------------------------------------------------------------------ work (worker thread, on a given session)

    def compute_prompt(self, session: TrackingSession, key: PromptKey, prompts: FramePrompts,
                       dtype: np.dtype) -> FrameWrite:
        """Give one object's clicks / box on one frame to ``session``; the frame's new labels (that object in focus)."""
        frame, obj_id = key
        if prompts.empty:
            if obj_id not in session.obj_ids or frame not in session.prompted_frames(obj_id):
                return self.frame_write(session, frame, obj_id, dtype)
            output = session.clear_prompts(frame, obj_id)
        elif prompts.box is not None:
            output = session.add_box(frame, obj_id, prompts.box, prompts.points, prompts.labels)
        else:
            output = session.add_points(frame, obj_id, prompts.points, prompts.labels)
        labels = self.frame_labels.after_prompt(session, frame, obj_id, output, dtype)  # only obj_id changed there
        return _write_of(session, frame, output.obj_ids, labels, focus=obj_id)

    def mask_writes(self, session: TrackingSession, corrections: list[Correction],
                    dtype: np.dtype) -> Iterator[FrameWrite]:
        """Give painted masks to ``session`` as mask prompts; each frame's new labels once all of that frame's masks
        are in (so that they are written back together, exactly as painted)."""
        by_frame: dict[int, list[Correction]] = {}
        for correction in corrections:
            by_frame.setdefault(correction.frame, []).append(correction)
        if by_frame:
            self.frame_labels.clear()
        for frame, painted in sorted(by_frame.items()):
            for correction in painted:
                output = session.add_mask(frame, correction.obj_id, correction.mask)
            yield self._output_write(session, output, dtype)

    def propagation(self, session: TrackingSession, start: int, direction: str, first: int, last: int,
                    dtype: np.dtype, divisions: str = "propose",
                    division_options: Any = None) -> Iterator[FrameWrite]:
        """Track every prompted object from ``start`` over frames ``first..last``, frame by frame; ``divisions``
        ("propose", "auto" or "off") is the session's division rule for the run, ``division_options`` its
        thresholds (a DivisionOptions; None: the engine's defaults). Each write carries the proposals made on its
        frame."""
        self.frame_labels.clear()
        for obj_id in session.obj_ids:  # objects whose prompts were all removed cannot be tracked
            if not session.prompted_frames(obj_id):
                session.remove_object(obj_id)
        for run_start, run_direction, span in _runs(start, direction, first, last):
            runs = session.propagate(run_start, run_direction, span, divisions=divisions,
                                     division_options=division_options)
            with closing(runs) as frames:  # closed here on cancel
                for output in frames:
                    yield self._output_write(session, output, dtype)

    def object_writes(self, session: TrackingSession, frames: list[int], obj_ids: list[int], dtype: np.dtype,
                      focus: int | None = None) -> list[FrameWrite]:
        """The labels of ``obj_ids`` on ``frames`` as ``session`` has them now (after a lineage step changed their
        results: the parent of a division ends, its daughters begin); other objects' pixels are not written.
        ``focus`` (the parent) is written also where the user painted it."""
        self.frame_labels.clear()
        ids = as_ids(obj_ids)
        writes = []
        for frame in sorted(set(frames)):
            labels = session.label_image(frame).astype(dtype, copy=False)
            labels = np.where(isin_ids(labels, ids), labels, 0).astype(dtype, copy=False)
            exact = {i: mask for i, mask in _mask_prompts(session, frame).items() if i in set(ids.tolist())}
            writes.append(FrameWrite(frame, tuple(int(i) for i in ids), labels, focus=focus, exact=exact))
        return writes

    def frame_write(self, session: TrackingSession, frame: int, focus: int | None, dtype: np.dtype) -> FrameWrite:
        """The current labels of every object of ``session`` on ``frame`` (``focus``: an object just prompted)."""
        labels = self.frame_labels.store(session, frame, session.label_image(frame).astype(dtype, copy=False))
        return _write_of(session, frame, session.obj_ids, labels, focus=focus)

    def _output_write(self, session: TrackingSession, output: FrameOutput, dtype: np.dtype) -> FrameWrite:
        """The labels of a frame the session just returned (without its dense logits), with its proposals."""
        labels = self.frame_labels.store(session, output.frame, output.label_image(dtype))
        write = _write_of(session, output.frame, output.obj_ids, labels)
        divisions = tuple(getattr(output, "divisions", ()) or ())  # (outputs of a prompt carry none)
        return replace(write, divisions=divisions) if divisions else write

    def replayed(self, old: TrackingSession, model: Any, dtype: np.dtype) -> tuple[TrackingSession, list[FrameWrite]]:
        """A fresh session on the target with ``model`` (contrast limits as last read), given every prompt of ``old``
        (clicks, boxes and painted masks, in order) and its lineage (links, spans, proposals); with the prompted
        frames' results."""
        new = self.new_session(model)
        history = [(frame, obj_id, prompt) for obj_id in old.obj_ids
                   for frame, steps in old.prompt_history(obj_id).items() for prompt in steps]
        new.restore_prompts(history)
        new.restore_lineage(old.lineage_state())
        return new, self._prompted_frame_writes(new, dtype)

    def loaded(self, path: Any, frames: Any, model: Any, dtype: np.dtype) -> tuple[TrackingSession, list[FrameWrite]]:
        """A saved session re-created on ``frames`` (with the intensities saved in the file); its prompted frames."""
        session = load_session(path, frames, model)
        return session, self._prompted_frame_writes(session, dtype)

    def _prompted_frame_writes(self, session: TrackingSession, dtype: np.dtype) -> list[FrameWrite]:
        frames = sorted({frame for obj_id in session.obj_ids for frame in session.prompted_frames(obj_id)})
        return [self.frame_write(session, frame, None, dtype) for frame in frames]

    def frames_in_run(self, start: int, direction: str, first: int, last: int) -> int:
        """How many frames :meth:`propagation` visits (for the progress bar)."""
        return sum(span + 1 for _, _, span in _runs(start, direction, first, last))

    # ------------------------------------------------------------------ writing (GUI thread)

    def apply(self, write: FrameWrite) -> list[int]:
        """Write a result into the Labels layer, scoped to its objects (other labels never change); returns the
        objects left as the user edited them.

        Objects the user has painted, erased or filled on this frame since the engine last wrote them (other than
        ``focus``) keep exactly the user's pixels: their edit stays pending and becomes a mask prompt at the next
        run. An ``exact`` mask is written (and so accepted as given to the session) unless the user has painted that
        object again meanwhile: then the new painting stays pending.
        """
        writer = self.writer
        if writer is None:
            raise RuntimeError("no Labels layer to write into; pick or create one")
        frame = write.frame
        kept = writer.edited_ids(frame, [i for i in write.obj_ids if i != write.focus and i not in write.exact])
        edited_exact = writer.edited_ids(frame, list(write.exact)) if write.exact else set()
        if edited_exact:  # painted again since it was given to the session, unless the layer holds it as given
            current = writer.read_frame(frame)
            counts = _label_counts(current, edited_exact)
            kept |= {i for i in edited_exact if not _holds_exactly(current, i, write.exact[i], counts[i])}
        labels = write.labels
        replaced = kept | set(write.exact)
        if replaced:
            labels = np.where(isin_ids(labels, as_ids(replaced)), 0, labels).astype(labels.dtype, copy=False)
            for obj_id, mask in write.exact.items():
                if obj_id not in kept:
                    row0, col0, row1, col1 = mask.bounds
                    labels[row0:row1, col0:col1][mask.crop] = obj_id
        writer.write_frame(frame, [i for i in write.obj_ids if i not in kept], labels)
        return sorted(kept)

    def remove_object(self, obj_id: int) -> list[int]:
        """Forget ``obj_id`` in the session and erase its pixels from the tracked plane (one undo step); the frames
        that changed."""
        if self.session is not None and obj_id in self.session.obj_ids:
            self.session.remove_object(obj_id)
            self.frame_labels.clear()
        for key in [k for k in self._sent if k[1] == obj_id]:
            del self._sent[key]
        return self.writer.clear_object(obj_id) if self.writer is not None else []

    def forget_object(self, obj_id: int) -> None:
        """Forget ``obj_id`` in the session and the writer without touching the layer's pixels (an undone step
        that created it: the layer's own undo has taken its pixels back)."""
        if self.session is not None and obj_id in self.session.obj_ids:
            self.session.remove_object(obj_id)
            self.frame_labels.clear()
        for key in [k for k in self._sent if k[1] == obj_id]:
            del self._sent[key]
        if self.writer is not None:
            self.writer.forget(obj_id)


def _write_of(session: TrackingSession, frame: int, obj_ids: list[int], labels: np.ndarray,
              focus: int | None = None) -> FrameWrite:
    """The write of ``labels`` for ``obj_ids`` (and ``focus``, the object just prompted, if any) on ``frame``, with
    the frame's mask prompts."""
    ids = {*obj_ids} if focus is None else {*obj_ids, focus}
    return FrameWrite(frame, tuple(sorted(ids)), labels, focus=focus, exact=_mask_prompts(session, frame))


def _mask_prompts(session: TrackingSession, frame: int) -> dict[int, Any]:
    """Objects whose current prompt on ``frame`` is a mask, with that mask as the session keeps it (a crop)."""
    out = {}
    for obj_id in session.obj_ids:
        prompt = session.prompts(obj_id).get(frame)
        if prompt is not None and prompt.compact_mask is not None:
            out[obj_id] = prompt.compact_mask
    return out


def _label_counts(plane: np.ndarray, ids: set[int]) -> dict[int, int]:
    """Pixels of each of ``ids`` in a (Y, X) label plane."""
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:
        counts = np.bincount(plane.ravel(), minlength=max(ids) + 1)
        return {i: int(counts[i]) for i in ids}
    values, counts = np.unique(plane[isin_ids(plane, as_ids(ids))], return_counts=True)
    found = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return {i: found.get(i, 0) for i in ids}


def _holds_exactly(plane: np.ndarray, obj_id: int, mask: Any, count: int) -> bool:
    """Whether ``plane`` holds ``obj_id`` exactly where the compact ``mask`` is True (and nowhere else)."""
    row0, col0, row1, col1 = mask.bounds
    inside = plane[row0:row1, col0:col1] == obj_id
    return count == int(np.count_nonzero(inside)) and np.array_equal(inside, mask.crop)


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
