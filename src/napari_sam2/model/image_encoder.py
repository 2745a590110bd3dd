"""SAM 2 image encoder: Hiera trunk + a light FPN neck, with sine position encodings per level."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .common import PositionEmbeddingSine
from .hiera import Hiera
from .interrupt import checkpoint


class FpnNeck(nn.Module):
    """Feature pyramid without output convs: 1x1 lateral convs to ``d_model`` plus a top-down path.

    ``convs[0]`` acts on the deepest trunk level (the order of ``backbone_channel_list``). Only levels in
    ``fpn_top_down_levels`` (0 = highest resolution) receive the nearest-upsampled coarser level, added
    to their lateral features; the others are lateral only.
    """

    def __init__(self, d_model: int, backbone_channel_list: Sequence[int],
                 fpn_top_down_levels: Sequence[int] = (2, 3)) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        # Each lateral is wrapped in a Sequential so checkpoint keys read ``convs.<i>.conv.weight``.
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(channels, d_model, kernel_size=1)))
            for channels in self.backbone_channel_list
        )
        self.fpn_top_down_levels = list(fpn_top_down_levels)
        self.position_encoding = PositionEmbeddingSine(d_model)

    def forward(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Trunk levels (highest resolution first) -> (features, position encodings), same order."""
        if len(xs) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} trunk levels, got {len(xs)}")
        deepest = len(xs) - 1
        features: list[Tensor] = [None] * len(xs)  # type: ignore[list-item]
        coarser = None
        for level in range(deepest, -1, -1):  # coarse to fine
            checkpoint()
            lateral = self.convs[deepest - level](xs[level])
            if level in self.fpn_top_down_levels and coarser is not None:
                upsampled = F.interpolate(coarser.float(), scale_factor=2.0, mode="nearest")
                coarser = lateral + upsampled
            else:
                coarser = lateral
            features[level] = coarser
        pos = [self.position_encoding(f).to(f.dtype) for f in features]
        return features, pos


class ImageEncoder(nn.Module):
    """Trunk + neck; ``scalp`` drops that many of the lowest-resolution levels from the output."""

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"trunk channels {trunk.channel_list} != neck channels {neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, x: Tensor) -> dict:
        """(B, 3, H, W) normalised image -> dict with ``vision_features`` (lowest-res kept level,
        (B, d_model, H/16, W/16) with scalp 1), ``vision_pos_enc`` and ``backbone_fpn`` (lists, highest
        resolution first)."""
        features, pos = self.neck(self.trunk(x))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


def build_image_encoder(embed_dim: int, num_heads: int, stages: Sequence[int], global_att_blocks: Sequence[int],
                        window_spec: Sequence[int], window_pos_embed_bkg_spatial_size: tuple[int, int],
                        backbone_channel_list: Sequence[int]) -> ImageEncoder:
    """The standard SAM 2 image encoder: 256-d FPN, nearest top-down fusion at levels 2 and 3, scalp 1."""
    trunk = Hiera(embed_dim=embed_dim, num_heads=num_heads, stages=stages, global_att_blocks=global_att_blocks,
                  window_spec=window_spec, window_pos_embed_bkg_spatial_size=tuple(window_pos_embed_bkg_spatial_size))
    neck = FpnNeck(d_model=256, backbone_channel_list=backbone_channel_list, fpn_top_down_levels=(2, 3))
    return ImageEncoder(trunk, neck, scalp=1)
