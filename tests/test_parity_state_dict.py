"""Our full model has exactly the reference's state-dict keys and shapes, for all eight configs."""

from __future__ import annotations

import pytest
from reference_support import CONFIG_NAMES, build_reference

from napari_sam2 import build_model

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_state_dict_matches_reference(config):
    reference = build_reference(config, image_size=256)
    ours = build_model(config, image_size=256, device="cpu")
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(theirs) - set(mine)) == []
    assert sorted(set(mine) - set(theirs)) == []
    assert mine == theirs
    # and the reference's weights load strictly
    ours.load_state_dict(reference.state_dict(), strict=True)


def test_long_names_build_the_same_architecture():
    short = build_model("sam2.1_hiera_b+", image_size=128, device="cpu").state_dict()
    long = build_model("sam2.1_hiera_base_plus", image_size=128, device="cpu").state_dict()
    assert {k: v.shape for k, v in short.items()} == {k: v.shape for k, v in long.items()}
