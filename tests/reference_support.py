"""Helpers for parity tests against Meta's reference implementation (``sam2==1.1.0``, tests only).

Both implementations are built from the *same* random state dict, so every comparison is between real
outputs of the two code bases.
"""

from __future__ import annotations

import pytest
import torch

CONFIG_NAMES = [
    "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l",
    "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l",
]


def reference_yaml(config: str) -> str:
    """Hydra config name of the reference for one of our short config names."""
    folder = "sam2.1" if config.startswith("sam2.1") else "sam2"
    return f"configs/{folder}/{config}.yaml"


def build_reference(config: str, image_size: int = 1024, extra: list[str] | None = None,
                    correct_as_cond: bool = True, device: str = "cpu"):
    """The reference ``SAM2VideoPredictor`` (random weights, eval mode, fp32, on ``device``).

    ``correct_as_cond`` turns on ``add_all_frames_to_correct_as_cond``, the semantics our session follows.
    """
    build = pytest.importorskip("sam2.build_sam", reason="reference sam2==1.1.0 not installed")
    overrides = [f"++model.image_size={image_size}"]
    if correct_as_cond:
        overrides.append("++model.add_all_frames_to_correct_as_cond=true")
    overrides += extra or []
    model = build.build_sam2_video_predictor(reference_yaml(config), None, device=device,
                                             hydra_overrides_extra=overrides)
    return model.eval()


@torch.no_grad()
def randomize_state_dict(state_dict: dict[str, torch.Tensor], seed: int = 0,
                         object_score_bias: float = 8.0) -> dict[str, torch.Tensor]:
    """A random state dict of the same keys/shapes, with every tensor away from its trivial init.

    Weights keep the reference's init scale but are redrawn; norms, biases and layer scales get noise
    so that they matter. The object-score head's last bias is set high so that objects "appear" and
    logits are not the no-object constant.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state_dict.items():
        v = value.detach().clone().float()
        if v.ndim >= 2:
            fan_in = v[0].numel() if v.ndim > 1 else 1
            std = max(v.std().item(), 1.0 / fan_in ** 0.5) if v.numel() > 1 else 0.02
            v = torch.randn(v.shape, generator=gen) * std
        elif key.endswith("gamma"):  # ConvNeXt layer scale, initialised at 1e-6
            v = 0.1 + 0.05 * torch.randn(v.shape, generator=gen)
        elif key.endswith(".weight") and ("norm" in key or _is_layernorm_weight(key)):
            v = 1.0 + 0.1 * torch.randn(v.shape, generator=gen)
        else:
            v = 0.05 * torch.randn(v.shape, generator=gen)
        out[key] = v
    bias_key = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
    if bias_key in out:
        out[bias_key] = torch.full_like(out[bias_key], object_score_bias)
    return out


def _is_layernorm_weight(key: str) -> bool:
    # LayerNorm2d modules inside nn.Sequential have numeric names: mask_downscaling.1/.4,
    # mask_downsampler.encoder.1/4/7/10, output_upscaling.1
    parts = key.split(".")
    return parts[-1] == "weight" and parts[-2].isdigit() and (
        ("mask_downscaling" in key and parts[-2] in {"1", "4"})
        or ("mask_downsampler" in key and parts[-2] in {"1", "4", "7", "10"})
        or ("output_upscaling" in key and parts[-2] == "1")
    )


def reference_with_random_weights(config: str, image_size: int = 1024, seed: int = 0, **kwargs):
    """(reference predictor, state dict) with the randomised weights loaded into the reference."""
    torch.manual_seed(seed)
    ref = build_reference(config, image_size=image_size, **kwargs)
    sd = randomize_state_dict(ref.state_dict(), seed=seed)
    ref.load_state_dict(sd, strict=True)
    return ref, sd


def max_abs_diff(a, b) -> float:
    a = torch.as_tensor(a).detach().to("cpu", torch.float32)  # the reference's outputs may be on a GPU
    b = torch.as_tensor(b).detach().to("cpu", torch.float32)
    assert a.shape == b.shape, f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item() if a.numel() else 0.0


def fix_reference_bf16_memory_bug(reference) -> None:
    """Make the reference's memory attention upcast bf16 memories, as ours does.

    In plain fp32 the reference crashes ("mat1 and mat2 must have the same dtype") when a frame has
    spatial memories but no object pointers (an object tracked from a frame before its first prompt):
    its bf16 memories are only promoted to fp32 by concatenation with the pointers. With this patch the
    reference computes exactly what it computes whenever pointers are present, so ours can be compared
    with it on those frames too.
    """
    attention = reference.memory_attention
    original = attention.forward

    def forward(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        return original(curr=curr, memory=memory.float(), curr_pos=curr_pos, memory_pos=memory_pos,
                        num_obj_ptr_tokens=num_obj_ptr_tokens)

    attention.forward = forward
