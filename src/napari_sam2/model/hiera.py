"""Hiera trunk of the SAM 2 image encoder (hierarchical ViT with windowed attention and q-pooling).

Tokens are kept channels-last, (B, H, W, C), inside the trunk. Four stages run at strides 4, 8, 16 and
32; the first block of stages 2-4 halves the spatial grid by max-pooling its queries ("q-pool") and
doubles channels and heads. Module and parameter names follow Meta's checkpoints so that released
weights load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP
from .interrupt import checkpoint


def _pad_amount(size: int, window: int) -> int:
    """Zero padding needed to bring ``size`` up to a multiple of ``window``."""
    return (window - size % window) % window


def to_windows(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * nH * nW, window, window, C), zero padding bottom/right first.

    Padded tokens are not masked in attention: they go through ``qkv`` like real ones (bias-only
    tokens), exactly as in the reference.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = _pad_amount(h, window), _pad_amount(w, window)
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    n_h, n_w = (h + pad_h) // window, (w + pad_w) // window
    x = x.view(b, n_h, window, n_w, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * n_h * n_w, window, window, c)


def from_windows(windows: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`to_windows`: ``grid`` = windows per (row, col), ``size`` = (H, W) to crop to."""
    n_h, n_w = grid
    window = windows.shape[1]
    c = windows.shape[-1]
    b = windows.shape[0] // (n_h * n_w)
    x = windows.reshape(b, n_h, n_w, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, n_h * window, n_w * window, c)
    h, w = size
    if x.shape[1] > h or x.shape[2] > w:
        x = x[:, :h, :w, :]
    return x


def max_pool_channels_last(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """Non-overlapping max pooling (kernel = stride, floor) of a channels-last (B, H, W, C) map."""
    x = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return x.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution from RGB to ``embed_dim`` channels, returned channels-last."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) map, with optional 2x2 max-pooling of the queries.

    With q-pooling, keys and values keep the full grid while the output has the pooled grid; this is
    how Hiera downsamples at stage transitions.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)  # each (B, HW, heads, hd)
        checkpoint()  # qkv, attention and projection of a stage-1 block are ~50 ms each at 1024 px
        if self.q_stride is not None:
            q = max_pool_channels_last(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        checkpoint()
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block: (windowed) attention then MLP, each with a residual.

    When ``dim != dim_out`` (the q-pool block opening a stage) the residual branch is the pooled
    linear projection of the *normalised* input, so the two branches agree in grid size and width.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, window_size: int = 0,
                 q_stride: tuple[int, int] | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride=q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=nn.GELU)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        shortcut = x
        if self.proj is not None:
            shortcut = self.proj(x_norm)
            if self.q_stride is not None:
                shortcut = max_pool_channels_last(shortcut, self.q_stride)

        if self.window_size > 0:
            h, w = x.shape[1:3]
            window = self.window_size
            grid = (-(-h // window), -(-w // window))  # windows per row / column after padding
            y = self.attn(to_windows(x_norm, window))
            # q-pooling shrinks each window; the window grid is unchanged. Crop to the residual's size.
            y = from_windows(y, grid, shortcut.shape[1:3])
        else:
            y = self.attn(x_norm)

        x = shortcut + y
        checkpoint()  # a stage-1 block takes ~0.2 s at 1024 px on two cores: poll inside it too
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hierarchical ViT trunk ("Hiera-Det") returning the four stage outputs.

    Args:
        embed_dim: channels of stage 1; multiplied by ``dim_mul`` at each later stage.
        num_heads: attention heads of stage 1; multiplied by ``head_mul`` at each later stage.
        stages: number of blocks per stage.
        global_att_blocks: indices of blocks using global (unwindowed) attention.
        window_spec: attention window per stage. A stage's first block still uses the previous stage's
            window, because it sees the grid before q-pooling.
        window_pos_embed_bkg_spatial_size: grid of the learned background position embedding, which is
            bicubically resized to the patch grid.
        q_pool: how many stage transitions downsample by q-pooling.
        q_stride: pooling stride at those transitions.
    """

    def __init__(self, embed_dim: int, num_heads: int, stages: Sequence[int], global_att_blocks: Sequence[int],
                 window_spec: Sequence[int], window_pos_embed_bkg_spatial_size: tuple[int, int],
                 q_pool: int = 3, q_stride: tuple[int, int] = (2, 2), dim_mul: float = 2.0,
                 head_mul: float = 2.0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("stages and window_spec must have the same length")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        stage_starts = [end + 1 for end in self.stage_ends[:-1]]  # first block of stages 2..n
        q_pool_blocks = set(stage_starts[:q_pool])
        global_blocks = set(global_att_blocks)

        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        self.blocks = nn.ModuleList()
        self.channel_list: list[int] = []  # filled deepest first below
        dim, heads, stage = embed_dim, num_heads, 0
        for i in range(sum(stages)):
            window = 0 if i in global_blocks else window_spec[stage]  # window of the stage so far
            dim_out = dim
            if i in stage_starts:
                dim_out, heads, stage = int(dim * dim_mul), int(heads * head_mul), stage + 1
            self.blocks.append(MultiScaleBlock(
                dim, dim_out, heads, window_size=window,
                q_stride=tuple(q_stride) if i in q_pool_blocks else None, mlp_ratio=mlp_ratio,
            ))
            dim = dim_out
            if i in self.stage_ends:
                self.channel_list.insert(0, dim)

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """Position embedding for a patch grid, channels-last: resized background + tiled window embed."""
        background = F.interpolate(self.pos_embed, size=grid, mode="bicubic")
        tile = self.pos_embed_window.shape[-1]
        if grid[0] % tile or grid[1] % tile:
            raise ValueError(f"patch grid {grid} must be a multiple of the window embed size {tile} "
                             f"(image side a multiple of {4 * tile})")
        pos = background + self.pos_embed_window.tile(1, 1, grid[0] // tile, grid[1] // tile)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) image -> stage outputs (B, C_i, H_i, W_i) at strides 4, 8, 16, 32 (highest res first)."""
        x = self.patch_embed(x)
        x = x + self._pos_embed(tuple(x.shape[1:3]))
        outputs = []
        for i, block in enumerate(self.blocks):
            checkpoint()
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
