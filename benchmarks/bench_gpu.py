"""Frames per second and peak GPU memory on CUDA, ours / reference, side by side in one process.

    python benchmarks/bench_gpu.py [--configs sam2.1_hiera_t sam2.1_hiera_b+] [--objects 1 16 64] [--frames 24]
                                   [--size 1024] [--precision bf16] [--no-compile] [--no-fold]

The reference is Meta's ``SAM2VideoPredictorVOS`` (``build_sam2_video_predictor(..., vos_optimized=True)``:
its image encoder, memory modules and SAM heads compiled with ``torch.compile``); ours is a TrackingSession on
a model compiled once (``compile_model=True`` semantics: image encoder and memory attention). Both run at the
same precision (default: what our session picks for the GPU, bf16 autocast on Ampere and newer; the reference
runs under the same autocast), from the same random state dict (random weights run as fast as the official
ones), on the same synthetic movie (the reference reads its JPEG folder, we the decoded arrays), with one click
per object on frame 0. Each model is built and compiled once per config; for each object count, each side
first propagates once untimed (compilation, autotuning, caches), then the prompts are given again and the
forward propagation over all frames is timed: frames per second = frames / seconds with the GPU synchronised;
peak GPU memory is ``torch.cuda.max_memory_allocated`` during that run above what was allocated just before
it (the run's working memory; both models' weights are resident throughout); recompiles are graphs our
compiled modules compiled during the timed run (0 means the warm-up covered every shape). Neither side fills
holes (the reference can only with its CUDA extension, which pip does not build), and both bring every
object's frame-resolution logits to the host.

``--device cpu --no-compile`` runs the same code on the CPU at a small size (a smoke test of this script; the
reference is then the plain predictor in fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # shared with the parity tests

from bench_propagation import click_points
from reference_support import randomize_state_dict, reference_yaml
from video_scenarios import synthetic_movie, write_jpeg_folder

from napari_sam2 import TrackingSession, build_model
from napari_sam2.engine.acceleration import autocast, resolve_precision


@dataclass
class Row:
    """One measurement: a config and object count, both sides."""

    config: str
    objects: int
    frames: int
    ours_fps: float
    ref_fps: float
    ours_peak_mib: float
    ref_peak_mib: float
    recompiles: int | None  # graphs our compiled modules compiled in the timed run (None: not compiled)

    @property
    def speedup(self) -> float:
        return self.ours_fps / self.ref_fps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(device: torch.device, run: Callable[[], Iterable]) -> tuple[float, int, float]:
    """(seconds, frames yielded, peak GPU MiB above what was allocated before) of one propagation (loading the
    movie and clicking not timed). Above the baseline, so that both models' weights and what an earlier run
    left allocated count for neither side: it is the propagation's own working memory."""
    baseline = 0
    if device.type == "cuda":
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    steps = run()
    synchronize(device)
    start = time.perf_counter()
    count = sum(1 for _ in steps)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20 if device.type == "cuda" else float("nan")
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


def compiled_graphs(model) -> int | None:
    """Graphs compiled so far by the model's compiled modules (None when nothing is compiled)."""
    counts = model.compile_counts()
    return sum(counts.values()) if counts else None


def measure_config(config: str, object_counts: list[int], movie: np.ndarray, jpeg_folder: Path,
                   device: torch.device, compile_model: bool, precision: str, fold_values: bool = True,
                   report: Callable[[Row], None] = print,
                   keep_going: Callable[[str, int], bool] = lambda config, objects: True,
                   with_reference: bool = True) -> list[Row]:
    """Rows for every object count, with each side's model built (and compiled) once; an object count for
    which ``keep_going(config, objects)`` says False is skipped (a time budget, say). Without
    ``with_reference`` only our side runs (the reference columns are NaN).

    Both sides do the same work per frame: no hole filling (the reference fills holes only with its CUDA
    extension, which a pip install does not build), and the logits of every object at frame resolution
    brought to the host (ours yields them there; the reference's are copied)."""
    size = movie.shape[1]
    if compile_model:
        torch._dynamo.reset()  # graphs of an earlier config must not count against dynamo's recompile limit
    reference, state_dict = build_reference(config, size, device, optimized=compile_model and with_reference)
    reference.fill_hole_area = 0
    model = build_model(config, image_size=size, device=device)
    model.load_state_dict(state_dict, strict=True)
    model.fold_values(fold_values)
    if compile_model:
        model.use_compiled()
    context = autocast(device, precision) if precision != "fp32" else contextlib.nullcontext()
    rows = []
    for n_objects in object_counts:
        if not keep_going(config, n_objects):
            continue
        clicks = click_points(n_objects, size)

        def reference_run(clicks=clicks):
            state = reference.init_state(video_path=str(jpeg_folder))
            for obj_id, (row, col) in enumerate(clicks, start=1):
                reference.add_new_points_or_box(state, 0, obj_id, points=np.array([[col, row]], np.float32),
                                                labels=np.array([1], np.int32))
            return ((frame, ids, masks.cpu()) for frame, ids, masks in
                    reference.propagate_in_video(state, start_frame_idx=0))

        def our_run(clicks=clicks):
            session = TrackingSession(model, movie, contrast_limits=(0, 255), device=device, precision=precision,
                                      fill_hole_area=0)
            for obj_id, (row, col) in enumerate(clicks, start=1):
                session.add_points(0, obj_id, [(row, col)], [1])
            return session.propagate(0, "forward")

        measured = {}
        # Our session applies its precision itself; the reference runs under the same autocast around it.
        sides = [("ours", our_run, contextlib.nullcontext())]
        if with_reference:
            sides.append(("ref", reference_run, context))
        measured["ref"] = (float("nan"), float("nan"), None, 0)
        for name, run, around in sides:
            with torch.inference_mode(), around:
                sum(1 for _ in run())  # warm-up: compilation, autotuning, caches
                before = compiled_graphs(model)
                seconds, frames, peak = timed_run(device, run)
                after = compiled_graphs(model)
            measured[name] = (frames / seconds, peak, None if before is None else after - before, frames)
        row = Row(config, n_objects, measured["ours"][3], measured["ours"][0], measured["ref"][0],
                  measured["ours"][1], measured["ref"][1], measured["ours"][2])
        report(row)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_row(row: Row) -> None:
    print(f"{row.config} | {row.objects} | {row.ours_fps:.2f} | {row.ref_fps:.2f} | {row.speedup:.2f} | "
          f"{row.ours_peak_mib:.0f} | {row.ref_peak_mib:.0f} | {row.recompiles}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["sam2.1_hiera_t", "sam2.1_hiera_b+"])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=1024, help="frame size = model input size")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default=None, help="fp32, bf16 or fp16 (default: the session's choice)")
    parser.add_argument("--no-compile", action="store_true", help="neither side uses torch.compile")
    parser.add_argument("--no-fold", action="store_true", help="our memory attention projects 256-channel values")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "for a smoke test on the CPU pass --device cpu --no-compile --size 128 --frames 4")
    precision = resolve_precision(args.precision, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {args.frames} frames of {args.size}x{args.size}, {precision}, "
          f"compile={not args.no_compile}, fold values={not args.no_fold}")
    print("config | objects | ours fps | ref fps | ours/ref | ours peak MiB | ref peak MiB | recompiles")
    with tempfile.TemporaryDirectory() as tmp:
        movie = write_jpeg_folder(synthetic_movie(args.frames, args.size), Path(tmp) / "jpg")
        for config in args.configs:
            measure_config(config, args.objects, movie, Path(tmp) / "jpg", device, not args.no_compile, precision,
                           fold_values=not args.no_fold, report=print_row)


if __name__ == "__main__":
    main()
