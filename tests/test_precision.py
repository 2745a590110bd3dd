"""Precision chosen from the hardware: defaults and refusals on simulated GPUs / Macs, the real CPU probe, fp16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from session_support import cells_movie, small_model

from napari_sam2 import TrackingSession
from napari_sam2.engine.acceleration import (
    DeviceCapabilities,
    NonFiniteError,
    autocast,
    check_finite,
    describe_precision,
    device_capabilities,
    resolve_precision,
)

CUDA = torch.device("cuda")
MPS = torch.device("mps")
CPU = torch.device("cpu")

GPUS = {  # name, compute capability, default precision
    "pascal": ("NVIDIA GeForce GTX 1080", (6, 1), "fp32"),
    "volta": ("Tesla V100-SXM2-16GB", (7, 0), "fp16"),
    "turing": ("Tesla T4", (7, 5), "fp16"),
    "ampere": ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16"),
    "hopper": ("NVIDIA H200", (9, 0), "bf16"),
}


def gpu(kind: str) -> DeviceCapabilities:
    name, capability, _ = GPUS[kind]
    return DeviceCapabilities.cuda_gpu(name, capability)


def mac(macos14: bool, autocast_bf16: bool = True, autocast_fp16: bool = True) -> DeviceCapabilities:
    """A simulated Apple GPU: bf16 tensors from macOS 14, autocast as the simulated torch takes it."""
    return DeviceCapabilities("mps", "Apple MPS", None, native_bf16=macos14, bf16_tensors=macos14,
                              bf16_autocast=macos14 and autocast_bf16, fp16_autocast=autocast_fp16,
                              fp16_tensor_cores=False)


CPU_CAPS = DeviceCapabilities("cpu", "CPU", None, native_bf16=False, bf16_tensors=True, bf16_autocast=True,
                              fp16_autocast=True, fp16_tensor_cores=False)


@pytest.mark.parametrize("kind", list(GPUS))
def test_cuda_default_follows_the_compute_capability(kind):
    assert resolve_precision(None, CUDA, gpu(kind)) == GPUS[kind][2]


def test_mps_default_is_bf16_only_with_macos14_and_an_autocast_taking_it():
    assert resolve_precision(None, MPS, mac(macos14=True)) == "bf16"
    assert resolve_precision(None, MPS, mac(macos14=False)) == "fp32"
    assert resolve_precision(None, MPS, mac(macos14=True, autocast_bf16=False)) == "fp32"  # torch before 2.5


def test_cpu_default_is_fp32():
    assert resolve_precision(None, CPU, CPU_CAPS) == "fp32"
    assert resolve_precision(None, CPU) == "fp32"  # probed


@pytest.mark.parametrize("kind", list(GPUS))
def test_explicit_fp32_and_fp16_run_on_every_cuda_gpu(kind):
    assert resolve_precision("fp32", CUDA, gpu(kind)) == "fp32"
    assert resolve_precision("fp16", CUDA, gpu(kind)) == "fp16"  # slow on Pascal, but the user asked


@pytest.mark.parametrize("kind", ["ampere", "hopper"])
def test_explicit_bf16_runs_from_ampere_on(kind):
    assert resolve_precision("bf16", CUDA, gpu(kind)) == "bf16"


@pytest.mark.parametrize("kind", ["pascal", "volta", "turing"])
def test_explicit_bf16_before_ampere_is_refused_with_what_to_do(kind):
    name, (major, minor), _ = GPUS[kind]
    with pytest.raises(ValueError) as error:
        resolve_precision("bf16", CUDA, gpu(kind))
    message = str(error.value)
    assert message == (f"bf16 needs a CUDA GPU of compute capability 8.0 or newer (Ampere); {name!r} has "
                       f"{major}.{minor}: use precision='fp16' or 'fp32'")
    assert "\n" not in message


def test_explicit_choices_on_macs():
    assert resolve_precision("bf16", MPS, mac(macos14=True)) == "bf16"
    assert resolve_precision("fp32", MPS, mac(macos14=False)) == "fp32"
    with pytest.raises(ValueError, match=r"bf16 on Apple MPS needs macOS 14 or newer.*use precision='fp32'"):
        resolve_precision("bf16", MPS, mac(macos14=False))
    with pytest.raises(ValueError, match=r"no bf16 autocast on mps \(Apple MPS\): use precision='fp32'"):
        resolve_precision("bf16", MPS, mac(macos14=True, autocast_bf16=False))
    with pytest.raises(ValueError, match=r"no fp16 autocast on mps .*use precision='fp32'"):
        resolve_precision("fp16", MPS, mac(macos14=True, autocast_fp16=False))
    assert resolve_precision("fp16", MPS, mac(macos14=False)) == "fp16"


def test_explicit_choices_on_the_cpu_and_unknown_names():
    assert resolve_precision("bf16", CPU, CPU_CAPS) == "bf16"
    assert resolve_precision("fp16", CPU, CPU_CAPS) == "fp16"
    old_torch = DeviceCapabilities("cpu", "CPU", None, False, True, True, False, False)  # CPU fp16 autocast: 2.4+
    with pytest.raises(ValueError, match=r"no fp16 autocast on cpu \(CPU\): use precision='fp32'"):
        resolve_precision("fp16", CPU, old_torch)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", CPU, CPU_CAPS)


def test_the_real_probe_on_this_cpu():
    caps = device_capabilities("cpu")
    assert (caps.type, caps.cuda_capability, caps.native_bf16, caps.fp16_tensor_cores) == ("cpu", None, False, False)
    assert caps.bf16_autocast and caps.fp16_autocast  # CPU autocast takes both dtypes from torch 2.4 on
    assert device_capabilities(torch.device("cpu")) is caps  # probed once
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU: use device='cpu'"):
            device_capabilities("cuda")


def test_descriptions_for_people():
    assert describe_precision(CPU, "fp32") == "cpu (fp32)"
    assert describe_precision(CPU, "fp16") == "cpu (fp16 autocast)"
    assert describe_precision("cuda:0", "bf16", gpu("hopper")) == "cuda:0 (NVIDIA H200, bf16 autocast)"
    assert describe_precision("cuda:1", "fp16", gpu("volta")) == "cuda:1 (Tesla V100-SXM2-16GB, fp16 autocast)"
    assert describe_precision(MPS, "fp32") == "mps (fp32)"


def test_autocast_contexts():
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(CPU, precision):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
            assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == dtype
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast(CPU, "fp8")


def test_check_finite_turns_an_fp16_overflow_into_a_clear_error():
    big = torch.full((4, 4), 300.0)
    with autocast(CPU, "fp16"):
        product = big @ big  # 4 * 300 * 300 = 360000 > 65504, the largest fp16
    assert not torch.isfinite(product).all()
    with pytest.raises(NonFiniteError, match=r"^inf/NaN in image features under fp16 autocast \(most likely fp16 "
                                             r"overflowed\): use precision='fp32'$"):
        check_finite(product, "fp16", what="image features")
    assert isinstance(NonFiniteError("x"), ValueError)  # the CLI reports ValueErrors as one line
    check_finite(product.float().clamp(-1, 1), "fp16")  # finite: fine
    check_finite(product, "fp32")  # fp32 is not checked (the reference computation; a device sync saved)


def test_cli_track_takes_precision_and_says_what_it_runs_with(monkeypatch, tmp_path, capsys):
    from napari_sam2 import cli

    movie = tmp_path / "movie.npy"
    np.save(movie, cells_movie(2))
    (tmp_path / "points.csv").write_text("index,axis-0,axis-1,axis-2,positive,obj_id\n0,0.0,30.0,25.0,True,1\n")
    monkeypatch.setattr(cli, "load_model", lambda *args, **kwargs: small_model())
    sessions = []

    def recording_session(*args, **kwargs) -> TrackingSession:
        sessions.append(TrackingSession(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(cli, "TrackingSession", recording_session)
    argv = ["track", str(movie), "--prompts", str(tmp_path / "points.csv"), "--out", str(tmp_path / "labels.tif"),
            "--axes", "TYX", "--precision", "fp16"]
    assert cli.main(argv) == 0
    assert sessions[0].precision == "fp16"
    err = capsys.readouterr().err
    assert err.count("napari-sam2: running on cpu (fp16 autocast)\n") == 1
    assert cli.main([*argv[:-2], "--overwrite", "--quiet"]) == 0
    assert sessions[1].precision == "fp32" and "running on" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv[:-1], "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_an_overflow_on_a_click_leaves_the_session_as_it_was(monkeypatch):
    from napari_sam2.engine import runtime

    session = TrackingSession(small_model(), cells_movie(2), contrast_limits=(0, 4000), precision="fp16")
    session.add_points(0, 1, [(30, 25)], [1])
    before = [p.points.copy() for p in session._objects[1].prompt_steps[0]]

    def overflowed(tensor, precision, what="the model's output"):
        raise NonFiniteError(f"inf/NaN in {what} under {precision} autocast: use precision='fp32'")

    monkeypatch.setattr(runtime, "check_finite", overflowed)
    with pytest.raises(NonFiniteError, match="use precision='fp32'"):
        session.add_points(0, 2, [(60, 50)], [1])
    with pytest.raises(NonFiniteError):
        session.add_points(0, 1, [(40, 30)], [1], clear_old_points=False)
    assert session.obj_ids == [1]  # no half-made object
    after = session._objects[1].prompt_steps[0]
    assert len(after) == len(before) and all(np.array_equal(a.points, b) for a, b in zip(after, before, strict=True))
