"""SAM prompt encoder: turns clicks, boxes and mask prompts into tokens for the mask decoder.

Sparse prompts (points, box corners) become one 256-d token each: a random-Fourier encoding of the
position plus a learned embedding for the point's role. A dense prompt (a low-resolution mask) is
convolved down to the image-embedding grid; without one, a learned "no mask" vector is broadcast.
Parameter names follow the SAM 2 checkpoint (``sam_prompt_encoder.*``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .common import LayerNorm2d
from .mask_decoder import single_prompt_cpu_threads

# Point labels understood by the encoder.
LABEL_NOT_A_POINT = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class PositionEmbeddingRandom(nn.Module):
    """Encode 2-D positions with random spatial frequencies (Fourier features).

    A position ``p`` in [0, 1]^2 maps to ``cat(sin(2π·(2p-1)·G), cos(2π·(2p-1)·G))`` with a fixed
    Gaussian matrix ``G`` of shape (2, num_pos_feats), so the output has ``2*num_pos_feats`` channels.
    ``G`` is a persistent buffer: it comes from the checkpoint, not from training.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _encode_unit(self, xy: Tensor) -> Tensor:
        """(..., 2) positions in [0, 1] as (x, y) -> (..., 2*num_pos_feats) features."""
        phase = (2 * xy - 1) @ self.positional_encoding_gaussian_matrix
        phase = 2 * math.pi * phase
        return torch.cat([phase.sin(), phase.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """Dense (C, H, W) encoding of the centres of an H×W grid of cells."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        xy = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)  # (H, W, 2)
        return self._encode_unit(xy).permute(2, 0, 1)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Encode (B, N, 2) pixel coordinates given as (x, y) in an image of size (H, W) -> (B, N, C)."""
        height, width = image_size
        x = coords[..., 0] / width
        y = coords[..., 1] / height
        return self._encode_unit(torch.stack([x, y], dim=-1).float())


class PromptEncoder(nn.Module):
    """Embed point, box and mask prompts for the SAM mask decoder.

    Args:
        embed_dim: token width (256 in SAM 2).
        image_embedding_size: (h, w) of the image embedding the decoder attends to (image_size // 16).
        input_image_size: (H, W) of the model input in pixels; point coordinates live in this space.
        mask_in_chans: hidden width of the mask-downscaling convolutions (16 in SAM 2).
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int],
                 input_image_size: tuple[int, int], mask_in_chans: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # One learned offset per point role: negative, positive, box top-left, box bottom-right.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        # Mask prompts come at 4x the embedding resolution and are reduced by two stride-2 convs.
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        hidden = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden, kernel_size=2, stride=2),
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: tuple[tuple, Tensor] | None = None  # (buffer key, PE), see get_dense_pe

    def get_dense_pe(self) -> Tensor:
        """(1, C, h, w) position encoding of the image-embedding grid, the keys' PE in the decoder.

        It depends only on the Gaussian buffer, so it is computed once and reused (sin/cos of 1M values on
        every click otherwise); the cache follows the buffer's device, dtype, storage and in-place version.
        The tensor is channels-last in memory (its (1, h*w, C) view is contiguous, the layout the decoder
        works in). Callers must not modify it in place.
        """
        gaussian = self.pe_layer.positional_encoding_gaussian_matrix
        if gaussian.is_inference():  # no version counter to tell an in-place change: not cached
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)
        key = (gaussian.data_ptr(), gaussian.device, gaussian.dtype, gaussian._version, self.image_embedding_size)
        if self._dense_pe is None or self._dense_pe[0] != key:
            # An ordinary tensor even under inference mode, so that autograd may save it later.
            with torch.inference_mode(False), torch.no_grad():
                self._dense_pe = (key, self.pe_layer(self.image_embedding_size).unsqueeze(0))
        return self._dense_pe[1]

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """(B, N, 2) pixel coords + (B, N) labels -> (B, N[+1], C) tokens.

        With ``pad`` a (0, 0) "not-a-point" token is appended; SAM was trained to always see it when
        no box is given.
        """
        coords = coords + 0.5  # pixel index -> pixel centre
        if pad:
            b = coords.shape[0]
            coords = torch.cat([coords, coords.new_zeros(b, 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), LABEL_NOT_A_POINT)], dim=1)
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)

        role_table = torch.cat([e.weight for e in self.point_embeddings], dim=0)  # (4, C)
        has_role = (labels >= 0) & (labels < self.num_point_embeddings)
        role = role_table[labels.long().clamp(0, self.num_point_embeddings - 1)]
        tokens = torch.where(has_role[..., None], pe + role, pe)
        not_a_point = (labels == LABEL_NOT_A_POINT)[..., None]
        return torch.where(not_a_point, self.not_a_point_embed.weight.expand_as(tokens), tokens)

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """(B, 4) boxes as x0, y0, x1, y1 -> (B, 2, C) corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        offsets = torch.cat([self.point_embeddings[LABEL_BOX_TOP_LEFT].weight,
                             self.point_embeddings[LABEL_BOX_BOTTOM_RIGHT].weight], dim=0)
        return pe + offsets

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None,
                masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """Embed prompts.

        Args:
            points: (coords (B, N, 2) as (x, y) in input-image pixels, labels (B, N)) or None.
            boxes: (B, 4) boxes or None. SAM 2 passes boxes as points labelled 2/3 instead.
            masks: (B, 1, 4h, 4w) mask logits or None.

        Returns:
            sparse (B, N', C) tokens (points, then boxes) and dense (B, C, h, w) embeddings.
        """
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        device = self.no_mask_embed.weight.device

        sparse_parts = [torch.empty(batch, 0, self.embed_dim, device=device)]
        if points is not None:
            sparse_parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse_parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(sparse_parts, dim=1)

        if masks is not None:
            with single_prompt_cpu_threads(batch, masks.device):
                dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense
