"""Parity of our image encoder (Hiera trunk + FPN neck) with Meta's reference, fp32 on CPU.

Both encoders load the same randomised weights; every output level is compared.
"""

from __future__ import annotations

import pytest
import torch
from reference_support import max_abs_diff, reference_with_random_weights

from napari_sam2 import build_model
from napari_sam2.model.image_encoder import ImageEncoder

pytestmark = pytest.mark.reference

TOLERANCE = 1e-4
PREFIX = "image_encoder."

def ours(config: str) -> ImageEncoder:
    """Our encoder for a config name such as ``sam2.1_hiera_b+``, randomly initialised, eval mode."""
    return build_model(config, image_size=256, device="cpu").image_encoder.eval()


def encoder_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}


# State-dict keys of the whole model, this encoder included, are compared in test_parity_state_dict.py.
# Cheap sizes for the bigger models; 1024 (the real size) for tiny. The cases cover window padding
# (14 over 16/32/64 tokens, 7 over 8/16/32, 16 over 24, 8 over 12), an upsampled 14x14 background
# embed (b+) and batch > 1.
PARITY_CASES = [
    ("sam2.1_hiera_t", 1024, 1),
    ("sam2.1_hiera_s", 512, 1),
    ("sam2_hiera_s", 256, 2),
    ("sam2.1_hiera_b+", 256, 1),
    ("sam2_hiera_b+", 512, 1),
    ("sam2.1_hiera_l", 256, 1),
    ("sam2_hiera_l", 384, 1),  # large pads only here: 24 tokens with window 16, 12 with window 8
]


@pytest.mark.parametrize("config,image_size,batch", PARITY_CASES)
def test_outputs_match_reference(config: str, image_size: int, batch: int) -> None:
    reference, state_dict = reference_with_random_weights(config, image_size=image_size, seed=0)
    encoder = ours(config)
    encoder.load_state_dict(encoder_weights(state_dict), strict=True)
    image = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        expected = reference.image_encoder(image)
        got = encoder(image)

    assert set(got) == set(expected)
    diffs = {"vision_features": max_abs_diff(got["vision_features"], expected["vision_features"])}
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(got[key]) == len(expected[key]) == 3
        for level, (a, b) in enumerate(zip(got[key], expected[key])):
            diffs[f"{key}[{level}]"] = max_abs_diff(a, b)
    print(config, image_size, diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs
    stride16 = image_size // 16
    assert got["vision_features"].shape == (batch, 256, stride16, stride16)
