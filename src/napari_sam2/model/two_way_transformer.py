"""Two-way transformer of the SAM mask decoder.

Prompt tokens and image tokens update each other: in every block the tokens self-attend, attend to
the image, go through an MLP, and then the image attends back to the tokens. Parameter names follow
the SAM 2 checkpoint (``sam_mask_decoder.transformer.*``).
"""

from __future__ import annotations

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

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attend queries (B, Nq, C) to keys/values (B, Nk, C); returns (B, Nq, C)."""
        out = F.scaled_dot_product_attention(self._split(self.q_proj(q)), self._split(self.k_proj(k)),
                                             self._split(self.v_proj(v)))
        return self._merge(out)


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

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, Nq, C) tokens, keys (B, Nk, C) image tokens; PEs of the same shapes."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
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
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Run the decoder transformer.

        Args:
            image_embedding: (B, C, h, w) image features (plus dense prompt).
            image_pe: (B, C, h, w) their position encoding.
            point_embedding: (B, N, C) output and prompt tokens; also used as the tokens' PE.

        Returns:
            the updated tokens (B, N, C) and image tokens (B, h*w, C).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)

        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys
