"""2-D axial rotary position embedding (RoPE), as used by SAM 2's memory attention.

A token at column ``x`` and row ``y`` of a ``width x height`` grid (tokens in row-major order) has its
feature pairs ``(2j, 2j+1)`` rotated by an angle. The first half of the pairs rotate with ``x``, the
second half with ``y``; both halves share the frequencies ``theta ** (-4k / dim)`` for k = 0 .. dim/4 - 1.

The tables are real cosine/sine arrays, which run on backends without complex numbers (Apple MPS) and
under torch.compile; on the CPU a complex table cos + i sin does the same rotation as one complex product,
about 10x faster (see :func:`rotate_pairs`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def axial_rope_angles(dim: int, width: int, height: int, theta: float = 10000.0,
                      device: torch.device | str | None = None) -> Tensor:
    """Rotation angles, float32 of shape (width * height, dim // 2), for a row-major token grid.

    Columns ``[0, dim/4)`` hold the x angles and ``[dim/4, dim/2)`` the y angles.
    """
    if dim % 4:
        raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {dim}")
    exponents = torch.arange(0, dim, 4, dtype=torch.float32, device=device)[: dim // 4] / dim
    freqs = 1.0 / (theta ** exponents)
    token = torch.arange(width * height, dtype=torch.float32, device=device)
    col = token % width
    row = torch.div(token, width, rounding_mode="floor")
    return torch.cat([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)


def axial_rope_table(dim: int, width: int, height: int, theta: float = 10000.0,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(cos, sin) tables, each float32 of shape (width * height, dim // 2)."""
    angles = axial_rope_angles(dim, width, height, theta, device)
    return angles.cos(), angles.sin()


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor, cis: Tensor | None = None) -> Tensor:
    """Rotate adjacent feature pairs of ``x`` (..., N, dim) by the per-token angles of (n, dim // 2) tables.

    N may be a multiple of n: ``x`` then holds several grids one after the other (memory frames), each
    rotated alike by the same tables, broadcast rather than repeated. The arithmetic is done in float32 and
    the result cast back to ``x``'s dtype. With ``cis`` (the complex64 table cos + i sin) the rotation is one
    complex product instead of seven passes over ``x``: on the CPU 2 against 21 ms for 7 x 4096 memory keys
    of 256 channels, with the same float32 results.
    """
    grids = x.float().unflatten(-2, (-1, cos.shape[0])).unflatten(-1, (-1, 2))  # (..., grids, n, dim // 2, 2)
    if cis is not None:
        rotated = torch.view_as_real(torch.view_as_complex(grids.contiguous()) * cis)
    else:
        real, imag = grids[..., 0], grids[..., 1]
        rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).flatten(-3, -2).to(x.dtype)
