"""Parity of our SAM heads (prompt encoder, two-way transformer, mask decoder) with Meta's reference.

Both sides are loaded with the same random ``sam2.1_hiera_t`` weights and fed identical random
inputs; outputs must agree to 1e-4 (in practice they agree bit for bit). Run with ``-s`` to see the
measured differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from reference_support import max_abs_diff, reference_with_random_weights
from torch import nn

from napari_sam2.model.mask_decoder import MaskDecoder
from napari_sam2.model.prompt_encoder import PromptEncoder
from napari_sam2.model.two_way_transformer import TwoWayTransformer

pytestmark = pytest.mark.reference

TOL = 1e-4
EMBED = 256
PE_PREFIX = "sam_prompt_encoder."
MD_PREFIX = "sam_mask_decoder."


@dataclass
class Heads:
    size: int  # input image size in pixels
    grid: int  # image-embedding size (size // 16)
    ref_pe: nn.Module
    ref_md: nn.Module
    pe: PromptEncoder
    md: MaskDecoder
    state_dict: dict[str, torch.Tensor]


def _subset(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=[1024, 256], ids=lambda s: f"img{s}")
def heads(request) -> Heads:
    size = request.param
    ref, sd = reference_with_random_weights("sam2.1_hiera_t", image_size=size)
    grid = size // 16
    pe = PromptEncoder(embed_dim=EMBED, image_embedding_size=(grid, grid), input_image_size=(size, size),
                       mask_in_chans=16)
    md = MaskDecoder(transformer_dim=EMBED,
                     transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED, mlp_dim=2048, num_heads=8))
    pe.load_state_dict(_subset(sd, PE_PREFIX), strict=True)
    md.load_state_dict(_subset(sd, MD_PREFIX), strict=True)
    return Heads(size, grid, ref.sam_prompt_encoder, ref.sam_mask_decoder, pe.eval(), md.eval(), sd)


def _check(tag: str, ours, theirs) -> None:
    diff = max_abs_diff(ours, theirs)
    print(f"{tag}: max|diff| = {diff:.3g}")
    assert diff <= TOL, f"{tag}: max abs diff {diff:.3g} > {TOL}"


def _points(h: Heads, batch: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clicks in input-image pixels, with every label value (-1..3) present."""
    coords = torch.rand(batch, n, 2, generator=gen) * h.size
    labels = torch.arange(batch * n, dtype=torch.int32).reshape(batch, n) % 5 - 1
    return coords, labels


# --------------------------------------------------------------------------------------------- weights
def test_state_dict_keys_and_shapes(heads: Heads) -> None:
    for prefix, module in ((PE_PREFIX, heads.pe), (MD_PREFIX, heads.md)):
        ours = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
        ref = {k: tuple(v.shape) for k, v in heads.state_dict.items() if k.startswith(prefix)}
        assert ours == ref
    assert PE_PREFIX + "pe_layer.positional_encoding_gaussian_matrix" in heads.state_dict
    assert "pe_layer.positional_encoding_gaussian_matrix" in dict(heads.pe.named_buffers())


# ------------------------------------------------------------------------------------- prompt encoder
@torch.no_grad()
def test_dense_pe(heads: Heads) -> None:
    ours = heads.pe.get_dense_pe()
    assert ours.shape == (1, EMBED, heads.grid, heads.grid)
    _check(f"[{heads.size}] dense PE", ours, heads.ref_pe.get_dense_pe())


@pytest.mark.parametrize("case", ["points", "points+mask", "mask", "dummy_point", "box", "points+box"])
@torch.no_grad()
def test_prompt_encoder(heads: Heads, case: str) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = 3
    points = _points(heads, batch, 4, gen) if "points" in case else None
    if case == "dummy_point":  # what SAM 2 feeds on frames without clicks
        points = (torch.zeros(batch, 1, 2), -torch.ones(batch, 1, dtype=torch.int32))
    boxes = None
    if "box" in case:
        corner = torch.rand(batch, 2, generator=gen) * heads.size / 2
        boxes = torch.cat([corner, corner + heads.size / 3], dim=1)
    masks = None
    if "mask" in case:
        side = 4 * heads.grid
        masks = 5 * torch.randn(batch, 1, side, side, generator=gen)

    sparse, dense = heads.pe(points, boxes, masks)
    ref_sparse, ref_dense = heads.ref_pe(points, boxes, masks)
    n_sparse = (points[0].shape[1] + (boxes is None) if points is not None else 0) + (2 if boxes is not None else 0)
    assert sparse.shape == (batch, n_sparse, EMBED)
    assert dense.shape == (batch, EMBED, heads.grid, heads.grid)
    _check(f"[{heads.size}] prompt encoder {case}: sparse", sparse, ref_sparse)
    _check(f"[{heads.size}] prompt encoder {case}: dense", dense, ref_dense)


# ---------------------------------------------------------------------------------------- mask decoder
def _decoder_inputs(h: Heads, batch: int, image_batch: int, feat_batch: int, gen: torch.Generator,
                    with_mask: bool = False):
    g = h.grid
    points = _points(h, batch, 2, gen)
    masks = 5 * torch.randn(batch, 1, 4 * g, 4 * g, generator=gen) if with_mask else None
    sparse, dense = h.pe(points, None, masks)
    image = torch.randn(image_batch, EMBED, g, g, generator=gen)
    feat_s0 = torch.randn(feat_batch, EMBED // 8, 4 * g, 4 * g, generator=gen)
    feat_s1 = torch.randn(feat_batch, EMBED // 4, 2 * g, 2 * g, generator=gen)
    return image, sparse, dense, [feat_s0, feat_s1]


def _run_both(h: Heads, image, sparse, dense, feats, multimask: bool, repeat_image: bool):
    args = (image, h.pe.get_dense_pe(), sparse, dense)
    kwargs = dict(multimask_output=multimask, repeat_image=repeat_image, high_res_features=feats)
    return h.md(*args, **kwargs), h.ref_md(*args, **kwargs)


def _check_decoder(tag: str, ours, ref, batch: int, multimask: bool, grid: int) -> None:
    n_out = 3 if multimask else 1
    masks, iou, tokens, score = ours
    assert masks.shape == (batch, n_out, 4 * grid, 4 * grid)
    assert iou.shape == (batch, n_out)
    assert tokens.shape == (batch, n_out, EMBED)
    assert score.shape == (batch, 1)
    for name, a, b in zip(("masks", "iou", "sam_tokens", "object_score"), ours, ref):
        _check(f"{tag}: {name}", a, b)


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("repeat_image", [False, True], ids=["per_prompt_image", "repeat_image"])
@torch.no_grad()
def test_mask_decoder(heads: Heads, multimask: bool, repeat_image: bool) -> None:
    """Batch of 2 prompts; with repeat_image they share one image embedding and (broadcast) high-res features."""
    gen = torch.Generator().manual_seed(2)
    batch = 2
    image_batch = 1 if repeat_image else batch
    inputs = _decoder_inputs(heads, batch, image_batch, image_batch, gen, with_mask=not multimask)
    ours, ref = _run_both(heads, *inputs, multimask=multimask, repeat_image=repeat_image)
    tag = f"[{heads.size}] decoder multimask={multimask} repeat_image={repeat_image}"
    _check_decoder(tag, ours, ref, batch, multimask, heads.grid)


@torch.no_grad()
def test_mask_decoder_stability_fallback(heads: Heads) -> None:
    """Single-mask output: prompt 0 has an unstable mask 0 (falls back), prompt 1 a stable one.

    Stability grows with the logit magnitude, so prompt 1's stride-4 features are scaled up.
    """
    gen = torch.Generator().manual_seed(3)
    batch = 2
    image, sparse, dense, (feat_s0, feat_s1) = _decoder_inputs(heads, batch, batch, batch, gen)
    feat_s0[1] *= 30.0
    feats = [feat_s0, feat_s1]
    ours, ref = _run_both(heads, image, sparse, dense, feats, multimask=False, repeat_image=False)
    _check_decoder(f"[{heads.size}] decoder stability fallback", ours, ref, batch, False, heads.grid)

    all_masks, all_iou, all_tokens, _ = heads.md.predict_masks(image, heads.pe.get_dense_pe(), sparse, dense,
                                                               False, feats)
    stability = heads.md._stability_scores(all_masks[:, :1]).flatten()
    print(f"[{heads.size}] stability of mask 0: {stability.tolist()}")
    thresh = heads.md.dynamic_multimask_stability_thresh
    assert stability[0] < thresh <= stability[1]
    best = 1 + all_iou[0, 1:].argmax()
    masks, iou, tokens, _ = ours
    assert torch.equal(masks[0, 0], all_masks[0, best]) and torch.equal(iou[0, 0], all_iou[0, best])
    assert torch.equal(masks[1, 0], all_masks[1, 0]) and torch.equal(iou[1, 0], all_iou[1, 0])
    assert torch.equal(tokens[:, 0], all_tokens[:, 0])  # the pointer token stays token 0 after a fallback
