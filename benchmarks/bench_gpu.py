"""Frames per second and peak GPU memory on CUDA, ours / reference, side by side in one process.

    python benchmarks/bench_gpu.py [--configs sam2.1_hiera_t sam2.1_hiera_b+] [--objects 1 4 16] [--frames 60]
                                   [--size 1024] [--no-compile]

The reference is Meta's ``SAM2VideoPredictorVOS`` (``build_sam2_video_predictor(..., vos_optimized=True)``:
its image encoder, memory modules and SAM heads compiled with ``torch.compile``); ours is a TrackingSession with
``compile_model=True``. Both run under bf16 autocast (our CUDA default, and how Meta's examples run the
reference), from the same random state dict (random weights run as fast as the official ones), on the same
synthetic movie (1024 x 1024 frames; the reference reads its JPEG folder, we the decoded arrays), with one click
per object on frame 0. Each side first propagates once untimed (compilation and autotuning), then the prompts
are given again and the forward propagation over all frames is timed: frames per second = frames / seconds,
with the GPU synchronised; peak GPU memory is ``torch.cuda.max_memory_allocated`` during that run.

``--device cpu --no-compile`` runs the same code on the CPU at a small size (a smoke test of this script; the
reference is then the plain predictor in fp32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # shared with the parity tests

from bench_propagation import click_points
from reference_support import randomize_state_dict, reference_yaml
from video_scenarios import synthetic_movie, write_jpeg_folder

from napari_sam2 import TrackingSession, build_model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(device: torch.device, run: Callable[[], Iterable]) -> tuple[float, int, float]:
    """(seconds, frames yielded, peak GPU MiB) of one propagation (loading the movie and clicking not timed)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = run()
    synchronize(device)
    start = time.perf_counter()
    count = sum(1 for _ in steps)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return seconds, count, peak


def build_reference(config: str, size: int, device: torch.device, optimized: bool, state_dict=None):
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        reference_yaml(config), None, device=str(device), vos_optimized=optimized,
        hydra_overrides_extra=[f"++model.image_size={size}", "++model.add_all_frames_to_correct_as_cond=true"])
    if state_dict is None:
        state_dict = randomize_state_dict(predictor.state_dict(), seed=0)
    predictor.load_state_dict(state_dict, strict=True)
    return predictor.eval(), state_dict


def measure(config: str, n_objects: int, movie: np.ndarray, jpeg_folder: Path, device: torch.device,
            compile_model: bool) -> dict[str, float]:
    size = movie.shape[1]
    clicks = click_points(n_objects, size)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    reference, state_dict = build_reference(config, size, device, optimized=compile_model)
    if device.type != "cuda":
        reference.fill_hole_area = 0  # the reference fills holes with a CUDA extension only

    def reference_run():
        state = reference.init_state(video_path=str(jpeg_folder))
        for obj_id, (row, col) in enumerate(clicks, start=1):
            reference.add_new_points_or_box(state, 0, obj_id, points=np.array([[col, row]], np.float32),
                                            labels=np.array([1], np.int32))
        return reference.propagate_in_video(state, start_frame_idx=0)

    model = build_model(config, image_size=size, device=device)
    model.load_state_dict(state_dict, strict=True)

    def our_run():
        session = TrackingSession(model, movie, contrast_limits=(0, 255), device=device,
                                  compile_model=compile_model)
        for obj_id, (row, col) in enumerate(clicks, start=1):
            session.add_points(0, obj_id, [(row, col)], [1])
        return session.propagate(0, "forward")

    results = {}
    with torch.inference_mode(), autocast:
        for name, run in (("ours", our_run), ("ref", reference_run)):
            sum(1 for _ in run())  # warm-up: compilation, autotuning, caches
            seconds, frames, peak = timed_run(device, run)
            results[f"{name}_fps"] = frames / seconds
            results[f"{name}_peak_mib"] = peak
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["sam2.1_hiera_t", "sam2.1_hiera_b+"])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=1024, help="frame size = model input size")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true", help="neither side uses torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "for a smoke test on the CPU pass --device cpu --no-compile --size 128 --frames 4")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {args.frames} frames of {args.size}x{args.size}, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, compile={not args.no_compile}")
    print("config | objects | ours fps | ref fps | ours/ref | ours peak MiB | ref peak MiB")
    with tempfile.TemporaryDirectory() as tmp:
        movie = write_jpeg_folder(synthetic_movie(args.frames, args.size), Path(tmp) / "jpg")
        for config in args.configs:
            for n_objects in args.objects:
                r = measure(config, n_objects, movie, Path(tmp) / "jpg", device, not args.no_compile)
                print(f"{config} | {n_objects} | {r['ours_fps']:.2f} | {r['ref_fps']:.2f} | "
                      f"{r['ours_fps'] / r['ref_fps']:.2f} | {r['ours_peak_mib']:.0f} | {r['ref_peak_mib']:.0f}",
                      flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
