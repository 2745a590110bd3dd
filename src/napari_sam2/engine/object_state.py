"""What the tracking session remembers about each object."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FrameResult:
    """One object's result on one frame.

    ``raw_logits`` (1, 1, S/4, S/4) float32 are the decoder's logits *before* hole filling (filling is
    cheap and re-applied on read); keeping the unfilled logits lets a dropped spatial memory be
    re-encoded bit-for-bit. ``maskmem`` (1, 64, S/16, S/16) bfloat16 is the spatial memory, or None
    while not encoded yet (a fresh prompt) or after it was dropped to bound memory.
    """

    raw_logits: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor
    from_prompt: bool  # prompted frames encode memory from the binarised, hole-filled mask
    maskmem: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        tensors = [self.raw_logits, self.obj_ptr, self.object_score]
        if self.maskmem is not None:
            tensors.append(self.maskmem)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class TrackedObject:
    """Prompts and results of one object (napari label value ``obj_id``).

    ``pending`` holds results of prompts given since the last propagation (their memory is encoded when
    propagation starts); ``cond`` the conditioning frames (every prompted frame); ``tracked`` the
    results of propagation; ``direction`` maps each tracked or corrected frame to whether it was
    reached tracking in reverse.
    """

    obj_id: int
    points: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    pending: dict[int, FrameResult] = field(default_factory=dict)
    cond: dict[int, FrameResult] = field(default_factory=dict)
    tracked: dict[int, FrameResult] = field(default_factory=dict)
    direction: dict[int, bool] = field(default_factory=dict)
    resident_memories: set[int] = field(default_factory=set)  # tracked frames whose maskmem is kept

    def latest(self, frame: int) -> FrameResult | None:
        """The newest result on ``frame``: a pending prompt, else a conditioning frame, else a tracked one."""
        for store in (self.pending, self.cond, self.tracked):
            if frame in store:
                return store[frame]
        return None

    def prompted_frames(self) -> list[int]:
        """Frames that hold a prompt (points, box or mask) for this object, sorted."""
        return sorted(set(self.points) | set(self.masks))

    @property
    def nbytes(self) -> int:
        results = [*self.pending.values(), *self.cond.values(), *self.tracked.values()]
        return sum(r.nbytes for r in results)
