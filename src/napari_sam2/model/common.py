"""Small building blocks shared by several SAM 2 modules.

These mirror the layer types of Meta's reference closely enough that checkpoints load with the same keys
(``layers.0.weight`` ...) and produce the same numbers; the code itself is our own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .interrupt import checkpoint
from .torch_compat import is_compiling


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor.

    Written out by hand (instead of permuting to channels-last for ``nn.LayerNorm``) so that the
    arithmetic order, and hence the rounding, equals the reference.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """A stack of ``num_layers`` Linear layers with an activation between them (not after the last)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
                checkpoint()  # between the layers of Hiera's wide MLPs (see interrupt.py)
        return torch.sigmoid(x) if self.sigmoid_output else x


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine position encoding of a feature map (DETR style).

    Output channels: the first half encodes the row (y), the second half the column (x); inside each
    half, even channels are sines and odd channels cosines of the same frequency. Encodings are cached
    per (H, W, device) since they depend on nothing else.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, normalize: bool = True,
                 scale: float | None = None) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats // 2  # per axis
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache: dict[tuple, torch.Tensor] = {}

    def _axis_encoding(self, positions: torch.Tensor) -> torch.Tensor:
        """Encode positions (..., ) into (..., num_pos_feats) interleaved sin/cos."""
        n = self.num_pos_feats
        idx = torch.arange(n, dtype=torch.float32, device=positions.device)
        dim_t = self.temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / n)
        angles = positions[..., None] / dim_t
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    @torch.no_grad()
    def encode(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Return the (1, 2*num_pos_feats, height, width) encoding (cached per size and device; computed in the
        graph under torch.compile, where filling the cache would make dynamo guard on it and recompile)."""
        key = (height, width, str(device))
        tracing = is_compiling()
        cached = None if tracing else self._cache.get(key)
        if cached is not None:
            return cached
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)[:, None].expand(height, width)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, :].expand(height, width)
        if self.normalize:
            eps = 1e-6
            y = y / (height + eps) * self.scale
            x = x / (width + eps) * self.scale
        pos = torch.cat((self._axis_encoding(y), self._axis_encoding(x)), dim=-1)
        pos = pos.permute(2, 0, 1)[None].contiguous()
        if not tracing:
            self._cache[key] = pos
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for a (B, C, H, W) map, broadcast to batch B, in x's dtype."""
        pos = self.encode(x.shape[-2], x.shape[-1], x.device)
        return pos.expand(x.shape[0], -1, -1, -1).to(x.dtype)


def get_1d_sine_pe(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sine encoding of (fractional) positions: (..., ) -> (..., dim), sines then cosines (not interleaved)."""
    half = dim // 2
    idx = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / half)
    angles = positions[..., None] / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
