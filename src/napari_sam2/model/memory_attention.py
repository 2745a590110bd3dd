"""SAM 2 memory attention: conditions the current frame's features on the memory bank.

Four pre-norm transformer layers. Each does self-attention over the current frame's 64 x 64 tokens,
cross-attention from those tokens to the memory (spatial memories of earlier frames, 64 channels each,
followed by object-pointer tokens), and a ReLU feed-forward network. Positions enter through 2-D RoPE on
queries and keys; the memory keys additionally get their sine + temporal position encoding added.

Value folding: the cross-attention weights the 64-channel memory values before projecting them to 256
channels (exact, see :meth:`RoPEAttention._attend_folded`). ``value_folding`` chooses how: "auto" (the
default) uses a hand-written blocked kernel on worker threads for eager CPU runs and torch's
``scaled_dot_product_attention`` on the narrow values elsewhere (CUDA, MPS, and inside ``torch.compile``,
which must not trace the threaded kernel), except on MPS before torch 2.12, whose SDPA got narrower values
wrong (there "auto" projects first); "sdpa" uses SDPA on the narrow values everywhere; "off" projects the
values first, as the reference does.

Under ``torch.compile`` the memory may come padded to a fixed size with a key mask (see
:mod:`napari_sam2.model.memory_padding`); the CPU-only loops (objects one by one, feed-forward in blocks,
complex RoPE tables) are then replaced by their plain batched forms, which trace into one graph whatever
the number of objects. A batch of objects whose memories differ in layout comes padded with a key mask per
object; eager on the CPU, each object then runs on its real keys alone (the masked slots dropped again), so
that the hand-written kernel gives it the numbers of its own unpadded memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_workers import map_blocks
from .interrupt import checkpoint
from .rope import axial_rope_table, rotate_pairs
from .torch_compat import TORCH_RELEASE, is_compiling
from .two_way_transformer import Attention

# Score blocks of the CPU cross-attention (softmax_weighted_sum), each block of queries on one worker
# thread: 256 queries x 1024 keys was among the fastest of 128..256 x 512..2048 measured on two cores
# (0.45 s per full-bank cross-attention; 0.46-0.49 s for the others).
_QUERY_CHUNK = 256
_KEY_CHUNK = 1024
_FFN_CHUNK = 512  # tokens per block of the CPU feed-forward network
VALUE_FOLDING_MODES = ("auto", "sdpa", "off")


def _eager_cpu(x: Tensor) -> bool:
    """Whether ``x`` is on the CPU outside ``torch.compile``: where the hand-tuned CPU loops run."""
    return x.device.type == "cpu" and not is_compiling()


MPS_NARROW_VALUES_FROM = (2, 12)  # MPS SDPA gave query-wide (wrong) outputs for narrower values before


def sdpa_takes_narrow_values(device_type: str, release: tuple[int, int] = TORCH_RELEASE) -> bool:
    """Whether torch's SDPA on ``device_type`` computes values narrower than the queries correctly: not MPS
    before torch 2.12, whose kernel returned an output as wide as the queries (pytorch/pytorch#176767)."""
    return device_type != "mps" or release >= MPS_NARROW_VALUES_FROM


def _attention_mask(key_mask: Tensor | None) -> Tensor | None:
    """A (Nk,) bool key mask shared by the batch, or a (B, Nk) one per batch entry (True: attend), as an SDPA
    mask broadcast to (B, heads, Nq, Nk)."""
    if key_mask is None:
        return None
    return key_mask.view(1, 1, 1, -1) if key_mask.dim() == 1 else key_mask[:, None, None, :]


class RoPEAttention(Attention):
    """Multi-head attention with 2-D axial RoPE on queries and keys.

    Queries are assumed to be the tokens of a square grid (row-major), or of ``feat_sizes`` (width, height)
    when their count matches it. With ``rope_k_repeat`` the keys may be several such grids one after the
    other (several memory frames); each repeats the query positions. The last ``num_k_exclude_rope`` keys
    (object pointers, which have no spatial position) are left unrotated.

    ``value_folding`` ("auto", "sdpa" or "off", see the module docstring) says how values narrower than a
    head are weighted; changing it on a compiled model costs one recompile.
    """

    def __init__(self, embedding_dim: int = 256, num_heads: int = 1, downsample_rate: int = 1,
                 rope_theta: float = 10000.0, rope_k_repeat: bool = False,
                 feat_sizes: tuple[int, int] = (64, 64), kv_in_dim: int | None = None,
                 value_folding: str = "auto") -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate, kv_in_dim)
        if value_folding not in VALUE_FOLDING_MODES:
            raise ValueError(f"value_folding must be one of {VALUE_FOLDING_MODES}, got {value_folding!r}")
        self.value_folding = value_folding
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.feat_sizes = (int(feat_sizes[0]), int(feat_sizes[1]))
        # (width, height, device) -> rope_table(); not part of the state dict.
        self._rope_cache: dict[tuple[int, int, str], tuple[Tensor, Tensor, Tensor | None]] = {}

    def _grid_size(self, num_tokens: int) -> tuple[int, int]:
        """(width, height) of the token grid the queries come from."""
        if num_tokens == self.feat_sizes[0] * self.feat_sizes[1]:
            return self.feat_sizes
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"RoPE needs a square token grid, got {num_tokens} query tokens")
        return side, side

    def rope_table(self, num_tokens: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        """Cached (cos, sin, cis) tables, (num_tokens, head_dim // 2), for the query grid (keys that are
        several such grids, memory frames, share them; see rotate_pairs): float32 cos and sin, and on the
        CPU their complex64 form cos + i sin (None elsewhere).

        Inside ``torch.compile`` the real tables are computed in the graph instead (a cache filled during
        tracing would change the guarded module state and cost a recompile; complex ops do not compile)."""
        width, height = self._grid_size(num_tokens)
        if is_compiling():
            return *axial_rope_table(self.head_dim, width, height, self.rope_theta, device), None
        key = (width, height, str(device))
        table = self._rope_cache.get(key)
        if table is None:
            cos, sin = axial_rope_table(self.head_dim, width, height, self.rope_theta, device)
            table = (cos, sin, torch.complex(cos, sin) if torch.device(device).type == "cpu" else None)
            self._rope_cache[key] = table
        return table

    def _apply_rope(self, q: Tensor, k: Tensor, num_k_exclude_rope: int) -> tuple[Tensor, Tensor]:
        """Rotate q, and all keys but the last ``num_k_exclude_rope``, by their grid positions."""
        num_q, num_k = q.shape[-2], k.shape[-2]
        table = self.rope_table(num_q, q.device)
        q = rotate_pairs(q, *table)

        num_k_rope = num_k - num_k_exclude_rope
        if num_k_rope <= 0:
            return q, k
        if num_k_rope != num_q and (not self.rope_k_repeat or num_k_rope % num_q):
            raise ValueError(f"cannot give RoPE positions of {num_q} queries to {num_k_rope} keys "
                             f"(rope_k_repeat={self.rope_k_repeat})")
        k_rope = rotate_pairs(k[..., :num_k_rope, :], *table)
        if num_k_exclude_rope > 0:
            k_rope = torch.cat([k_rope, k[..., num_k_rope:, :]], dim=-2)
        return q, k_rope

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0,
                key_mask: Tensor | None = None) -> Tensor:
        """Attend batch-first queries (B, Nq, C) to keys/values (B, Nk, kv_in_dim); returns (B, Nq, C).

        Queries with batch 1 are shared by every batch entry of the keys (one frame, several objects).
        ``key_mask`` (Nk,) bool shared by the batch, or (B, Nk) per batch entry, leaves out the keys where it
        is False (padding).
        """
        q, k = self._apply_rope(self._split(self.q_proj(q)), self._split(self.k_proj(k)), num_k_exclude_rope)
        if self._folds_values(q, v):
            if self.value_folding == "auto" and key_mask is None and _eager_cpu(q):
                return self._merge(self._attend_then_project_values(q, k, v))
            return self._merge(self._attend_folded(q, k, v, key_mask))
        values = self._split(self.v_proj(v))
        if q.shape[0] != values.shape[0]:
            q = q.expand(values.shape[0], -1, -1, -1)
        return self._merge(F.scaled_dot_product_attention(q, k, values, attn_mask=_attention_mask(key_mask)))

    def _folds_values(self, q: Tensor, v: Tensor) -> bool:
        """Whether to weight the narrow value inputs before projecting them (see :meth:`_attend_folded`):
        when the projection widens the values, unless ``value_folding`` is "off", or "auto" on a device whose
        SDPA cannot take values narrower than the queries (:func:`sdpa_takes_narrow_values`)."""
        if self.value_folding == "off" or v.shape[-1] >= self.head_dim:
            return False
        return self.value_folding == "sdpa" or sdpa_takes_narrow_values(q.device.type)

    def _project_weighted_values(self, weighted: Tensor) -> Tensor:
        """The value projection applied after the weighting: (B, heads, Nq, c) -> (B, heads, Nq, head_dim)."""
        weight = self.v_proj.weight.view(self.num_heads, self.head_dim, -1)
        bias = self.v_proj.bias.view(self.num_heads, 1, self.head_dim)
        return weighted @ weight.transpose(-1, -2) + bias

    def _attend_folded(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """Attention with the value projection moved behind the weighting, on any device: softmax(QK^T)
        (V W^T + b) equals (softmax(QK^T) V) W^T + b because each row of attention weights sums to 1 (masked
        keys have weight 0). torch's SDPA takes values narrower than the queries (its math and
        memory-efficient kernels do; the flash kernels need equal widths), so the value half of the attention
        reads 64 instead of 256 channels per key. Returns (B, heads, Nq, head_dim)."""
        batch = max(q.shape[0], k.shape[0])
        values = v.to(q.dtype).unsqueeze(1).expand(batch, self.num_heads, -1, -1)
        weighted = F.scaled_dot_product_attention(q.expand(batch, -1, -1, -1), k, values,
                                                  attn_mask=_attention_mask(key_mask))
        return self._project_weighted_values(weighted)

    def _attend_then_project_values(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """:meth:`_attend_folded` for eager CPU runs without a key mask, by hand and on worker threads.

        Written by hand because it is the tracker's hot spot on the CPU, and torch's CPU flash kernel
        needs values as wide as the keys: memory values have 64 channels against 256 per head, so
        weighting them first does a quarter of the work for the value half of the attention. Blocks of
        ``_QUERY_CHUNK`` queries go to single-threaded workers (cpu_workers.py), as in torch's own kernel.
        Per full-bank cross-attention on this project's two cores: 0.45-0.49 s, against 0.63 s for torch's
        flash kernel on the reference's 256-channel values and 0.65 s for the same blocks run op by op on
        both cores. Returns (B, heads, Nq, head_dim).
        """
        q = q * self.head_dim ** -0.5
        keys_t = k.transpose(-1, -2)
        batch, num_q = max(q.shape[0], k.shape[0]), q.shape[2]
        blocks = [(b, slice(start, start + _QUERY_CHUNK)) for b in range(batch)
                  for start in range(0, num_q, _QUERY_CHUNK)]

        def weigh(block: tuple[int, slice]) -> Tensor:
            checkpoint()  # a full-bank block of queries takes ~0.1 s on one core
            b, rows = block
            return softmax_weighted_sum(q[b if q.shape[0] > 1 else 0, :, rows], keys_t[b], v[b])

        weighted = q.new_empty(batch, self.num_heads, num_q, v.shape[-1])
        for (b, rows), block_weighted in zip(blocks, map_blocks(weigh, blocks), strict=True):
            weighted[b, :, rows] = block_weighted
        return self._project_weighted_values(weighted)


def softmax_weighted_sum(queries: Tensor, keys_t: Tensor, values: Tensor) -> Tensor:
    """softmax(queries @ keys_t) @ values for (heads, n, d) queries, (heads, d, Nk) transposed keys and
    (Nk, c) values shared by the heads; returns (heads, n, c).

    The keys are taken ``_KEY_CHUNK`` at a time with a running maximum and sum (the "online softmax" of
    flash attention), so a block of scores stays in cache instead of a full (n, Nk) matrix going through
    memory three times. Scores, maxima and sums are kept in float32 (also under bf16 autocast). Equal to
    the plain softmax up to float rounding.
    """
    heads, num_q, num_k = queries.shape[0], queries.shape[1], keys_t.shape[-1]
    running_max = queries.new_full((heads, num_q, 1), float("-inf"), dtype=torch.float32)
    total = queries.new_zeros((heads, num_q, 1), dtype=torch.float32)
    weighted = queries.new_zeros((heads, num_q, values.shape[-1]), dtype=torch.float32)
    for start in range(0, num_k, _KEY_CHUNK):
        scores = (queries @ keys_t[..., start:start + _KEY_CHUNK]).float()
        new_max = torch.maximum(running_max, scores.amax(-1, keepdim=True))
        rescale = (running_max - new_max).exp_()  # exp(-inf) = 0 on the first block
        # Weights below exp(-80) (~2e-35, nothing next to the row's largest weight of 1) are raised to it:
        # exp of lower arguments hits a slow denormal path (measured up to 1.9x slower with wide scores).
        weights = scores.sub_(new_max).clamp_(min=-80.0).exp_()
        total.mul_(rescale).add_(weights.sum(-1, keepdim=True))
        weighted.mul_(rescale).add_(weights @ values[start:start + _KEY_CHUNK])
        running_max = new_max
    return weighted.div_(total).to(queries.dtype)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm layer: RoPE self-attention, RoPE cross-attention to the memory, ReLU feed-forward.

    SAM 2 setting: no position encoding is added to the self-attention inputs or to the cross-attention
    queries; the memory position encoding is added to the cross-attention keys only. Dropout (training
    only) is omitted.
    """

    def __init__(self, d_model: int = 256, dim_feedforward: int = 2048, kv_in_dim: int = 64,
                 feat_sizes: tuple[int, int] = (64, 64), rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads=1, rope_theta=rope_theta, feat_sizes=feat_sizes)
        self.cross_attn_image = RoPEAttention(d_model, num_heads=1, rope_theta=rope_theta,
                                              rope_k_repeat=True, feat_sizes=feat_sizes,
                                              kv_in_dim=kv_in_dim)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor | None = None,
                num_k_exclude_rope: int = 0, memory_mask: Tensor | None = None) -> Tensor:
        """Update batch-first tokens ``tgt`` (B, N, d_model) from ``memory`` (B, M, kv_in_dim).

        ``pos`` is the memory's position encoding (B, M, kv_in_dim); the last ``num_k_exclude_rope``
        memory tokens are object pointers and get no RoPE. ``memory_mask`` (M,) or per object (B, M) bool:
        False for padding.
        """
        return self.attend_memory(self.self_attend(tgt), memory, pos, num_k_exclude_rope, memory_mask)

    def self_attend(self, tgt: Tensor) -> Tensor:
        """The self-attention half-step: it sees only the current frame's tokens."""
        x = self.norm1(tgt)
        return tgt + self.self_attn(x, x, x)

    def attend_memory(self, tgt: Tensor, memory: Tensor, pos: Tensor | None = None,
                      num_k_exclude_rope: int = 0, memory_mask: Tensor | None = None) -> Tensor:
        """The rest of the layer after :meth:`self_attend`: cross-attention to the memory, feed-forward."""
        checkpoint()
        x = self.norm2(tgt)
        keys = memory if pos is None else memory + pos
        tgt = tgt + self.cross_attn_image(x, keys, memory, num_k_exclude_rope=num_k_exclude_rope,
                                          key_mask=memory_mask)
        checkpoint()
        return tgt + self.feed_forward(self.norm3(tgt))

    def feed_forward(self, x: Tensor) -> Tensor:
        """linear2(relu(linear1(x))). On the CPU, ``_FFN_CHUNK`` tokens at a time: hand-chunked so that the
        2048-wide hidden activations stay in cache instead of a (tokens, 2048) tensor going through memory
        (bit-identical; 54 against 68 ms per layer and object on two cores)."""
        if not _eager_cpu(x):
            return self.linear2(F.relu(self.linear1(x)))
        tokens = x.reshape(-1, x.shape[-1])
        blocks = []
        for start in range(0, tokens.shape[0], _FFN_CHUNK):
            checkpoint()
            blocks.append(self.linear2(F.relu(self.linear1(tokens[start:start + _FFN_CHUNK]), inplace=True)))
        return torch.cat(blocks).view(*x.shape[:-1], -1)


class MemoryAttention(nn.Module):
    """The stack of memory-attention layers plus a final LayerNorm (SAM 2 / 2.1 configuration)."""

    def __init__(self, d_model: int = 256, num_layers: int = 4) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    @property
    def value_folding(self) -> str:
        """How the cross-attentions weight the 64-channel memory values: "auto", "sdpa" or "off" (see the
        module docstring); setting it sets every layer's."""
        return self.layers[0].cross_attn_image.value_folding

    @value_folding.setter
    def value_folding(self, mode: str) -> None:
        if mode not in VALUE_FOLDING_MODES:
            raise ValueError(f"value_folding must be one of {VALUE_FOLDING_MODES}, got {mode!r}")
        for layer in self.layers:
            layer.cross_attn_image.value_folding = mode

    def forward(self, curr: Tensor | list[Tensor], memory: Tensor,
                curr_pos: Tensor | list[Tensor] | None = None, memory_pos: Tensor | None = None,
                num_obj_ptr_tokens: int = 0, memory_mask: Tensor | None = None) -> Tensor:
        """Condition the current frame on the memory.

        Args:
            curr: (HW, B, d_model) current-frame tokens, sequence-first (a one-element list is accepted).
                With batch 1 and a memory of batch B, the frame is shared by B objects: the first layer's
                self-attention, which sees only the frame, then runs once instead of B times.
            memory: (M, B, 64) memory tokens, sequence-first: spatial memories, then pointer tokens.
            curr_pos: (HW, B, d_model) position encoding of ``curr``; 0.1 x it is added at the input.
            memory_pos: (M, B, 64) position encoding of the memory, added to the cross-attention keys.
            num_obj_ptr_tokens: how many trailing memory tokens are object-pointer tokens (no RoPE).
            memory_mask: (M,) bool, or (B, M) per object, False for memory tokens to leave out (padding, see
                memory_padding.py); None: attend to all.

        Returns:
            (HW, B, d_model) conditioned tokens, sequence-first.
        """
        if isinstance(curr, (list, tuple)):
            (curr,) = curr
        if isinstance(curr_pos, (list, tuple)):
            (curr_pos,) = curr_pos
        if curr.shape[1] not in (1, memory.shape[1]):
            raise ValueError(f"batch sizes differ: curr {curr.shape[1]} vs memory {memory.shape[1]} "
                             "(curr may also have batch 1: one frame shared by several objects)")

        x = curr if curr_pos is None else curr + 0.1 * curr_pos
        # Memories may be stored at lower precision (bf16); compute in the features' dtype.
        memory = memory.to(x.dtype).transpose(0, 1)
        memory_pos = None if memory_pos is None else memory_pos.to(x.dtype).transpose(0, 1)
        x = x.transpose(0, 1)
        if _eager_cpu(x) and x.shape[0] == 1 and (memory.shape[0] > 1 or memory_mask is not None):
            x = self._objects_one_by_one(x, memory, memory_pos, num_obj_ptr_tokens, memory_mask)
        else:
            for layer in self.layers:
                checkpoint()
                x = layer(x, memory, memory_pos, num_k_exclude_rope=num_obj_ptr_tokens, memory_mask=memory_mask)
        return self.norm(x).transpose(0, 1)

    def _objects_one_by_one(self, frame: Tensor, memory: Tensor, memory_pos: Tensor | None,
                            num_obj_ptr_tokens: int, memory_mask: Tensor | None = None) -> Tensor:
        """One frame (batch 1) against the memories of B objects, on the CPU: the first self-attention once,
        then each object through the rest alone. On two CPU cores, batched (B, tokens, 256) activations cost
        more in memory traffic than batching saves (a 16-object frame was ~10 % slower), while the
        shared first step is exact and saves one self-attention per object. Batch-first in and out.

        A ``memory_mask`` that leaves out whole spatial memories and pointer tokens (the padding of
        memory_padding.py) is applied by dropping those keys (:func:`_own_memory`)."""
        first, *rest = self.layers
        shared = first.self_attend(frame)
        outputs = []
        for b in range(memory.shape[0]):
            obj_memory, obj_pos, num_ptr, obj_mask = _own_memory(memory, memory_pos, memory_mask,
                                                                 num_obj_ptr_tokens, b, frame.shape[1])
            x = first.attend_memory(shared, obj_memory, obj_pos, num_ptr, obj_mask)
            for layer in rest:
                checkpoint()
                x = layer(x, obj_memory, obj_pos, num_k_exclude_rope=num_ptr, memory_mask=obj_mask)
            outputs.append(x)
        return torch.cat(outputs)


def _own_memory(memory: Tensor, memory_pos: Tensor | None, memory_mask: Tensor | None, num_obj_ptr_tokens: int,
                b: int, num_queries: int) -> tuple[Tensor, Tensor | None, int, Tensor | None]:
    """Object ``b``'s (memory, memory_pos, pointer tokens, key mask) from a batch-first memory (B, M, C).

    When the mask (shared (M,) or per object (B, M)) leaves out whole spatial memories (grids of
    ``num_queries`` tokens) and pointer tokens, those keys are dropped instead: what is left is the memory
    as an unpadded one holds it, so the unmasked kernels run and give its numbers (the spatial memories
    left keep their RoPE positions, each repeating the grid; pointers stay the unrotated tail). Any other
    mask is passed on for the keys to be masked."""
    obj_memory = memory[b:b + 1]
    obj_pos = None if memory_pos is None else memory_pos[b:b + 1]
    if memory_mask is None:
        return obj_memory, obj_pos, num_obj_ptr_tokens, None
    keep = memory_mask if memory_mask.dim() == 1 else memory_mask[b]
    num_spatial_tokens = keep.shape[0] - num_obj_ptr_tokens
    if num_spatial_tokens % num_queries:
        return obj_memory, obj_pos, num_obj_ptr_tokens, keep
    slots = keep[:num_spatial_tokens].view(-1, num_queries)
    if not bool((slots.all(dim=1) | ~slots.any(dim=1)).all()):
        return obj_memory, obj_pos, num_obj_ptr_tokens, keep
    num_ptr = int(keep[num_spatial_tokens:].sum())
    return obj_memory[:, keep], None if obj_pos is None else obj_pos[:, keep], num_ptr, None
