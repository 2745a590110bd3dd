"""Two-way transformer of the SAM mask decoder.

Prompt tokens and image tokens update each other: in every block the tokens self-attend, attend to
the image, go through an MLP, and then the image attends back to the tokens. Parameter names follow
the SAM 2 checkpoint (``sam_mask_decoder.transformer.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP


class Attention(nn.Module):
    """Multi-head attention whose inner width may be ``embedding_dim // downsample_rate``.

    The cross-attentions of the decoder run at half width (128 for 256-d tokens) to save compute on
    the 4096 image tokens.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1,
                 kv_in_dim: int | None = None) -> None:
        super().__init__()
        inner = embedding_dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the inner width {inner}")
        kv_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.num_heads = num_heads
        self.head_dim = inner // num_heads
        self.q_proj = nn.Linear(embedding_dim, inner)
        self.k_proj = nn.Linear(kv_dim, inner)
        self.v_proj = nn.Linear(kv_dim, inner)
        self.out_proj = nn.Linear(inner, embedding_dim)

    def _split(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, heads, N, C/heads)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _merge(self, out: Tensor) -> Tensor:
        """(B, heads, N, C/heads) attention output -> output projection (B, N, embedding_dim)."""
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                bias_apart: tuple[bool, bool, bool] = (False, False, False)) -> Tensor:
        """Attend queries (B, Nq, C) to keys/values (B, Nk, C); returns (B, Nq, C).

        ``bias_apart`` (for q, k, v): add that projection's bias after the matrix product instead of
        inside it (see :func:`_project`).
        """
        q_bias, k_bias, v_bias = bias_apart
        out = F.scaled_dot_product_attention(self._split(_project(self.q_proj, q, q_bias)),
                                             self._split(_project(self.k_proj, k, k_bias)),
                                             self._split(_project(self.v_proj, v, v_bias)))
        return self._merge(out)


def _project(layer: nn.Linear, x: Tensor, bias_apart: bool) -> Tensor:
    """``layer(x)``; with ``bias_apart`` as a product followed by a separate bias addition.

    torch adds the bias inside the product (addmm) for contiguous inputs but afterwards for strided
    ones, and the two round differently. The reference's first decoder block sees its image tokens as a
    transposed view, so it takes the second route there; doing the same on our contiguous tokens keeps
    the decoder's sums bit-identical to the reference's.
    """
    if not bias_apart:
        return layer(x)
    return torch.matmul(x, layer.weight.t()) + layer.bias


class TwoWayAttentionBlock(nn.Module):
    """One decoder block: token self-attn, token→image attn, token MLP, image→token attn (post-norm).

    ``skip_first_layer_pe`` (the first block): the self-attention sees the raw tokens without their
    PE and its output *replaces* the tokens (no residual), as SAM was trained.
    """

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe
        # Projections of the image tokens add their bias apart, as torch does in the reference's first
        # block (see _project); set by TwoWayTransformer.
        self.image_bias_apart = False

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, Nq, C) tokens, keys (B, Nk, C) image tokens; PEs of the same shapes (or batch 1)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        # The image tokens do not change before the image->token attention, so keys + PE (4096 x 256)
        # is formed once for both cross-attentions.
        k = keys + key_pe
        q = queries + query_pe
        apart = self.image_bias_apart
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys, (False, apart, apart)))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, (apart, False, False)))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of ``depth`` two-way blocks plus a final token→image attention.

    Args:
        depth: number of blocks (2 in SAM 2).
        embedding_dim: token width (256).
        num_heads: attention heads (8).
        mlp_dim: hidden width of the token MLP (2048).
        activation: MLP activation (ReLU).
        attention_downsample_rate: inner-width divisor of the cross-attentions (2).
    """

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        if depth:
            self.layers[0].image_bias_apart = True
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Run the decoder transformer.

        Args:
            image_embedding: (B, C, h, w) image features (plus dense prompt).
            image_pe: (B or 1, C, h, w) their position encoding.
            point_embedding: (B, N, C) output and prompt tokens; also used as the tokens' PE.

        Returns:
            the updated tokens (B, N, C) and image tokens (B, h*w, C).
        """
        return self.forward_tokens(image_tokens(image_embedding), image_tokens(image_pe), point_embedding)

    def forward_tokens(self, keys: Tensor, key_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` on image tokens already flattened: keys (B, h*w, C), key_pe (B or 1, h*w, C).

        Contiguous tokens keep the element-wise passes over the h*w image tokens (PE additions,
        residuals, layer norms) on contiguous memory: on a transposed view each is a strided pass, 3-4x
        slower, and layer_norm copies its input first.
        """
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)

        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys


def image_tokens(image: Tensor) -> Tensor:
    """(B, C, h, w) map -> contiguous (B, h*w, C) tokens; no copy when the map is channels-last in memory."""
    return image.flatten(2).transpose(1, 2).contiguous()
