"""Seeding a session from a segmentation: ``add_labels`` in batches against one mask prompt at a time (CPU).

    python benchmarks/bench_seeding.py [--cells 16 100 500] [--size 512] [--frame 1024] [--batch 16] [--threads N]
                                       [--no-before]

A random-weight SAM 2.1 tiny at model input ``--size`` (tests/session_support.py; random weights run exactly as
fast as the official ones) and one (Y, X) = (frame, frame) frame whose label image holds N discs of about 36 pixels
across on a grid. The frame's features are encoded first, so both sides time the seeding only:

* before: what ``add_labels`` did until now, the label image split into full-resolution masks and one
  ``apply_mask_prompt`` each (the whole frame resized, one pass of the SAM heads, a full copy kept);
* after: ``add_labels`` (bounding-box crops, windowed resize, ``--batch`` masks per pass).

Wall and CPU seconds are printed; on a shared machine the CPU time is the steadier of the two.

Also the memory encoding of those prompts at the start of a propagation (``commit_pending_prompts``) batched and one
by one, the largest difference between the two sides' logits (a check that both computed the same thing), and the
bytes a mask prompt keeps for a 40-pixel-wide cell on a 2048 x 2048 frame, before and after.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' random-weight model

from session_support import small_model

from napari_sam2 import TrackingSession
from napari_sam2.engine.compact_mask import CompactMask
from napari_sam2.engine.memory_bank import commit_pending_prompts
from napari_sam2.engine.object_state import FramePrompt, TrackedObject
from napari_sam2.model.resize import resize_bilinear


def disc_labels(count: int, side: int, radius: float = 18.0) -> np.ndarray:
    """(side, side) uint16 label image of ``count`` discs (labels 1..count) on a jittered grid, row by row."""
    per_row = int(np.ceil(np.sqrt(count)))
    pitch = side / per_row
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    labels = np.zeros((side, side), np.uint16)
    for label in range(1, count + 1):
        row, col = divmod(label - 1, per_row)
        cy, cx = (np.array([row, col]) + 0.5) * pitch + rng.uniform(-2, 2, 2)
        r = min(radius, pitch / 2 - 2)
        box = (slice(max(int(cy - r) - 1, 0), int(cy + r) + 2), slice(max(int(cx - r) - 1, 0), int(cx + r) + 2))
        inside = (yy[box] - cy) ** 2 + (xx[box] - cx) ** 2 < r * r
        labels[box][inside] = label
    return labels


@torch.inference_mode()
def seed_before(session: TrackingSession, labels: np.ndarray) -> None:
    """``add_labels`` as it was: full masks, then per mask the frame resized and one pass of the SAM heads."""
    runtime = session._runtime
    size = (runtime.image_size, runtime.image_size)
    full_masks = [(0, int(i), labels == i) for i in np.unique(labels) if i != 0]  # the old split: a full mask each
    for t, obj_id, mask in full_masks:
        model_mask = torch.from_numpy(mask)[None, None].float().to(runtime.device)
        if model_mask.shape[-2:] != size:
            model_mask = (resize_bilinear(model_mask, size, antialias=True) >= 0.5).float()
        features = runtime.features.get(t)
        with runtime.autocast():
            heads = runtime.model.mask_as_output(features.feat, features.high_res, model_mask)
        result = runtime.stored_result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
        obj = session._objects.get(obj_id) or TrackedObject(obj_id)
        obj.record_prompt(t, FramePrompt(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), mask=mask.copy()))
        obj.pending[t] = result
        session._objects.setdefault(obj_id, obj)


@torch.inference_mode()
def commit_before(session: TrackingSession) -> None:
    """The memories of the pending prompts encoded one by one, as ``commit_pending_prompts`` did."""
    runtime = session._runtime
    for obj in session._objects.values():
        for frame, result in obj.pending.items():
            result.maskmem = runtime.result_memory(result, runtime.features.get(frame))
    commit_pending_prompts(runtime, session._objects.values())


@torch.inference_mode()
def commit_after(session: TrackingSession) -> None:
    """What a propagation does first now: the memories encoded a batch of a frame's prompts at a time."""
    commit_pending_prompts(session._runtime, session._objects.values())


def timed(work, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of ``work(*args)``; CPU time (all threads of this process) is the steadier number on
    a machine that other work shares."""
    wall, cpu = time.perf_counter(), time.process_time()
    work(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def fresh_session(model, frame: int, batch: int) -> TrackingSession:
    movie = (300 + np.random.default_rng(1).normal(0, 40, (1, frame, frame))).astype(np.uint16)
    session = TrackingSession(model, movie, object_batch_size=batch)
    session.precompute(0)  # the frame's features, so that only the seeding is timed
    return session


def prompt_bytes() -> tuple[int, int]:
    """(before, after) bytes kept by the mask prompt of a 40-pixel-wide disc on a 2048 x 2048 frame."""
    yy, xx = np.mgrid[:2048, :2048]
    mask = (yy - 1024.5) ** 2 + (xx - 700.5) ** 2 < 20 ** 2
    compact = CompactMask.of(mask)
    return mask.nbytes, compact.nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[16, 100, 500])
    parser.add_argument("--size", type=int, default=512, help="model input S")
    parser.add_argument("--frame", type=int, default=1024, help="frame side (Y = X)")
    parser.add_argument("--batch", type=int, default=16, help="object_batch_size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-before", action="store_true", help="time the new path only")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    full, compact = prompt_bytes()
    print(f"mask prompt of a 40-pixel-wide cell on a 2048 x 2048 frame: {full:,} bytes before, {compact:,} after "
          f"(the crop of its bounding box; plus a ~100-byte array header)")
    model = small_model(image_size=args.size)
    print(f"SAM 2.1 tiny, random weights, model input {args.size}, frame {args.frame} x {args.frame}, "
          f"object_batch_size {args.batch}, {torch.get_num_threads()} torch threads")
    warm = fresh_session(model, args.frame, args.batch)  # first calls of every kernel, outside the timings
    warm.add_labels(disc_labels(4, args.frame), 0)
    seed_before(fresh_session(model, args.frame, args.batch), disc_labels(2, args.frame))
    commit_after(warm)

    print("seconds, wall (CPU time of all threads)")
    print(f"{'cells':>6} {'add_labels before':>20} {'after':>14} {'speed-up':>9} {'memories before':>18} "
          f"{'after':>14} {'max |logit diff|':>17}")
    for cells in args.cells:
        labels = disc_labels(cells, args.frame)
        after = fresh_session(model, args.frame, args.batch)
        seed_after = timed(after.add_labels, labels, 0)
        encode_after = timed(commit_after, after)
        if args.no_before:
            print(f"{cells:>6} {'-':>20} {show(seed_after):>14} {'-':>9} {'-':>18} {show(encode_after):>14}")
            continue
        before = fresh_session(model, args.frame, args.batch)
        seed_old = timed(seed_before, before, labels)
        encode_old = timed(commit_before, before)
        diff = float(np.abs(before.frame_logits(0)[1] - after.frame_logits(0)[1]).max())
        print(f"{cells:>6} {show(seed_old):>20} {show(seed_after):>14} {seed_old[0] / seed_after[0]:>8.1f}x "
              f"{show(encode_old):>18} {show(encode_after):>14} {diff:>17.2g}")


def show(times: tuple[float, float]) -> str:
    return f"{times[0]:.2f} ({times[1]:.2f})"

if __name__ == "__main__":
    main()
