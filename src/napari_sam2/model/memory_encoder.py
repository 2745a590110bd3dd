"""SAM 2 memory encoder: turns a frame's features and its predicted mask into a memory.

The mask (1024 x 1024 at the default image size) is brought down 16x by a small conv stack, added to a
projection of the frame's *un-conditioned* backbone features, mixed by two ConvNeXt blocks and projected
to 64 channels. The result, together with a sine position encoding, is what later frames attend to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import LayerNorm2d, PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Downsample a 1-channel mask by ``total_stride`` in steps of ``stride``.

    Each step is conv (k x k, stride) -> LayerNorm2d -> GELU and multiplies the channel count by
    ``stride**2`` (1 -> 4 -> 16 -> 64 -> 256 for the SAM 2 setting); a final 1x1 conv maps to ``embed_dim``.
    Everything lives in one ``nn.Sequential`` named ``encoder`` so the checkpoint indices line up
    (convs at 0, 3, 6, 9, norms at 1, 4, 7, 10, the 1x1 conv at 12).
    """

    def __init__(self, embed_dim: int = 256, kernel_size: int = 3, stride: int = 2, padding: int = 1,
                 total_stride: int = 16) -> None:
        super().__init__()
        num_steps = 0
        while stride ** (num_steps + 1) <= total_stride:
            num_steps += 1
        if stride ** num_steps != total_stride:
            raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
        stages: list[nn.Module] = []
        channels = 1
        for _ in range(num_steps):
            out_channels = channels * stride ** 2
            stages += [
                nn.Conv2d(channels, out_channels, kernel_size, stride=stride, padding=padding),
                LayerNorm2d(out_channels),
                nn.GELU(),
            ]
            channels = out_channels
        stages.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*stages)

    def forward(self, mask: Tensor) -> Tensor:
        """(B, 1, H, W) -> (B, embed_dim, H / total_stride, W / total_stride)."""
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, channel LayerNorm, 4x MLP with GELU, layer scale, residual.

    The MLP runs channels-last with ``nn.Linear`` (the checkpoint stores ``pwconv1``/``pwconv2`` as
    linear weights).
    """

    def __init__(self, dim: int = 256, kernel_size: int = 7, padding: int = 3,
                 layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=padding, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init_value))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of ConvNeXt blocks that mixes the mask embedding into the frame features."""

    def __init__(self, dim: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode (frame features, mask) into a ``out_dim``-channel memory plus its position encoding.

    The submodules follow the SAM 2 / 2.1 configuration: mask downsampler 3x3 stride 2 (x4), two CXBlocks,
    a 1x1 output projection and a 64-channel sine position encoding.
    """

    def __init__(self, out_dim: int = 64, in_dim: int = 256) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(embed_dim=in_dim, kernel_size=3, stride=2, padding=1,
                                                total_stride=16)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, num_layers=2)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()
        self.position_encoding = PositionEmbeddingSine(out_dim)

    def forward(self, pix_feat: Tensor, masks: Tensor, skip_mask_sigmoid: bool = False) -> dict:
        """Memory for a batch of frames.

        Args:
            pix_feat: (B, in_dim, h, w) backbone features of the frames (not memory-conditioned).
            masks: (B, 1, 16h, 16w) mask logits, or, with ``skip_mask_sigmoid``, masks already mapped
                to the range the encoder expects (the model passes binarised/sigmoided masks * 20 - 10).
            skip_mask_sigmoid: do not apply a sigmoid to ``masks``.

        Returns:
            ``{"vision_features": (B, out_dim, h, w), "vision_pos_enc": [(B, out_dim, h, w)]}``.
        """
        if not skip_mask_sigmoid:
            masks = F.sigmoid(masks)
        mask_embedding = self.mask_downsampler(masks)
        x = self.pix_feat_proj(pix_feat.to(mask_embedding.device)) + mask_embedding
        x = self.out_proj(self.fuser(x))
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}
