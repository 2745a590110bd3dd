"""Peak resident memory while tracking a movie, ours / reference, and its growth per frame (CPU, fp32).

    python benchmarks/bench_memory.py [--config sam2.1_hiera_t] [--frames 40 400] [--image-size 1024]
                                      [--frame-size S] [--objects 1] [--in-memory] [--only ours|reference]

Each measurement (implementation x number of frames) runs in a fresh child process (this script with
``--child``), so peaks never mix. The parent makes one random state dict (tests/reference_support.py) and, per
frame count, one synthetic movie (tests/video_scenarios.py) of uint8 RGB frames of the original size, saved as a
JPEG folder for the reference (its only input) and, decoded from those very JPEGs, as an uncompressed TIFF that we
get memory-mapped, the way a napari user has a large movie (``--in-memory`` adds a row where we get a plain numpy
array read from it instead). Both get the same click(s) on frame 0 (one object: the first blob) and propagate
forward over all frames; the yielded outputs are consumed and dropped on both sides (the label image a user keeps
is the same for both and is not counted). Needs the test extra and sam2==1.1.0.

Columns, per implementation and frame count:

* peak RSS: the process's peak resident set (VmHWM, reset after the model is built, or the sampled maximum of
  VmRSS if larger). It includes file-backed pages, e.g. the pages of a memory-mapped movie that were read, which
  are page cache the kernel can drop under memory pressure.
* peak anon: the maximum of RssAnon (/proc/self/status, sampled every 20 ms by a thread): memory that has to stay.
* base: RSS and RssAnon just before the movie is opened (after imports and model build: weights, libraries; free
  heap memory is first given back with malloc_trim, so that its reuse during tracking is counted).
* +RSS / +anon: peak above base, i.e. what tracking this movie costs.
* held: bytes the tracker itself holds at the end, counted tensor by tensor (ours: ``memory_bytes()`` of the
  session; reference: the tensors of its inference state, its float32 frames included), without allocator slack.
* time: wall time of the child process (imports, model build, loading, tracking), and of the tracking alone.

Then per implementation the growth per frame, (peak(N2) - peak(N1)) / (N2 - N1) for the smallest and largest
frame counts, of RSS, RssAnon and held bytes, and the ratios ours / reference. For scale, the reference keeps
every frame as a float32 3 x S x S tensor (S = model input size): 12 S^2 bytes a frame. Growth between small
frame counts is dominated by noise (allocator, transient activations); use a few hundred frames.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_sam2.engine.heap import release_free_heap  # re-exported for the other benchmarks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # shared with the parity tests

IMPLEMENTATIONS = {"ours": "ours", "ours-in-memory": "ours (in-memory array)", "reference": "reference"}
RESULT_PREFIX = "RESULT "
MIB = 1024 * 1024
GROWTH_KEYS = ("peak_rss", "peak_anon", "held")


# ---------------------------------------------------------------------------------------------- memory probes
def proc_status_kib(*fields: str) -> dict[str, int]:
    """The given fields of /proc/self/status, in KiB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in fields:
                values[name] = int(rest.split()[0])
    return values


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (VmHWM) of this process to its current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class PeakSampler:
    """Background thread keeping the maxima of VmRSS and RssAnon, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = {"VmRSS": 0, "RssAnon": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for name, value in proc_status_kib("VmRSS", "RssAnon").items():
            self.peak[name] = max(self.peak[name], value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---------------------------------------------------------------------------------------------- prompts
def object_clicks(n_objects: int, size: int) -> list[tuple[float, float]]:
    """(row, col) clicks: one object on the movie's first blob, more objects on bench_propagation's grid."""
    from bench_propagation import click_points

    return [(0.35 * size, 0.3 * size)] if n_objects == 1 else click_points(n_objects, size)


# ---------------------------------------------------------------------------------------------- child side
def build_ours(config: str, image_size: int, weights: Path) -> torch.nn.Module:
    """Our model with the shared random weights (the session's modules imported too, before the baseline)."""
    from napari_sam2 import TrackingSession, build_model  # noqa: F401

    model = build_model(config, image_size=image_size, device="cpu")
    model.load_state_dict(torch.load(weights), strict=True)
    return model


def build_theirs(config: str, image_size: int, weights: Path):
    """The reference video predictor with the shared random weights (no hole filling: it cannot on CPU)."""
    from reference_support import build_reference

    predictor = build_reference(config, image_size=image_size)
    predictor.load_state_dict(torch.load(weights), strict=True)
    predictor.fill_hole_area = 0
    return predictor


def tensor_bytes(tree: object, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable through dicts, lists and tuples."""
    seen = set() if seen is None else seen
    if isinstance(tree, torch.Tensor):
        storage = tree.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(item, seen) for item in tree)
    return 0


def track_ours(model: torch.nn.Module, movie: Path, in_memory: bool,
               clicks: list[tuple[float, float]]) -> tuple[int, int]:
    """Open the TIFF (memory-mapped, or read into an array), click, propagate forward.

    Returns the frames visited and the bytes the session says it holds (results, memories, feature cache).
    """
    from napari_sam2 import TrackingSession

    frames = tifffile.imread(movie) if in_memory else tifffile.memmap(movie, mode="r")
    session = TrackingSession(model, frames, contrast_limits=(0, 255), fill_hole_area=0)
    for obj_id, (row, col) in enumerate(clicks, start=1):
        session.add_points(0, obj_id, [(row, col)], [1])
    visited = sum(1 for _ in session.propagate(0, "forward"))
    return visited, sum(session.memory_bytes().values())


def track_theirs(predictor, movie: Path, clicks: list[tuple[float, float]]) -> tuple[int, int]:
    """Load the JPEG folder into an inference state, click, propagate forward.

    Returns the frames visited and the bytes of the tensors in the inference state (frames included).
    """
    state = predictor.init_state(video_path=str(movie))
    for obj_id, (row, col) in enumerate(clicks, start=1):
        predictor.add_new_points_or_box(state, 0, obj_id, points=np.array([[col, row]], np.float32),
                                        labels=np.array([1], np.int32))
    visited = sum(1 for _ in predictor.propagate_in_video(state, start_frame_idx=0))
    return visited, tensor_bytes(state)


def run_child(args: argparse.Namespace) -> None:
    """Build one implementation, then track one movie under the memory probes; print the result as JSON."""
    if args.child == "reference":
        tracker = build_theirs(args.config, args.image_size, args.weights)
    else:
        tracker = build_ours(args.config, args.image_size, args.weights)
    gc.collect()
    release_free_heap()
    base = proc_status_kib("VmRSS", "RssAnon")
    hwm_reset = reset_peak_rss()
    clicks = object_clicks(args.objects, args.frame_size)
    start = time.perf_counter()
    sampler = PeakSampler()
    sampler.start()
    try:
        with torch.inference_mode():
            if args.child == "reference":
                visited, held = track_theirs(tracker, args.movie, clicks)
            else:
                visited, held = track_ours(tracker, args.movie, args.child == "ours-in-memory", clicks)
    finally:
        sampler.stop()
    seconds = time.perf_counter() - start
    hwm = proc_status_kib("VmHWM")["VmHWM"] if hwm_reset else 0
    result = {"frames_visited": visited, "held": held, "track_s": seconds, "hwm_reset": hwm_reset,
              "base_rss": base["VmRSS"] * 1024, "base_anon": base["RssAnon"] * 1024,
              "peak_rss": max(hwm, sampler.peak["VmRSS"]) * 1024, "peak_anon": sampler.peak["RssAnon"] * 1024}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- parent side
def save_random_weights(config: str, image_size: int, path: Path) -> None:
    """One random state dict for both implementations (built by the reference, as in the parity tests)."""
    from reference_support import reference_with_random_weights

    predictor, state_dict = reference_with_random_weights(config, image_size=image_size, seed=0)
    torch.save(state_dict, path)
    del predictor, state_dict
    gc.collect()


def write_movie(num_frames: int, size: int, folder: Path) -> tuple[Path, Path]:
    """The synthetic movie as a JPEG folder and, decoded from those JPEGs, as an uncompressed TIFF."""
    from video_scenarios import synthetic_movie, write_jpeg_folder

    jpegs, tiff = folder / f"jpg_{num_frames}", folder / f"movie_{num_frames}.tif"
    decoded = write_jpeg_folder(synthetic_movie(num_frames, size), jpegs)
    tifffile.imwrite(tiff, decoded)
    tifffile.memmap(tiff, mode="r")  # raises where the layout cannot be memory-mapped
    return jpegs, tiff


def measure(args: argparse.Namespace, implementation: str, movie: Path, weights: Path) -> dict:
    """Run one child process; its result plus its wall time."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", implementation, "--movie", str(movie),
               "--weights", str(weights), "--config", args.config, "--image-size", str(args.image_size),
               "--frame-size", str(args.frame_size), "--objects", str(args.objects)]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise RuntimeError(f"child {implementation} on {movie.name} failed with exit code {done.returncode}")
    return {**json.loads(lines[-1][len(RESULT_PREFIX):]), "wall_s": wall}


def mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:.1f}"


def print_row(implementation: str, frames: int, r: dict) -> None:
    print(f"{IMPLEMENTATIONS[implementation]} | {frames} | {mib(r['peak_rss'])} | {mib(r['peak_anon'])} | "
          f"{mib(r['base_rss'])} / {mib(r['base_anon'])} | {mib(r['peak_rss'] - r['base_rss'])} | "
          f"{mib(r['peak_anon'] - r['base_anon'])} | {mib(r['held'])} | "
          f"{r['wall_s']:.0f} (tracking {r['track_s']:.1f})", flush=True)


def growth_per_frame(results: dict[int, dict], key: str) -> float:
    """Bytes per frame between the smallest and the largest frame count."""
    low, high = min(results), max(results)
    return (results[high][key] - results[low][key]) / (high - low)


def print_growth(results: dict[str, dict[int, dict]], image_size: int) -> None:
    print(f"\ngrowth per frame (KiB/frame); reference frame tensor 3 x {image_size}^2 float32 = "
          f"{12 * image_size ** 2 / 1024:.0f} KiB")
    print("implementation | RSS | anon | held | ours/reference RSS | ours/reference anon | ours/reference held")
    ref = results.get("reference")
    for implementation, by_frames in results.items():
        growth = [growth_per_frame(by_frames, key) for key in GROWTH_KEYS]
        ratios = "- | - | -"
        if ref is not None and implementation != "reference":
            ratios = " | ".join(f"{g / growth_per_frame(ref, key):.3f}" for g, key in zip(growth, GROWTH_KEYS))
        print(f"{IMPLEMENTATIONS[implementation]} | " + " | ".join(f"{g / 1024:.1f}" for g in growth) + f" | {ratios}")


def run_parent(args: argparse.Namespace) -> None:
    """Make weights and movies, run every child, print the tables."""
    implementations = ["ours", "ours-in-memory", "reference"]
    if not args.in_memory:
        implementations.remove("ours-in-memory")
    if args.only:
        implementations = [i for i in implementations if i.startswith(args.only)]
    frame_counts = sorted(set(args.frames))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32, {args.config}, model input "
          f"{args.image_size}, frames {args.frame_size}x{args.frame_size} RGB uint8, {args.objects} object(s)")
    results: dict[str, dict[int, dict]] = {i: {} for i in implementations}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = folder / "weights.pt"
        save_random_weights(args.config, args.image_size, weights)
        movies = {n: write_movie(n, args.frame_size, folder) for n in frame_counts}
        print("implementation | frames | peak RSS MiB | peak anon MiB | base RSS / anon MiB | +RSS MiB | "
              "+anon MiB | held MiB | time s")
        for implementation in implementations:
            for n in frame_counts:
                jpegs, tiff = movies[n]
                r = measure(args, implementation, jpegs if implementation == "reference" else tiff, weights)
                if r["frames_visited"] != n:
                    raise RuntimeError(f"{implementation} visited {r['frames_visited']} of {n} frames")
                results[implementation][n] = r
                print_row(implementation, n, r)
    if len(frame_counts) > 1:
        print_growth(results, args.image_size)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sam2.1_hiera_t")
    parser.add_argument("--frames", nargs="+", type=int, default=[40, 400], help="frame counts (two or more)")
    parser.add_argument("--image-size", type=int, default=1024, help="model input size S")
    parser.add_argument("--frame-size", type=int, default=None, help="frame height = width (default: S)")
    parser.add_argument("--objects", type=int, default=1, help="objects, one click each on frame 0")
    parser.add_argument("--in-memory", action="store_true", help="also give ours a plain in-memory numpy array")
    parser.add_argument("--only", choices=["ours", "reference"], help="measure one implementation only")
    parser.add_argument("--child", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--movie", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frame_size is None:
        args.frame_size = args.image_size
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
