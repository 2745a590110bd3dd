"""Propagation time per frame and click latency, ours / reference, side by side in one process (CPU, fp32).

    python benchmarks/bench_propagation.py [--configs sam2.1_hiera_t sam2.1_hiera_b+] [--objects 1 4 16]
                                           [--frames 10] [--size 1024] [--bf16]

Both implementations are built from the same random state dict (tests/reference_support.py; random weights run
exactly as fast as the official ones), see the same decoded frames (the reference reads its JPEG folder, we read the
arrays decoded from those files) and get the same clicks, one per object on frame 0 at (row, col) points spread over
the frame. Per frame: the median wall time of the propagation steps with a full memory bank (frames 7 on: the
prompted frame plus the 6 previous ones, which is most frames of a real movie) and of those while the bank fills
(frames 1 to 6, cheaper: fewer memories to attend to). Latency: a click on
the last tracked frame (its features cached on both sides), and a first click on a frame not seen yet (it is encoded). The largest logit difference
between the two is printed as a check that both computed the same thing. Needs the test extra and sam2==1.1.0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # shared with the parity tests

from video_scenarios import Pair, synthetic_movie

from napari_sam2 import TrackingSession

FULL_BANK_FROM = 7  # first frame after a prompt on frame 0 that sees 7 spatial memories (SAM 2's num_maskmem)


def timed(steps, times: list[float]):
    """The items of an iterator, appending the wall time spent producing each to ``times``."""
    steps = iter(steps)
    while True:
        start = time.perf_counter()
        try:
            item = next(steps)
        except StopIteration:
            return
        times.append(time.perf_counter() - start)
        yield item


def click_points(n_objects: int, size: int) -> list[tuple[float, float]]:
    """One (row, col) click per object on a grid over the frame."""
    side = int(np.ceil(np.sqrt(n_objects)))
    cells = [((i + 0.5) / side * size, (j + 0.5) / side * size) for i in range(side) for j in range(side)]
    return cells[:n_objects]


def measure(config: str, n_objects: int, frames: int, size: int, workdir: Path, bf16: bool) -> dict[str, float]:
    movie = synthetic_movie(frames, size)
    pair = Pair(config, size, movie, workdir, seed=0)
    ours, ref = pair.ours, pair.reference
    for obj_id, (row, col) in enumerate(click_points(n_objects, size), start=1):
        pair.points(0, obj_id, [(row, col)], [1])
    bf16_frame = measure_bf16(pair, n_objects, size) if bf16 else float("nan")

    # The two propagations run interleaved, frame by frame, so that the load of this shared machine varies
    # alike for both. Ours reads no frames ahead here: that background work would run while the reference's
    # step is timed.
    ours._prefetcher.depth = 0
    ours_steps, ref_steps = [], []
    with torch.inference_mode():
        for mine, theirs in zip(timed(ours.propagate(0, "forward"), ours_steps),
                                timed(ref.propagate_in_video(pair.state, start_frame_idx=0), ref_steps), strict=True):
            pair._compare(mine, theirs)  # the same logits on every frame, or the timing compares different work
        # Latency of one more click on the last tracked frame (its features are cached on both sides) ...
        last = frames - 1
        ours_cached, ref_cached = click_latency(pair, last, (size / 3, size / 3))
    # ... and of a first click on that frame once no features are cached (both encode the frame here).
    ours.features.clear()
    ref.clear_all_prompts_in_frame(pair.state, last, 1)
    pair.state["cached_features"] = {}
    ours_new, ref_new = click_latency(pair, last, (size / 2, size / 2))
    return {
        "ours_bf16_frame": bf16_frame,
        "ours_frame": full_bank_median(ours_steps),
        "ref_frame": full_bank_median(ref_steps),
        "ours_filling": statistics.median(ours_steps[1:FULL_BANK_FROM]),
        "ref_filling": statistics.median(ref_steps[1:FULL_BANK_FROM]),
        "ours_cached_click": ours_cached,
        "ref_cached_click": ref_cached,
        "ours_new_click": ours_new,
        "ref_new_click": ref_new,
        "max_logit_diff": pair.max_diff,
    }


def click_latency(pair: Pair, frame: int, row_col: tuple[float, float]) -> tuple[float, float]:
    """Seconds for one positive click of object 1 at (row, col) on ``frame`` replacing its clicks there:
    ours, then the reference's (which takes (x, y))."""
    start = time.perf_counter()
    pair.ours.add_points(frame, 1, [row_col], [1])
    ours = time.perf_counter() - start
    start = time.perf_counter()
    pair.reference.add_new_points_or_box(pair.state, frame, 1, points=np.array([row_col[::-1]], np.float32),
                                         labels=np.array([1], np.int32))
    return ours, time.perf_counter() - start


def measure_bf16(pair: Pair, n_objects: int, size: int) -> float:
    """Per-frame time of our session in bf16 autocast (opt-in; its numbers differ from fp32 by bf16 rounding)."""
    session = TrackingSession(pair.ours.model, pair.ours.source.frames, contrast_limits=(0, 255), fill_hole_area=0,
                              precision="bf16")
    for obj_id, (row, col) in enumerate(click_points(n_objects, size), start=1):
        session.add_points(0, obj_id, [(row, col)], [1])
    steps: list[float] = []
    for _ in timed(session.propagate(0, "forward"), steps):
        pass
    return full_bank_median(steps)


def full_bank_median(steps: list[float]) -> float:
    """Median time of the steps whose memory bank is full (all steps after the prompt for short movies)."""
    return statistics.median(steps[FULL_BANK_FROM:] or steps[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["sam2.1_hiera_t", "sam2.1_hiera_b+"])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--frames", type=int, default=10,
                        help=f"frames per movie (the first is prompted; from frame {FULL_BANK_FROM} the memory bank is full)")
    parser.add_argument("--size", type=int, default=1024, help="frame size = model input size (no resizing)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time our session in bf16 autocast (an opt-in mode, not the reference's numbers)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32, frames {args.size}x{args.size}, "
          f"{args.frames} frames per movie")
    header = ("config", "objects", "full bank ours s/frame", "full bank ref s/frame", "full bank ref/ours",
              "filling ours/ref s/frame", "filling ref/ours", "cached click ours/ref ms",
              "new-frame click ours/ref s", "max |diff|", "ours bf16 s/frame", "ref/ours bf16")
    print(" | ".join(header))
    for config in args.configs:
        for n_objects in args.objects:
            with tempfile.TemporaryDirectory() as tmp:
                r = measure(config, n_objects, args.frames, args.size, Path(tmp), args.bf16)
            print(f"{config} | {n_objects} | {r['ours_frame']:.2f} | {r['ref_frame']:.2f} | "
                  f"{r['ref_frame'] / r['ours_frame']:.2f} | {r['ours_filling']:.2f} / {r['ref_filling']:.2f} | "
                  f"{r['ref_filling'] / r['ours_filling']:.2f} | "
                  f"{r['ours_cached_click'] * 1e3:.0f} / {r['ref_cached_click'] * 1e3:.0f} | "
                  f"{r['ours_new_click']:.2f} / {r['ref_new_click']:.2f} | {r['max_logit_diff']:.1e} | "
                  f"{r['ours_bf16_frame']:.2f} | {r['ref_frame'] / r['ours_bf16_frame']:.2f}", flush=True)


if __name__ == "__main__":
    main()
