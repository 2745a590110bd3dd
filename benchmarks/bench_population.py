"""Populations on the CPU: tracking 1 to 500 cells seeded from a label image, and what costs what (issue 15).

    python benchmarks/bench_population.py [--objects 1 16 100 500] [--frame 1024 2048] [--size 512]
                                          [--frames 4] [--threads N] [--device cpu] [--no-segment-all]

A random-weight SAM 2.1 tiny at model input ``--size`` (512 by default; tests/session_support.py: random weights run
exactly as fast as the official ones) on a (T, Y, X) uint16 movie of ``--frames`` frames of ``--frame`` pixels,
with N discs of about 36 pixels across on a grid, drifting by a pixel per frame. Each (frame size, N) runs in a
fresh child process (this script with ``--child``):

* ``add_labels`` of frame 0's label image (N cells) and, separately, the memory encoding of those prompts at the
  start of the propagation;
* then every tracked frame as the plugin and the CLI consume it (``propagate`` and the frame's label image):
  seconds per frame split into the model (time inside the model's image encoder, memory attention, SAM heads
  and memory encoder) and everything else (choosing memories, moving them, keeping results, hole filling,
  the label image), the mean over the tracked frames;
* peak memory (peak RSS) above the baseline (after the model, the movie and the session exist), and on a GPU
  (``--device cuda``, what ``gpu_check.py`` runs) the peak of torch's allocations above theirs then;
* held results: the bytes each object keeps per tracked frame (logits crop, pointer, score; spatial
  memories are bounded separately), on average.

Random weights give logits that stay within a few units of 0 over the whole frame, so the crop of a result is
its whole map (64 KiB at input 512); ``--sharpen`` scales the mask decoder's output 40x so that the logits span
a trained model's range (well below -32 away from an object) and shows what the crops cost then. Neither is a
trained model's figure (there are no official weights on this machine).

Also ``segment_all`` on one 1024 x 1024 frame (the default 32 x 32 point grid).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' random-weight model
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import proc_status_kib, release_free_heap, reset_peak_rss
from bench_seeding import disc_labels
from session_support import small_model

from napari_sam2 import TrackingSession

MODEL_PARTS = ("encode_image", "condition_on_memory", "predict_masks", "encode_memory", "mask_as_output")


class ModelClock:
    """Seconds spent inside the model's parts (wrapped on the instance), summed since the last :meth:`take`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds = 0.0
        for name in MODEL_PARTS:
            setattr(model, name, self._timed(getattr(model, name)))

    def _timed(self, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def drifting_movie(labels: np.ndarray, frames: int) -> np.ndarray:
    """(T, Y, X) uint16: bright discs where ``labels`` has cells, shifted by one pixel per frame, on noise."""
    rng = np.random.default_rng(0)
    movie = np.empty((frames, *labels.shape), np.uint16)
    for t in range(frames):
        cells = np.roll(labels > 0, (t, t), axis=(0, 1))
        movie[t] = 300 + rng.integers(0, 40, labels.shape, dtype=np.uint16) + 2500 * cells
    return movie


def sharpen(model: torch.nn.Module, factor: float = 40.0) -> None:
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(factor)
            mlp.layers[-1].bias.mul_(factor)


def run_child(args: argparse.Namespace) -> None:
    model = small_model(args.size)
    if args.sharpen:
        sharpen(model)
    labels = disc_labels(args.n, args.frame)
    movie = drifting_movie(labels, args.frames)
    session = TrackingSession(model, movie, contrast_limits=(0, 3000), device=args.device)
    clock = ModelClock(session.model)
    session.features.get(0)  # the first frame's encode is not part of seeding
    clock.take()
    release_free_heap()
    base = proc_status_kib("VmRSS")["VmRSS"]
    reset = reset_peak_rss()
    cuda = session.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        device_base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    seeded = session.add_labels(labels, 0)
    seeding = time.perf_counter() - start
    clock.take()
    frames = session.propagate(start=0)
    start = time.perf_counter()
    first = next(frames)  # the prompted frame: the prompts' memories are encoded, nothing is tracked
    first.label_image()
    commit = time.perf_counter() - start
    clock.take()
    totals, models = [], []
    while True:
        start = time.perf_counter()
        try:
            output = next(frames)
        except StopIteration:
            break
        output.label_image()
        totals.append(time.perf_counter() - start)
        models.append(clock.take())
    peak_mib = (proc_status_kib("VmHWM")["VmHWM"] - base) / 1024 if reset else -1.0
    device_peak_mib = (torch.cuda.max_memory_allocated() - device_base) / 2**20 if cuda else 0.0
    objects = list(session._objects.values())
    held = [r.nbytes - (r.maskmem.numel() * 2 if r.maskmem is not None else 0)
            for obj in objects for r in obj.tracked.values()]
    print(json.dumps({"seeded": len(seeded), "add_labels_s": seeding, "commit_s": commit,
                      "frame_s": float(np.mean(totals)), "model_s": float(np.mean(models)),
                      "peak_mib": peak_mib, "device_peak_mib": device_peak_mib, "held_kib": float(np.mean(held)) / 1024,
                      "full_map_kib": 4 * (args.size // 4) ** 2 / 1024}))


def segment_all_seconds(size: int, frame: int, device: str = "cpu") -> tuple[float, int]:
    """Seconds of ``segment_all`` (default options) on one (frame, frame) frame of 100 cells, and the masks found."""
    labels = disc_labels(100, frame)
    session = TrackingSession(small_model(size), drifting_movie(labels, 1), contrast_limits=(0, 3000), device=device)
    session.features.get(0)
    start = time.perf_counter()
    found = session.segment_all(0)
    return time.perf_counter() - start, len(found)


TABLE_HEADER = ("| frame | objects | s/frame | model | outside the model | peak above baseline "
                "| held per object-frame | add_labels | commit |\n|---|---|---|---|---|---|---|---|---|")


def measure(frame: int, n: int, size: int, frames: int, device: str = "cpu", threads: int = 0,
            sharpen_logits: bool = False) -> dict:
    """One (frame size, N objects) run in a fresh child process; its figures (see the module docstring)."""
    command = [sys.executable, __file__, "--child", "--n", str(n), "--frame-size", str(frame), "--size", str(size),
               "--frames", str(frames), "--threads", str(threads), "--device", device]
    if sharpen_logits:
        command.append("--sharpen")
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table_row(frame: int, r: dict) -> str:
    """One markdown row of :data:`TABLE_HEADER`."""
    outside = r["frame_s"] - r["model_s"]
    peak = f"{r['peak_mib']:.0f} MiB"
    if r.get("device_peak_mib"):
        peak += f" (+{r['device_peak_mib']:.0f} MiB on the GPU)"
    return (f"| {frame} x {frame} | {r['seeded']} | {r['frame_s']:.2f} s | {r['model_s']:.2f} s "
            f"| {outside:.3f} s ({100 * outside / r['frame_s']:.1f} %) | {peak} "
            f"| {r['held_kib']:.1f} KiB (map {r['full_map_kib']:.0f}) | {r['add_labels_s']:.2f} s "
            f"| {r['commit_s']:.2f} s |")


def run_parent(args: argparse.Namespace) -> None:
    print(f"SAM 2.1 tiny, random weights{' (sharpened)' if args.sharpen else ''}, model input {args.size}, "
          f"{args.frames} frames (1 seeded + {args.frames - 1} tracked), {args.device}, "
          f"{args.threads or torch.get_num_threads()} threads")
    print(TABLE_HEADER)
    for frame in args.frame:
        for n in args.objects:
            r = measure(frame, n, args.size, args.frames, args.device, args.threads, args.sharpen)
            print(table_row(frame, r), flush=True)
    if not args.no_segment_all:
        seconds, found = segment_all_seconds(args.size, 1024, args.device)
        print(f"segment_all on one 1024 x 1024 frame at input {args.size}: {seconds:.1f} s, {found} masks")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 16, 100, 500])
    parser.add_argument("--frame", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--size", type=int, default=512, help="model input size S")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, mps)")
    parser.add_argument("--sharpen", action="store_true", help="scale the mask logits 40x (see above)")
    parser.add_argument("--no-segment-all", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frame-size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        args.frame = args.frame_size
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
