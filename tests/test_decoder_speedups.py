"""The click path's shortcuts compute what the plain formulation computes.

The SAM heads' parity with Meta's reference is in test_parity_sam_heads.py; here each shortcut is checked
against the straightforward version of the same step: the cached dense PE (and that it follows the
buffer), the 2x2 transposed convolutions as one matrix product, the transformer on flattened tokens,
the biases added apart, and hole filling in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numerics import assert_same_computation
from torch import nn

from napari_sam2.engine.postprocess import HOLE_FILL_LOGIT, fill_holes
from napari_sam2.model.mask_decoder import MaskDecoder, _block_weight, _FrameMemo, _from_blocks, _to_blocks
from napari_sam2.model.prompt_encoder import PromptEncoder
from napari_sam2.model.two_way_transformer import Attention, TwoWayTransformer, _project, image_tokens


def _prompt_encoder(grid: int = 8) -> PromptEncoder:
    torch.manual_seed(0)
    return PromptEncoder(embed_dim=32, image_embedding_size=(grid, grid), input_image_size=(16 * grid, 16 * grid),
                         mask_in_chans=16).eval()


def _uncached_pe(pe: PromptEncoder) -> torch.Tensor:
    return pe.pe_layer(pe.image_embedding_size).unsqueeze(0)


# ------------------------------------------------------------------------------------------ dense PE
def test_dense_pe_is_cached_and_exact() -> None:
    pe = _prompt_encoder()
    first = pe.get_dense_pe()
    assert pe.get_dense_pe() is first
    assert torch.equal(first, _uncached_pe(pe))
    assert image_tokens(first).data_ptr() == first.data_ptr()  # channels-last: its token view is no copy


def test_dense_pe_follows_the_buffer() -> None:
    """An in-place change (as load_state_dict makes) or a new buffer (as .to() makes): recomputed."""
    pe = _prompt_encoder()
    old = pe.get_dense_pe()
    with torch.no_grad():
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    changed = pe.get_dense_pe()
    assert not torch.equal(changed, old) and torch.equal(changed, _uncached_pe(pe))

    state = {k: torch.randn_like(v) for k, v in pe.state_dict().items()}
    pe.load_state_dict(state)
    assert torch.equal(pe.get_dense_pe(), _uncached_pe(pe))

    pe.pe_layer.positional_encoding_gaussian_matrix = torch.randn(2, 16)
    assert torch.equal(pe.get_dense_pe(), _uncached_pe(pe))


def test_dense_pe_cached_under_inference_mode_is_an_ordinary_tensor() -> None:
    pe = _prompt_encoder()
    with torch.inference_mode():
        cached = pe.get_dense_pe()
    assert not cached.is_inference()
    weight = torch.ones(1, requires_grad=True)
    (cached * weight).sum().backward()  # autograd may save it
    assert weight.grad is not None


def test_dense_pe_of_an_inference_buffer_is_not_cached() -> None:
    with torch.inference_mode():
        pe = _prompt_encoder()
        first = pe.get_dense_pe()
        pe.pe_layer.positional_encoding_gaussian_matrix.add_(1.0)  # not visible to a version check
        assert torch.equal(pe.get_dense_pe(), _uncached_pe(pe))
        assert not torch.equal(pe.get_dense_pe(), first)


# ------------------------------------------------------------------------------------------ upscaling
@pytest.mark.parametrize("levels", [1, 2])
def test_blocked_pixel_order_round_trip(levels: int) -> None:
    """_to_blocks orders pixels as ``levels`` stride-2 upscalings produce them; _from_blocks undoes it."""
    h, w, side = 3, 5, 2 ** levels
    x = torch.arange(2 * 4 * side * h * side * w, dtype=torch.float32).reshape(2, 4, side * h, side * w)
    blocks = _to_blocks(x, (h, w), levels)
    assert blocks.shape == (2, h, w, *[2] * (2 * levels), 4)
    i, j, c = 2, 3, 1
    offsets = [1, 0, 0, 1][:2 * levels]  # dy1, dx1, dy2, dx2
    row = side * i + sum(offsets[2 * k] * 2 ** (levels - 1 - k) for k in range(levels))
    col = side * j + sum(offsets[2 * k + 1] * 2 ** (levels - 1 - k) for k in range(levels))
    assert blocks[(1, i, j, *offsets, c)] == x[1, c, row, col]
    assert torch.equal(_from_blocks(blocks.movedim(-1, 1), levels), x)


@pytest.mark.parametrize("c_in, c_out", [(256, 64), (64, 32)])
@torch.no_grad()
def test_block_weight_is_the_transposed_convolution(c_in: int, c_out: int) -> None:
    """pixels (B, h*w, C_in) @ _block_weight = the convolution's 2x2 output blocks, columns (dy, dx, c)."""
    torch.manual_seed(1)
    deconv = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
    h, w = 6, 10
    x = torch.randn(3, c_in, h, w)
    blocks = image_tokens(x) @ _block_weight(deconv) + deconv.bias.repeat(4)
    expected = _to_blocks(deconv(x), (h, w), levels=1).reshape(3, h * w, 4 * c_out)
    assert_same_computation(blocks, expected, "2x2 transposed convolution")


@torch.no_grad()
def test_masks_match_the_convolutions() -> None:
    """The decoder's upscaling + per-mask products (with and without high-res features) against the
    module sequence as built, for one image shared by several prompts and for one image per prompt."""
    torch.manual_seed(2)
    dim, h, w = 64, 4, 6
    for high_res in (True, False):
        md = MaskDecoder(transformer_dim=dim, transformer=nn.Identity(), use_high_res_features=high_res).eval()
        for feat_batch in (1, 2):
            src = torch.randn(2, dim, h, w)
            feats = [torch.randn(feat_batch, dim // 8, 4 * h, 4 * w), torch.randn(feat_batch, dim // 4, 2 * h, 2 * w)]
            hyper_in = torch.randn(2, 4, dim // 8)
            deconv1, norm1, act1, deconv2, act2 = md.output_upscaling
            if high_res:
                upscaled = act2(deconv2(act1(norm1(deconv1(src) + feats[1]))) + feats[0])
            else:
                upscaled = md.output_upscaling(src)
            expected = (hyper_in @ upscaled.flatten(2)).reshape(2, 4, 4 * h, 4 * w)
            ours = md._masks(image_tokens(src), (h, w), feats if high_res else None, hyper_in)
            assert ours.shape == expected.shape and ours.is_contiguous()
            assert_same_computation(ours, expected, f"masks high_res={high_res}")


@torch.no_grad()
def test_rearranged_high_res_features_are_kept_per_frame() -> None:
    """Kept for the same feature tensors; recomputed for new ones, after an in-place change or a new
    bias; dropped when the features are freed."""
    torch.manual_seed(3)
    md = MaskDecoder(transformer_dim=64, transformer=nn.Identity()).eval()
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)]
    first = md.high_res_blocks(feats)
    assert md.high_res_blocks(feats) is first
    assert torch.equal(first[0], md._rearrange_high_res(feats)[0])

    feats[1].add_(1.0)
    changed = md.high_res_blocks(feats)
    assert changed is not first and torch.equal(changed[0], md._rearrange_high_res(feats)[0])
    md.output_upscaling[3].bias.add_(1.0)
    assert md.high_res_blocks(feats) is not changed

    other = [f.clone() for f in feats]
    assert md.high_res_blocks(other) is not md.high_res_blocks(feats)
    assert len(md._blocks_memo) == 2
    del other
    assert len(md._blocks_memo) == 1  # freed features leave the memo


def test_frame_memo_skips_autograd_and_copies_empty() -> None:
    import copy

    memo = _FrameMemo(capacity=1)
    x = torch.ones(3, requires_grad=True)
    calls = []
    for _ in range(2):
        memo.get([x], lambda: calls.append(1) or x * 2)
    assert len(calls) == 2 and not len(memo)  # autograd records: nothing kept
    with torch.no_grad():
        memo.get([x], lambda: x * 2)
        assert len(memo) == 1
        y = torch.zeros(2)
        memo.get([y], lambda: y + 1)
    assert list(memo._entries) == [(id(y),)]  # capacity 1: the older entry went
    assert not len(copy.deepcopy(memo))


def test_frame_memo_of_inference_tensors() -> None:
    memo = _FrameMemo()
    with torch.inference_mode():
        x = torch.ones(3)
        first = memo.get([x], lambda: x * 2)
        assert memo.get([x], lambda: x * 3) is first


# ----------------------------------------------------------------------------------------- transformer
@torch.no_grad()
def test_transformer_forward_equals_forward_tokens() -> None:
    torch.manual_seed(3)
    tr = TwoWayTransformer(depth=2, embedding_dim=64, num_heads=8, mlp_dim=128).eval()
    image, pe = torch.randn(2, 64, 5, 7), torch.randn(1, 64, 5, 7)
    tokens = torch.randn(2, 9, 64)
    q1, k1 = tr(image, pe, tokens)
    q2, k2 = tr.forward_tokens(image_tokens(image), image_tokens(pe), tokens)
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    assert k1.shape == (2, 35, 64)


@torch.no_grad()
def test_bias_apart_is_the_strided_linear() -> None:
    """Bias added apart = what torch does for a transposed input, and nn.Linear on a contiguous one (other orders of
    the same sums: the parity standard, whatever the CPU's BLAS does)."""
    torch.manual_seed(4)
    layer = nn.Linear(256, 128)
    strided = torch.randn(1, 256, 4096).transpose(1, 2)
    contiguous = strided.contiguous()
    assert_same_computation(_project(layer, contiguous, True), layer(strided), "bias apart vs strided")
    assert torch.equal(_project(layer, contiguous, False), layer(contiguous))
    assert_same_computation(_project(layer, contiguous, True), layer(contiguous), "bias apart")

    attn = Attention(64, 4, downsample_rate=2).eval()
    q, kv = torch.randn(2, 3, 64), torch.randn(2, 20, 64)
    plain = attn(q, kv, kv)
    assert_same_computation(attn(q, kv, kv, (True, True, True)), plain, "attention, biases apart")


@torch.no_grad()
def test_decoder_broadcasts_one_image_over_prompts() -> None:
    """repeat_image: one image for several prompts equals the image repeated (no copy needed)."""
    torch.manual_seed(5)
    dim, grid = 32, 4
    md = MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(2, dim, 4, 64)).eval()
    pe = PromptEncoder(dim, (grid, grid), (16 * grid, 16 * grid), 16).eval()
    sparse, dense = pe((torch.rand(3, 2, 2) * 16 * grid, torch.ones(3, 2, dtype=torch.int32)), None, None)
    image = torch.randn(1, dim, grid, grid)
    feats = [torch.randn(1, dim // 8, 4 * grid, 4 * grid), torch.randn(1, dim // 4, 2 * grid, 2 * grid)]
    shared = md(image, pe.get_dense_pe(), sparse, dense, True, True, feats)
    repeated = md(image.expand(3, -1, -1, -1), pe.get_dense_pe(), sparse, dense, True, False,
                  [f.expand(3, -1, -1, -1) for f in feats])
    for a, b in zip(shared, repeated, strict=True):
        assert_same_computation(a, b, "one image broadcast vs repeated")
    with pytest.raises(ValueError, match="image embeddings"):
        md(image.expand(2, -1, -1, -1), pe.get_dense_pe(), sparse, dense, True, False, feats)


# ------------------------------------------------------------------------------------------ hole filling
def _torch_fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """The hole filling written with torch ops only (the path non-CPU / low-precision logits take)."""
    from scipy import ndimage

    background = (logits <= 0).numpy().reshape(-1, *logits.shape[-2:])
    holes = np.zeros_like(background)
    for i, plane in enumerate(background):
        components, _ = ndimage.label(plane, structure=np.ones((3, 3), dtype=bool))
        small = np.bincount(components.ravel()) <= max_area
        small[0] = False
        holes[i] = small[components]
    return torch.where(torch.from_numpy(holes.reshape(logits.shape)),
                       torch.tensor(HOLE_FILL_LOGIT, dtype=logits.dtype), logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_hole_filling_equals_torch(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    logits = F.avg_pool2d(torch.randn(3, 1, 64, 64, generator=gen), 3, 1, 1).to(dtype)  # blobs and holes
    before = logits.clone()
    for area in (1, 8, 40):
        out = fill_holes(logits, area)
        assert out.dtype == dtype and torch.equal(out, _torch_fill_holes(logits, area))
        assert (out != logits).sum() > 10  # every plane has holes of each size
    assert torch.equal(logits, before)
    no_holes = torch.full((1, 1, 16, 16), 3.0, dtype=dtype)
    assert fill_holes(no_holes, 8) is no_holes


def test_hole_filling_of_logits_that_require_grad() -> None:
    logits = torch.full((1, 1, 8, 8), 2.0, requires_grad=True)
    with torch.no_grad():
        hole = logits.clone()
        hole[0, 0, 3, 3] = -1.0
    hole.requires_grad_(True)
    out = fill_holes(hole, 4)
    assert out[0, 0, 3, 3] == torch.tensor(HOLE_FILL_LOGIT) and out.requires_grad
