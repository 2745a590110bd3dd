"""build_model: config names, strict checkpoint loading and the errors a wrong or damaged file gives."""

from __future__ import annotations

import pytest
import torch
from reference_support import randomize_state_dict

from napari_sam2 import CheckpointError, build_model, canonical_config_name


@pytest.mark.parametrize("name, expected", [
    ("sam2.1_hiera_tiny", "sam2.1_hiera_t"), ("sam2.1_hiera_t", "sam2.1_hiera_t"),
    ("sam2_hiera_base_plus", "sam2_hiera_b+"), ("sam2.1_hiera_large.pt", "sam2.1_hiera_l"),
    ("SAM2.1-hiera-small", "sam2.1_hiera_s"),
])
def test_config_names(name, expected):
    assert canonical_config_name(name) == expected


def test_unknown_config_lists_valid_names():
    with pytest.raises(ValueError, match="sam2.1_hiera_t"):
        build_model("sam3_hiera_tiny")


@pytest.fixture(scope="module")
def tiny_weights():
    model = build_model("sam2.1_hiera_t", image_size=128, device="cpu")
    return randomize_state_dict(model.state_dict(), seed=1)


def test_official_layout_and_bare_state_dict_load_strictly(tmp_path, tiny_weights):
    official = tmp_path / "official.pt"
    torch.save({"model": tiny_weights}, official)
    bare = tmp_path / "bare.pt"
    torch.save(tiny_weights, bare)
    for path in (official, bare):
        model = build_model("sam2.1_hiera_tiny", checkpoint=path, image_size=128, device="cpu")
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in tiny_weights.items())
        assert not model.training


def test_checkpoint_of_another_architecture_names_file_config_and_keys(tmp_path, tiny_weights):
    path = tmp_path / "tiny21.pt"
    torch.save({"model": tiny_weights}, path)
    with pytest.raises(CheckpointError) as sam20:
        build_model("sam2_hiera_t", checkpoint=path, image_size=128, device="cpu")
    message = str(sam20.value)
    assert str(path) in message and "sam2_hiera_t" in message
    assert "unexpected keys" in message and "no_obj_embed_spatial" in message
    with pytest.raises(CheckpointError, match="missing keys: image_encoder.trunk.blocks.12"):
        build_model("sam2.1_hiera_s", checkpoint=path, image_size=128, device="cpu")
    with pytest.raises(CheckpointError, match="mis-shaped keys .*pos_embed"):
        build_model("sam2.1_hiera_b+", checkpoint=path, image_size=128, device="cpu")


def test_damaged_missing_and_foreign_files(tmp_path, tiny_weights):
    good = tmp_path / "good.pt"
    torch.save({"model": tiny_weights}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged, truncated"):
        build_model("sam2.1_hiera_t", checkpoint=truncated, image_size=128, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("sam2.1_hiera_t", checkpoint=tmp_path / "nope.pt", image_size=128, device="cpu")
    not_weights = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        build_model("sam2.1_hiera_t", checkpoint=not_weights, image_size=128, device="cpu")


class _Payload:
    """A pickled object that a weights_only load must refuse to construct."""


def test_checkpoints_are_loaded_with_weights_only(tmp_path, tiny_weights):
    path = tmp_path / "pickled.pt"
    torch.save({"model": tiny_weights, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        build_model("sam2.1_hiera_t", checkpoint=path, image_size=128, device="cpu")


def test_image_size_must_suit_the_backbone():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("sam2.1_hiera_t", image_size=100, device="cpu")
