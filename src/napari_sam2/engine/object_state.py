"""What the tracking session remembers about each object."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .compact_logits import CompactLogits
from .compact_mask import CompactMask


@dataclass(init=False, eq=False)
class FramePrompt:
    """What the user gave for one object on one frame, in napari coordinates of the frame.

    ``points`` (N, 2) float64 (row, col) = (y, x) with ``labels`` (N,) 1 positive / 0 negative;
    ``box`` (y0, x0, y1, x1) or None; ``mask`` bool (Y, X) or None (a mask prompt has no points or box).
    Kept as given so that sessions can be saved and re-created exactly. ``refines_result`` records that
    the object already had a result on the frame when this prompt came (SAM 2 then feeds that result
    back as a mask input, so the order of prompts matters).

    A mask is stored compactly (:class:`~napari_sam2.engine.compact_mask.CompactMask`, the crop of its
    bounding box: a cell costs its box, not a frame): ``mask`` rebuilds the full (Y, X) array on each read
    (a new array, so changing it changes nothing here), ``compact_mask`` is what is kept. The constructor
    and the ``mask`` setter take either form. Two prompts are equal when all their fields are.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    compact_mask: CompactMask | None
    refines_result: bool

    def __init__(self, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None = None,
                 mask: np.ndarray | CompactMask | None = None, refines_result: bool = False) -> None:
        self.points = points
        self.labels = labels
        self.box = box
        self.mask = mask
        self.refines_result = refines_result

    @property
    def mask(self) -> np.ndarray | None:
        """The bool (Y, X) mask of a mask prompt at the frame's resolution (rebuilt), else None."""
        return None if self.compact_mask is None else self.compact_mask.full()

    @mask.setter
    def mask(self, mask: np.ndarray | CompactMask | None) -> None:
        self.compact_mask = None if mask is None else CompactMask.of(mask)

    @property
    def kind(self) -> str:
        """One of "mask", "box" (possibly with clicks) or "points"."""
        return "mask" if self.compact_mask is not None else "box" if self.box is not None else "points"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FramePrompt):
            return NotImplemented
        return (np.array_equal(self.points, other.points) and np.array_equal(self.labels, other.labels)
                and (self.box is None) == (other.box is None)
                and (self.box is None or np.array_equal(self.box, other.box))
                and self.compact_mask == other.compact_mask and self.refines_result == other.refines_result)

    __hash__ = None


@dataclass(init=False, eq=False)
class FrameResult:
    """One object's result on one frame.

    ``raw_logits`` (1, 1, S/4, S/4) float32 are the decoder's logits *before* hole filling (filling is
    cheap and re-applied on read); keeping the unfilled logits lets a dropped spatial memory be
    re-encoded bit-for-bit. They are kept as ``compact_logits``, the crop of the box where they matter
    (:class:`~napari_sam2.engine.compact_logits.CompactLogits`: exact for everything the session computes
    from them); reading ``raw_logits`` rebuilds the map. ``maskmem`` (1, 64, S/16, S/16) bfloat16 is the
    spatial memory, or None while not encoded yet (a fresh prompt) or after it was dropped to bound memory.
    """

    compact_logits: CompactLogits
    obj_ptr: torch.Tensor
    object_score: torch.Tensor
    from_prompt: bool  # prompted frames encode memory from the binarised, hole-filled mask
    maskmem: torch.Tensor | None

    def __init__(self, raw_logits: torch.Tensor | CompactLogits, obj_ptr: torch.Tensor, object_score: torch.Tensor,
                 from_prompt: bool, maskmem: torch.Tensor | None = None) -> None:
        self.compact_logits = raw_logits if isinstance(raw_logits, CompactLogits) else CompactLogits.of(raw_logits)
        self.obj_ptr = obj_ptr
        self.object_score = object_score
        self.from_prompt = from_prompt
        self.maskmem = maskmem

    @property
    def raw_logits(self) -> torch.Tensor:
        """The (1, 1, S/4, S/4) float32 logits before hole filling, as kept (a new tensor)."""
        return self.compact_logits.dense()

    @property
    def nbytes(self) -> int:
        tensors = [self.obj_ptr, self.object_score]
        if self.maskmem is not None:
            tensors.append(self.maskmem)
        return self.compact_logits.nbytes + sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class TrackedObject:
    """Prompts and results of one object (napari label value ``obj_id``).

    ``prompt_steps`` lists, per frame, the prompts given there in order since the frame's last fresh start
    (the latest is the frame's current prompt); ``pending`` holds results of prompts given since the last propagation (their memory is encoded when
    propagation starts); ``cond`` the conditioning frames (every prompted frame); ``tracked`` the
    results of propagation; ``direction`` maps each tracked or corrected frame to whether it was
    reached tracking in reverse. ``revision`` counts the changes to those: anything computed from them (a
    precomputed memory-conditioning) is valid only while it is unchanged; every change calls :meth:`changed`.
    """

    obj_id: int
    prompt_steps: dict[int, list[FramePrompt]] = field(default_factory=dict)  # every prompt call, in order
    pending: dict[int, FrameResult] = field(default_factory=dict)
    cond: dict[int, FrameResult] = field(default_factory=dict)
    tracked: dict[int, FrameResult] = field(default_factory=dict)
    direction: dict[int, bool] = field(default_factory=dict)
    resident_memories: set[int] = field(default_factory=set)  # tracked frames whose maskmem is kept
    revision: int = 0

    def changed(self) -> None:
        """Record a change of the prompts, results or directions (invalidates what was computed from them)."""
        self.revision += 1

    def latest(self, frame: int) -> FrameResult | None:
        """The newest result on ``frame``: a pending prompt, else a conditioning frame, else a tracked one."""
        for store in (self.pending, self.cond, self.tracked):
            if frame in store:
                return store[frame]
        return None

    def remembered(self, frame: int, is_cond: bool) -> FrameResult:
        """The result of a conditioning (``is_cond``) or tracked frame, as memory attention reads it."""
        return (self.cond if is_cond else self.tracked)[frame]

    def prompted_frames(self) -> list[int]:
        """Frames that hold a prompt (points, box or mask) for this object, sorted."""
        return sorted(self.prompt_steps)

    def record_prompt(self, frame: int, prompt: FramePrompt) -> None:
        """Remember a prompt call; one that does not refine an earlier result starts the frame afresh."""
        self.changed()
        if prompt.refines_result and frame in self.prompt_steps:
            self.prompt_steps[frame].append(prompt)
        else:
            self.prompt_steps[frame] = [prompt]

    @property
    def nbytes(self) -> int:
        results = [*self.pending.values(), *self.cond.values(), *self.tracked.values()]
        return sum(r.nbytes for r in results)
