"""Apple MPS without a Mac: the CPU-fallback warning and the antialiased resize that does not need the fallback."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import napari_sam2
from napari_sam2 import device as device_module
from napari_sam2.device import MPS_FALLBACK_VARIABLE, mps_fallback_active, mps_fallback_status
from napari_sam2.engine.frames import FrameSource
from napari_sam2.model import resize

PACKAGE = Path(napari_sam2.__file__).parent


def imported_like(monkeypatch, torch_first: bool, given: str | None, now: str | None) -> None:
    """Simulate how napari_sam2 was imported: after torch or not, with the user's variable or not."""
    monkeypatch.setattr(napari_sam2, "_TORCH_IMPORTED_FIRST", torch_first)
    monkeypatch.setattr(napari_sam2, "_MPS_FALLBACK_GIVEN", given)
    if now is None:
        monkeypatch.delenv(MPS_FALLBACK_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(MPS_FALLBACK_VARIABLE, now)


def test_no_warning_off_mps(monkeypatch):
    imported_like(monkeypatch, torch_first=True, given=None, now="1")
    assert mps_fallback_status("cpu") is None
    assert mps_fallback_status("cuda") is None


def test_torch_imported_first_without_the_variable_warns_with_what_to_do(monkeypatch):
    imported_like(monkeypatch, torch_first=True, given=None, now="1")  # we set it, but too late
    assert not mps_fallback_active()
    warning = mps_fallback_status("mps")
    assert warning is not None and "\n" not in warning
    assert "torch was imported before napari-sam2" in warning
    assert warning.endswith("set PYTORCH_ENABLE_MPS_FALLBACK=1 before starting napari/python")


def test_the_users_own_setting_counts(monkeypatch):
    imported_like(monkeypatch, torch_first=True, given="1", now="1")  # set before napari started: active
    assert mps_fallback_active() and mps_fallback_status("mps") is None
    imported_like(monkeypatch, torch_first=False, given=None, now="1")  # we set it before torch came
    assert mps_fallback_active() and mps_fallback_status("mps") is None
    imported_like(monkeypatch, torch_first=False, given="0", now="0")  # the user turned it off
    assert not mps_fallback_active()
    assert "PYTORCH_ENABLE_MPS_FALLBACK is '0'" in mps_fallback_status("mps")


def test_the_default_device_is_the_one_checked(monkeypatch):
    imported_like(monkeypatch, torch_first=True, given=None, now="1")
    monkeypatch.setattr(device_module, "accelerators", lambda: ["mps"])
    assert mps_fallback_status() is not None
    monkeypatch.setattr(device_module, "accelerators", list)
    assert mps_fallback_status() is None


def test_import_records_whether_torch_came_first():
    code = ("import os; os.environ.pop('PYTORCH_ENABLE_MPS_FALLBACK', None); import torch, napari_sam2; "
            "print(napari_sam2._TORCH_IMPORTED_FIRST, napari_sam2._MPS_FALLBACK_GIVEN, "
            "os.environ['PYTORCH_ENABLE_MPS_FALLBACK'])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.split() == ["True", "None", "1"]


@pytest.mark.parametrize(("device", "release", "on_device"), [
    ("mps", (2, 6), False), ("mps", (2, 7), True), ("mps", (3, 0), True), ("cuda", (2, 4), True),
    ("cpu", (2, 4), True),
])
def test_which_devices_antialias_themselves(monkeypatch, device, release, on_device):
    monkeypatch.setattr(resize, "TORCH_RELEASE", release)
    assert resize.antialias_runs_on(torch.device(device)) is on_device


def test_torch_release_parsing():
    assert resize.torch_release("2.6.0+cpu") == (2, 6)
    assert resize.torch_release("2.7.0.dev20250101") == (2, 7)
    assert resize.torch_release("2.13.0") == (2, 13)  # a number, not a string: 2.13 > 2.7


def test_a_device_that_cannot_antialias_resizes_on_the_cpu_with_the_same_numbers(monkeypatch):
    x = torch.rand(2, 3, 37, 53)
    direct = F.interpolate(x, size=(16, 20), mode="bilinear", align_corners=False, antialias=True)
    monkeypatch.setattr(resize, "antialias_runs_on", lambda device: False)  # an MPS device before torch 2.7
    moves = []
    to = torch.Tensor.to

    def recording_to(tensor, *args, **kwargs):
        moves.append(str(args[0]) if args else str(kwargs.get("device")))
        return to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    detoured = resize.resize_bilinear(x, (16, 20), antialias=True)
    monkeypatch.undo()
    assert moves == ["cpu", "cpu"]  # to the CPU, and back to the tensor's device (here: the CPU as well)
    assert torch.equal(detoured, direct)
    plain = resize.resize_bilinear(x, (16, 20))
    assert torch.equal(plain, F.interpolate(x, size=(16, 20), mode="bilinear", align_corners=False))


def test_frames_resize_through_resize_bilinear(monkeypatch):
    calls = []

    def spy(x, size, antialias=False):
        calls.append((tuple(x.shape), size, antialias))
        return resize.resize_bilinear(x, size, antialias)

    monkeypatch.setattr("napari_sam2.engine.frames.resize_bilinear", spy)
    source = FrameSource(torch.rand(2, 40, 30).numpy(), contrast_limits=(0.0, 1.0))
    assert source.model_input(0, 64).shape == (1, 3, 64, 64)
    assert calls == [((1, 3, 40, 30), (64, 64), True)]


def test_no_antialiased_interpolate_outside_resize_py():
    """Every antialiased resize in the package goes through resize_bilinear (MPS before torch 2.7 lacks it)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "resize.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "interpolate"
                    and any(k.arg == "antialias" for k in node.keywords)):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, f"use napari_sam2.model.resize.resize_bilinear for antialiased resizing: {found}"


def test_value_folding_is_left_off_where_mps_sdpa_gets_narrow_values_wrong(monkeypatch):
    from napari_sam2.model import memory_attention
    from napari_sam2.model.memory_attention import RoPEAttention, sdpa_takes_narrow_values

    assert not sdpa_takes_narrow_values("mps", (2, 11)) and sdpa_takes_narrow_values("mps", (2, 12))
    assert sdpa_takes_narrow_values("cuda", (2, 4)) and sdpa_takes_narrow_values("cpu", (2, 4))
    torch.manual_seed(0)
    attention = RoPEAttention(256, rope_k_repeat=True, feat_sizes=(4, 4), kv_in_dim=64).eval()
    q, memory = torch.randn(1, 16, 256), torch.randn(1, 2 * 16 + 4, 64)
    with torch.no_grad():
        attention.value_folding = "off"
        projected_first = attention(q, memory, memory, num_k_exclude_rope=4)
        attention.value_folding = "auto"
        folded = attention(q, memory, memory, num_k_exclude_rope=4)
        # As on an MPS device of torch < 2.12: "auto" must take the reference's order, bit for bit.
        monkeypatch.setattr(memory_attention, "sdpa_takes_narrow_values", lambda device_type: False)
        unfolded = attention(q, memory, memory, num_k_exclude_rope=4)
    assert torch.equal(unfolded, projected_first)
    assert not torch.equal(folded, projected_first)  # the folded path really is another computation
    torch.testing.assert_close(folded, projected_first, rtol=1e-4, atol=1e-5)
