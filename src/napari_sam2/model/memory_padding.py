"""A memory of fixed size for compiled memory attention: real tokens in slots, padding masked out.

From frame to frame the memory grows (1 to 7 spatial memories of (S/16)^2 tokens each, 1 to 16 object
pointers of 4 tokens each), and a compiled graph is specialised to its input sizes: every new size would
be a recompile, soon past dynamo's recompile limit (8). So the compiled model hands memory attention a
memory laid out in a fixed number of slots:

    [spatial slot 0 .. spatial slot s-1 | pointer slot 0 .. pointer slot p-1]

The real spatial memories fill the first slots and the real pointers the first pointer slots; the rest are
zeros with a key mask of False, so that attention gives them exactly zero weight (the softmax is the one
over the real keys). The spatial slots keep their RoPE positions (each repeats the frame grid) and the
pointer slots stay the unrotated tail, so the RoPE / pointer split needs nothing else.

The capacity starts at :data:`SPATIAL_SLOTS` = 7 (one conditioning frame + 6 tracked frames) and
:data:`POINTER_SLOTS` = 16. More conditioning frames than that fits grow it by :data:`GROWTH_STEP` slots at
a time, never shrinking it, and later movies of the same model reuse the grown graph. A growth is one
recompile (per batch kind: one object, several); from the first growth on, dynamo's automatic dynamic
shapes make the token counts symbolic, so that further growths (measured: up to 27 spatial slots) recompile
nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .memory_selection import MAX_OBJECT_POINTERS, NUM_MASKMEM

SPATIAL_SLOTS = NUM_MASKMEM  # one conditioning frame + 6 tracked frames
POINTER_SLOTS = MAX_OBJECT_POINTERS
GROWTH_STEP = 4  # slots added at a time when more conditioning frames need more room
POINTER_TOKENS = 4  # a 256-channel pointer is read as 4 tokens of 64 channels


@dataclass(frozen=True)
class MemoryCapacity:
    """How many spatial-memory slots and object-pointer slots a padded memory has."""

    spatial_slots: int = SPATIAL_SLOTS
    pointer_slots: int = POINTER_SLOTS

    def fit(self, num_spatial: int, num_pointers: int) -> MemoryCapacity:
        """Itself if ``num_spatial`` memories and ``num_pointers`` pointers fit; otherwise grown, both kinds of
        slots by the same whole number of :data:`GROWTH_STEP` steps, enough for both.

        Both grow together (more conditioning frames bring more pointers too) so that the first growth is a
        single recompile, in which dynamo's automatic dynamic shapes make both sizes symbolic: later growths
        then cost no recompile at all."""
        steps = max(_steps(self.spatial_slots, num_spatial), _steps(self.pointer_slots, num_pointers))
        if steps == 0:
            return self
        return MemoryCapacity(self.spatial_slots + steps * GROWTH_STEP, self.pointer_slots + steps * GROWTH_STEP)


def _steps(slots: int, needed: int) -> int:
    """How many growth steps ``slots`` needs to hold ``needed``."""
    return max(0, math.ceil((needed - slots) / GROWTH_STEP))


@dataclass
class PaddedMemory:
    """Memory attention's memory inputs at a fixed size (sequence-first, as MemoryAttention takes them)."""

    memory: Tensor  # (slots x tokens, B, C)
    memory_pos: Tensor  # (slots x tokens, B, C)
    mask: Tensor  # (slots x tokens,) bool: True for real tokens
    num_pointer_tokens: int  # the pointer slots' tokens, the unrotated tail


def pad_memory(memory: Tensor, memory_pos: Tensor, num_spatial: int, num_pointer_tokens: int,
               capacity: MemoryCapacity) -> PaddedMemory:
    """Lay out ``memory`` / ``memory_pos`` (M, B, C): ``num_spatial`` spatial memories of equal size, then
    ``num_pointer_tokens`` pointer tokens, in the slots of ``capacity`` (which must fit them)."""
    if num_spatial > capacity.spatial_slots or num_pointer_tokens > capacity.pointer_slots * POINTER_TOKENS:
        raise ValueError(f"{num_spatial} spatial memories and {num_pointer_tokens} pointer tokens do not fit "
                         f"{capacity}")
    spatial_tokens = memory.shape[0] - num_pointer_tokens
    if num_spatial < 1 or spatial_tokens % num_spatial:
        raise ValueError(f"{spatial_tokens} spatial tokens are not {num_spatial} equal memories")
    slot_tokens = spatial_tokens // num_spatial
    spatial_end = capacity.spatial_slots * slot_tokens
    pointer_tokens = capacity.pointer_slots * POINTER_TOKENS
    padded = memory.new_zeros(spatial_end + pointer_tokens, *memory.shape[1:])
    padded_pos = memory_pos.new_zeros(padded.shape[0], *memory_pos.shape[1:])
    mask = torch.zeros(padded.shape[0], dtype=torch.bool, device=memory.device)
    for target, source in ((padded, memory), (padded_pos, memory_pos)):
        target[:spatial_tokens] = source[:spatial_tokens]
        target[spatial_end:spatial_end + num_pointer_tokens] = source[spatial_tokens:]
    mask[:spatial_tokens] = True
    mask[spatial_end:spatial_end + num_pointer_tokens] = True
    return PaddedMemory(padded, padded_pos, mask, pointer_tokens)
