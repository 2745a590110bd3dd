"""Time and peak memory of one frame's label image: the path before issue 15 against the tiled one (CPU).

    python benchmarks/bench_label_image.py [--objects 1 16 100 500] [--frames 1024 2048] [--low-res 128]
                                           [--limit-gb 6] [--repeats 3] [--device cpu]

Per object count and frame size (Y = X), three paths compute the same (Y, X) label image from the same stored
results (synthetic low-resolution logits like the model's: cells of 3-9 low-res pixels' radius at random
places, overlapping, some with small holes; logits +2..+12 inside, -8..-20 outside; model input 4 x low-res,
hole filling at the default 8 pixels):

* ``before``: what ``TrackingSession.label_image`` did before: hole filling one object at a time (each whole
  plane labelled, one call per object), the dense (objects, Y, X) float32 logits at frame
  resolution (``F.interpolate``), then ``labels_from_logits``' numpy argmax over them;
* ``frame_logits``: today's ``ModelRuntime.frame_logits`` (one batched hole filling) + ``labels_from_logits``,
  the path of callers that want the logits themselves;
* ``tiled``: ``ModelRuntime.label_image`` (one batched hole filling, resampling in tiles of rows).

Each measurement runs in a fresh child process (this script with ``--child``); peak memory is the peak RSS
(VmHWM, reset just before the call, free heap given back first) above the RSS before it, and with
``--device cuda`` also the peak of torch's CUDA allocations above those before it. The dense paths are
not run where their dense logits (twice objects x Y x X x 4 bytes: the interpolated stack and the output
array) would pass ``--limit-gb``; the table then says how much they would need. Time is the best of
``--repeats`` calls. The labels of the paths are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_memory import proc_status_kib, release_free_heap, reset_peak_rss

PATHS = ("before", "frame_logits", "tiled")


def synthetic_results(n_objects: int, low_res: int, seed: int = 0) -> list:
    """``n_objects`` FrameResults with cell-like (1, 1, low_res, low_res) float32 logits."""
    import torch

    from napari_sam2.engine.object_state import FrameResult

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:low_res, :low_res].astype(np.float32)
    results = []
    for _ in range(n_objects):
        cy, cx = rng.uniform(0, low_res, 2)
        radius = rng.uniform(3, 9)
        distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        logits = np.where(distance <= radius, rng.uniform(2, 12), -rng.uniform(8, 20)).astype(np.float32)
        logits += rng.normal(0, 0.5, logits.shape).astype(np.float32)
        if rng.random() < 0.3 and radius > 4:  # a small hole
            logits[int(cy), int(cx)] = -3.0
        results.append(FrameResult(torch.from_numpy(logits)[None, None], torch.zeros(1, 256), torch.ones(1, 1),
                                   False))
    return results


def make_runtime(frame_size: int, low_res: int, device: str):
    """A ModelRuntime for a (1, frame_size, frame_size) movie and a model of input 4 x low_res; no model runs."""
    import torch

    from napari_sam2.engine.frames import FrameSource
    from napari_sam2.engine.runtime import ModelRuntime
    from napari_sam2.engine.storage import Storage

    class NoModel:
        image_size = 4 * low_res

    source = FrameSource(np.zeros((1, frame_size, frame_size), dtype=np.uint8), contrast_limits=(0, 255))
    return ModelRuntime(NoModel(), source, torch.device(device), Storage(torch.device(device), None),
                        "fp32", fill_hole_area=8, feature_cache_size=1, prefetch_frames=0)


def fill_one_plane(logits, max_area: int):
    """Hole filling as before issue 15, for one (1, 1, h, w) result: its whole plane labelled."""
    import torch
    from scipy import ndimage

    from napari_sam2.engine.postprocess import HOLE_FILL_LOGIT

    values = logits.numpy()
    components, count = ndimage.label(values[0, 0] <= 0, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return logits
    small = np.bincount(components.ravel()) <= max_area
    small[0] = False
    if not small.any():
        return logits
    filled = values.copy()
    filled[0, 0][small[components]] = HOLE_FILL_LOGIT
    return torch.from_numpy(filled)


def label_image(path: str, runtime, results: list, obj_ids: list[int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from napari_sam2.engine.postprocess import labels_from_logits

    with torch.inference_mode():
        if path == "tiled":
            return runtime.label_image(results, obj_ids, np.uint16)
        if path == "frame_logits":
            return labels_from_logits(obj_ids, runtime.frame_logits(results), dtype=np.uint16)
        height, width = runtime.source.height, runtime.source.width  # before: one object at a time
        out = np.full((len(results), height, width), -1024.0, dtype=np.float32)
        low = torch.cat([fill_one_plane(r.raw_logits.to(runtime.device), runtime.fill_hole_area) for r in results])
        low = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
        out[:] = low[:, 0].cpu().numpy()
        del low
        return labels_from_logits(obj_ids, out, dtype=np.uint16)


def run_child(args: argparse.Namespace) -> None:
    import torch

    cuda = args.device.startswith("cuda")
    runtime = make_runtime(args.frame, args.low_res, args.device)
    results = synthetic_results(args.n, args.low_res)
    obj_ids = list(range(1, args.n + 1))
    label_image(args.path, make_runtime(64, args.low_res, args.device), results[:2], obj_ids[:2])  # warm-up
    times = []
    labels = None
    for repeat in range(args.repeats):
        del labels
        labels = None
        release_free_heap()
        base = proc_status_kib("VmRSS")["VmRSS"]
        reset = reset_peak_rss() if repeat == 0 else False
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            device_base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        labels = label_image(args.path, runtime, results, obj_ids)  # a numpy array: the device is done
        times.append(time.perf_counter() - start)
        if repeat == 0:
            peak_kib = proc_status_kib("VmHWM")["VmHWM"] - base if reset else -1
            device_peak = (torch.cuda.max_memory_allocated() - device_base) / 2**20 if cuda else 0.0
    digest = [int(np.count_nonzero(labels)), int(labels.astype(np.int64).sum() % 1_000_003)]
    print(json.dumps({"time": min(times), "peak_mib": peak_kib / 1024, "device_peak_mib": device_peak,
                      "digest": digest}))


def dense_gib(n: int, frame: int) -> float:
    return 2 * n * frame * frame * 4 / 2**30


def run_parent(args: argparse.Namespace) -> None:
    print(f"label image of one frame from {args.low_res} x {args.low_res} low-res logits (model input "
          f"{4 * args.low_res}), {args.device}, best of {args.repeats}; peak = peak RSS above the RSS before")
    print(f"{'objects':>7} {'frame':>9} | " + " | ".join(f"{p:>22}" for p in PATHS))
    for frame in args.frames:
        for n in args.objects:
            cells, digests = [], {}
            for path in PATHS:
                if path != "tiled" and dense_gib(n, frame) > args.limit_gb:
                    cells.append(f"not run: needs {dense_gib(n, frame):.1f} GiB".rjust(22))
                    continue
                command = [sys.executable, __file__, "--child", path, str(n), str(frame), "--low-res",
                           str(args.low_res), "--repeats", str(args.repeats), "--device", args.device]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    cells.append("failed".rjust(22))
                    print(done.stderr[-2000:], file=sys.stderr)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                digests[path] = result["digest"]
                device_peak = f" (+{result['device_peak_mib']:.0f} on GPU)" if result["device_peak_mib"] else ""
                cells.append(f"{result['time']:8.3f} s {result['peak_mib']:8.1f} MiB{device_peak}")
            agree = "" if len({tuple(d) for d in digests.values()}) <= 1 else "  LABELS DIFFER"
            print(f"{n:>7} {f'{frame}x{frame}':>9} | " + " | ".join(cells) + agree, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 16, 100, 500])
    parser.add_argument("--frames", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--low-res", type=int, default=128)
    parser.add_argument("--limit-gb", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "N", "FRAME"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        args.path, args.n, args.frame = args.child[0], int(args.child[1]), int(args.child[2])
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
