"""End-to-end parity of TrackingSession with the reference SAM2VideoPredictor (fp32, CPU).

Both are built from one random state dict and fed the same decoded frames and prompts; every logit map
either returns is compared. The reference runs with ``add_all_frames_to_correct_as_cond=True`` (our
semantics) and ``fill_hole_area=0`` (it cannot fill holes on the CPU; we then don't either). The scenarios
live in video_scenarios.py, so that benchmarks/gpu_check.py runs the same ones on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from video_scenarios import SCENARIOS, Pair

pytestmark = pytest.mark.reference
TOLERANCE = 1e-3


def _report(pair: Pair, name: str) -> None:
    print(f"{name}: {len(pair.diffs)} logit maps compared, max |diff| = {pair.max_diff:.3g}")
    assert pair.max_diff <= TOLERANCE


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_matches_the_reference(name, tmp_path):
    _report(SCENARIOS[name](tmp_path, "cpu"), name)


@pytest.fixture
def cuda_fp32():
    """Plain fp32 on CUDA: TF32 matrix products (10-bit mantissa) off for the comparison, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_matches_the_reference_on_cuda(name, tmp_path, cuda_fp32):
    _report(SCENARIOS[name](tmp_path, "cuda"), f"{name} on CUDA")
