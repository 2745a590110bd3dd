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

The same layout batches objects whose memories differ (objects prompted on different frames have other
conditioning frames, other recent frames, other pointer distances): :func:`condition_on_mixed_memories`
lays each object's memory out in the slots of the batch (:func:`pad_objects`, a key mask per object), each
with its own temporal encodings and pointer distances. Masked keys get zero weight, so every object's result
is the one its own unpadded pass gives (on the CPU bit for bit: memory attention drops the masked slots
again, object by object).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .compiled import CompiledWithFallback
from .memory_selection import MAX_OBJECT_POINTERS, NUM_MASKMEM

if TYPE_CHECKING:  # sam2.py imports this module
    from .sam2 import ImageFeatures, MemoryItem, SAM2Model

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
    mask: Tensor  # (slots x tokens,) bool, or (B, slots x tokens) per object: True for real tokens
    num_pointer_tokens: int  # the pointer slots' tokens, the unrotated tail


@dataclass
class ObjectMemory:
    """One object's memory as memory attention reads it, sequence-first (M, 1, C): ``num_spatial`` spatial
    memories of equal size, then ``num_pointer_tokens`` pointer tokens."""

    memory: Tensor
    memory_pos: Tensor
    num_spatial: int
    num_pointer_tokens: int


def _slot_tokens(memory: Tensor, num_spatial: int, num_pointer_tokens: int, capacity: MemoryCapacity) -> int:
    """Tokens per spatial memory of ``memory`` (M, B, C), checking that its memories fit ``capacity``."""
    if num_spatial > capacity.spatial_slots or num_pointer_tokens > capacity.pointer_slots * POINTER_TOKENS:
        raise ValueError(f"{num_spatial} spatial memories and {num_pointer_tokens} pointer tokens do not fit "
                         f"{capacity}")
    spatial_tokens = memory.shape[0] - num_pointer_tokens
    if num_spatial < 1 or spatial_tokens % num_spatial:
        raise ValueError(f"{spatial_tokens} spatial tokens are not {num_spatial} equal memories")
    return spatial_tokens // num_spatial


def _place(target: Tensor, target_pos: Tensor, mask: Tensor, memory: Tensor, memory_pos: Tensor,
           num_pointer_tokens: int, spatial_end: int) -> None:
    """Write ``memory`` / ``memory_pos`` (M, b, C) into ``target`` / ``target_pos`` (slots x tokens, b, C):
    spatial tokens from the start, pointer tokens from ``spatial_end``; ``mask`` (slots x tokens,) marks them."""
    spatial_tokens = memory.shape[0] - num_pointer_tokens
    for padded, source in ((target, memory), (target_pos, memory_pos)):
        padded[:spatial_tokens] = source[:spatial_tokens]
        padded[spatial_end:spatial_end + num_pointer_tokens] = source[spatial_tokens:]
    mask[:spatial_tokens] = True
    mask[spatial_end:spatial_end + num_pointer_tokens] = True


def pad_memory(memory: Tensor, memory_pos: Tensor, num_spatial: int, num_pointer_tokens: int,
               capacity: MemoryCapacity) -> PaddedMemory:
    """Lay out ``memory`` / ``memory_pos`` (M, B, C): ``num_spatial`` spatial memories of equal size, then
    ``num_pointer_tokens`` pointer tokens, in the slots of ``capacity`` (which must fit them)."""
    spatial_end = capacity.spatial_slots * _slot_tokens(memory, num_spatial, num_pointer_tokens, capacity)
    pointer_tokens = capacity.pointer_slots * POINTER_TOKENS
    padded = memory.new_zeros(spatial_end + pointer_tokens, *memory.shape[1:])
    padded_pos = memory_pos.new_zeros(padded.shape[0], *memory_pos.shape[1:])
    mask = torch.zeros(padded.shape[0], dtype=torch.bool, device=memory.device)
    _place(padded, padded_pos, mask, memory, memory_pos, num_pointer_tokens, spatial_end)
    return PaddedMemory(padded, padded_pos, mask, pointer_tokens)


def batch_capacity(objects: Sequence[ObjectMemory]) -> MemoryCapacity:
    """The fewest slots that hold the memory of each of ``objects``."""
    return MemoryCapacity(max(o.num_spatial for o in objects),
                          max(math.ceil(o.num_pointer_tokens / POINTER_TOKENS) for o in objects))


def pad_objects(objects: Sequence[ObjectMemory], capacity: MemoryCapacity) -> PaddedMemory:
    """The memories of several objects as one batch (slots x tokens, B, C), each laid out in the slots of
    ``capacity`` as :func:`pad_memory` lays one out, with a key mask per object (B, slots x tokens)."""
    first = objects[0]
    slot_tokens = {_slot_tokens(o.memory, o.num_spatial, o.num_pointer_tokens, capacity) for o in objects}
    if len(slot_tokens) > 1:
        raise ValueError(f"the objects' spatial memories differ in size: {sorted(slot_tokens)} tokens")
    spatial_end = capacity.spatial_slots * slot_tokens.pop()
    total = spatial_end + capacity.pointer_slots * POINTER_TOKENS
    padded = first.memory.new_zeros(total, len(objects), first.memory.shape[-1])
    padded_pos = first.memory_pos.new_zeros(total, len(objects), first.memory_pos.shape[-1])
    mask = torch.zeros(len(objects), total, dtype=torch.bool, device=first.memory.device)
    for b, obj in enumerate(objects):
        _place(padded[:, b:b + 1], padded_pos[:, b:b + 1], mask[b], obj.memory, obj.memory_pos,
               obj.num_pointer_tokens, spatial_end)
    return PaddedMemory(padded, padded_pos, mask, capacity.pointer_slots * POINTER_TOKENS)


def object_memory(model: SAM2Model, image: ImageFeatures, memories: Sequence[MemoryItem],
                  pointers: Sequence[tuple[int, Tensor]], num_frames: int, spatial_pos: Tensor,
                  pointer_pos: dict[tuple[int, ...], Tensor]) -> ObjectMemory:
    """One object's memory tokens and their positions on ``image``'s frame, as ``condition_on_memory`` builds
    them for a batch of one: each spatial memory (1, 64, h, w) with the sine encoding ``spatial_pos`` (hw, 1, 64)
    plus its slot's temporal encoding, then the pointers as 4 tokens each with their distance encoding
    (``pointer_pos`` caches those per tuple of distances)."""
    feat = image.feat
    dtype, device = feat.dtype, feat.device
    tokens = [item.features.to(device=device, dtype=dtype).flatten(2).permute(2, 0, 1) for item in memories]
    token_pos = [spatial_pos + model.maskmem_tpos_enc[NUM_MASKMEM - item.t_pos - 1] for item in memories]
    num_pointer_tokens = 0
    if pointers:
        distances = tuple(d for d, _ in pointers)
        if distances not in pointer_pos:
            pointer_pos[distances] = model._pointer_position_encoding(
                torch.tensor(distances, device=device), num_frames, 1, dtype).repeat_interleave(POINTER_TOKENS, dim=0)
        ptrs = torch.stack([p for _, p in pointers], dim=0).to(device=device, dtype=dtype)  # (P, 1, 256)
        ptrs = ptrs.reshape(len(pointers), 1, POINTER_TOKENS, -1).permute(0, 2, 1, 3).flatten(0, 1)
        tokens.append(ptrs)
        token_pos.append(pointer_pos[distances])
        num_pointer_tokens = ptrs.shape[0]
    return ObjectMemory(torch.cat(tokens, dim=0), torch.cat(token_pos, dim=0), len(memories), num_pointer_tokens)


def condition_on_mixed_memories(model: SAM2Model, image: ImageFeatures,
                                layouts: Sequence[tuple[Sequence[MemoryItem], Sequence[tuple[int, Tensor]]]],
                                num_frames: int) -> Tensor:
    """``model.condition_on_memory`` for B objects on one frame whose memories differ in layout: ``layouts``
    holds each object's (memories, (distance, pointer) pairs), as for a batch of one (each with at least one
    spatial memory). Returns (B, 256, h, w), each object's as its own pass gives it. Runs under the caller's
    autocast.

    The memories are padded to the batch's slots (:func:`batch_capacity`; a compiled model's capacity,
    grown if needed) with a key mask per object, and go through memory attention together."""
    feat = image.feat
    _, channels, height, width = feat.shape
    dtype = feat.dtype
    spatial_pos = model.memory_encoder.position_encoding.encode(height, width, feat.device).to(dtype)
    spatial_pos = spatial_pos.flatten(2).permute(2, 0, 1)  # (hw, 1, 64)
    pointer_pos: dict[tuple[int, ...], Tensor] = {}
    objects = [object_memory(model, image, memories, pointers, num_frames, spatial_pos, pointer_pos)
               for memories, pointers in layouts]
    capacity = batch_capacity(objects)
    runner = model._compiled.get("memory_attention")
    compiled = isinstance(runner, CompiledWithFallback) and runner.active
    if compiled:
        model._memory_capacity = capacity = model._memory_capacity.fit(capacity.spatial_slots, capacity.pointer_slots)
    padded = pad_objects(objects, capacity)
    curr = feat.flatten(2).permute(2, 0, 1)
    curr_pos = image.pos.to(dtype).flatten(2).permute(2, 0, 1).expand(-1, feat.shape[0], -1)
    inputs = {"curr": curr, "memory": padded.memory, "curr_pos": curr_pos, "memory_pos": padded.memory_pos,
              "num_obj_ptr_tokens": padded.num_pointer_tokens, "memory_mask": padded.mask}

    def eager() -> Tensor:
        return model.memory_attention(**inputs)

    if compiled:
        if len(objects) > 1:  # the objects dimension stays dynamic, as for uniform batches
            for tensor in (padded.memory, padded.memory_pos):
                torch._dynamo.maybe_mark_dynamic(tensor, 1)
            torch._dynamo.maybe_mark_dynamic(padded.mask, 0)
        fused = runner.call_or(eager, **inputs)
    else:
        fused = eager()
    return fused.permute(1, 2, 0).reshape(len(objects), channels, height, width)
