"""The GPU check of issue 14, one command: parity on CUDA, speed against the reference, memory, recompiles.

    PYTHONPATH=src python benchmarks/gpu_check.py [--out gpu_check.md] [--budget-s 480]

On a CUDA machine (needs torch, numpy, scipy, pillow and the reference ``sam2==1.1.0`` with ``hydra-core``,
``omegaconf``, ``iopath`` and ``antlr4-python3-runtime``, installed without dependencies so that they keep the
machine's torch; ``bash benchmarks/gpu_wheels.sh DIR`` builds those five as wheels for a machine without a
package index, and its header says how to install them there):

1. runs the parity scenarios of ``tests/video_scenarios.py`` on CUDA in fp32 with TF32 off, ours against the
   reference on the same GPU, from one random state dict (max |logit difference|, target <= 1e-3);
2. runs ``bench_gpu.py`` for SAM 2.1 tiny and base+ with 1, 16 and 64 objects against the reference's
   ``vos_optimized=True`` predictor at the precision our session picks for the GPU: frames per second,
   the ratio (targets: >= 1x at 1 object, >= 2x at 16, >= 4x at 64), peak GPU memory (target: at most the
   reference's) and our recompiles after warm-up (target: 0); then tiny at 16 objects once more with our
   value folding off, to see whether folding pays on that GPU;
3. runs ``bench_population.py`` on the GPU: 1, 16, 100 and 500 cells seeded from a label image on frames of
   1024 x 1024 and 2048 x 2048 at model input 512 (seconds per frame split into the model and the rest, peak
   memory, held results per object-frame, ``add_labels`` time);
4. writes all of it as one markdown file (``--out``) and prints it.

Stages and object counts run in that order; once ``--budget-s`` seconds (default 360) have passed, the
ones not started are skipped and say so, so that the whole run stays within about 8 minutes (the device tool
lends 15). The file is rewritten after every line: a run stopped from outside keeps what it measured. On a machine without CUDA it says so, runs a
smoke version on the CPU (one small parity scenario, a 128-pixel benchmark without compiling) and exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # the reference's progress bars would bury the table
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_gpu import Row, measure_config
from bench_population import TABLE_HEADER, measure, table_row
from video_scenarios import SCENARIOS, synthetic_movie, write_jpeg_folder

from napari_sam2.engine.acceleration import describe_precision, resolve_precision

PARITY_TOLERANCE = 1e-3
SPEED_TARGETS = {1: 1.0, 16: 2.0, 64: 4.0}  # ours / reference frames per second, by object count


class Report:
    """The markdown being written, plus a clock against the time budget."""

    def __init__(self, budget_s: float, out: Path) -> None:
        self.lines: list[str] = []
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.out = out

    def add(self, line: str = "") -> None:
        """Print a line and rewrite the file with it, so that a run stopped from outside keeps what it had."""
        self.lines.append(line)
        print(line, flush=True)
        self.out.write_text("\n".join(self.lines) + "\n")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def out_of_time(self, what: str) -> bool:
        if self.elapsed < self.budget_s:
            return False
        self.add(f"| {what} | not measured: the {self.budget_s:.0f} s budget was spent |")
        return True

    def failed(self, what: str, error: BaseException) -> None:
        first = (str(error).strip().splitlines() or [""])[0][:160]
        self.add(f"| {what} | failed: {type(error).__name__}: {first} |")
        traceback.print_exc()


def parity(report: Report, device: str, names: list[str]) -> None:
    report.add("## Parity (fp32, TF32 off), ours against the reference on the same device")
    report.add()
    report.add("| scenario | logit maps compared | max abs diff | within 1e-3 |")
    report.add("|---|---|---|---|")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        _parity_rows(report, device, names)
    finally:  # the speed stage runs with torch's defaults
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    report.add()


def _parity_rows(report: Report, device: str, names: list[str]) -> None:
    for name in names:
        if report.out_of_time(name):
            continue
        try:
            with tempfile.TemporaryDirectory() as tmp:
                pair = SCENARIOS[name](Path(tmp), device)
            ok = "yes" if pair.max_diff <= PARITY_TOLERANCE else "**no**"
            report.add(f"| {name} | {len(pair.diffs)} | {pair.max_diff:.2e} | {ok} |")
        except Exception as error:  # noqa: BLE001 - a failed scenario is a row of the report, the rest goes on
            report.failed(name, error)


def speed(report: Report, device: torch.device, configs: list[str], objects: list[int], frames: int, size: int,
          compile_model: bool, precision: str, fold_values: bool = True, with_reference: bool = True) -> None:
    reference = "the reference's vos_optimized predictor" if compile_model else "the plain reference predictor"
    if not with_reference:
        reference = "nothing (ours only: compare with the folded row above)"
    folding = "" if fold_values else ", our value folding off (256-channel values, as the reference)"
    report.add(f"## Speed: {frames} frames of {size} x {size}, {precision}, compile={compile_model}{folding}, "
               f"against {reference}")
    report.add()
    report.add("| config | objects | ours fps | reference fps | ours / ref | target | ours peak MiB | "
               "ref peak MiB | our recompiles after warm-up |")
    report.add("|---|---|---|---|---|---|---|---|---|")

    def add_row(row: Row) -> None:
        target = SPEED_TARGETS.get(row.objects)
        met = "" if target is None else f">= {target:g}x: {'met' if row.speedup >= target else '**missed**'}"
        recompiles = "not compiled" if row.recompiles is None else str(row.recompiles)
        report.add(f"| {row.config} | {row.objects} | {row.ours_fps:.2f} | {row.ref_fps:.2f} | {row.speedup:.2f} | "
                   f"{met} | {row.ours_peak_mib:.0f} | {row.ref_peak_mib:.0f} | {recompiles} |")

    def keep_going(config: str, n_objects: int) -> bool:
        return not report.out_of_time(f"{config}, {n_objects} objects")

    with tempfile.TemporaryDirectory() as tmp:
        movie = write_jpeg_folder(synthetic_movie(frames, size), Path(tmp) / "jpg")
        for config in configs:
            if report.out_of_time(config):
                continue
            try:
                measure_config(config, objects, movie, Path(tmp) / "jpg", device, compile_model, precision,
                               fold_values=fold_values, report=add_row, keep_going=keep_going,
                               with_reference=with_reference)
            except Exception as error:  # noqa: BLE001 - a failed config is a row of the report, the rest goes on
                report.failed(config, error)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report.add()


def population(report: Report, device: str, objects: list[int], frame_sizes: list[int], size: int,
               frames: int) -> None:
    """bench_population.py's table on ``device``: 1 to 500 cells seeded from a label image (issue 15)."""
    report.add(f"## Populations (bench_population.py: SAM 2.1 tiny, random weights, model input {size}, "
               f"{frames} frames, {device})")
    report.add()
    report.add(TABLE_HEADER)
    for frame in frame_sizes:
        for n in objects:
            what = f"{frame} x {frame} | {n}"
            if report.out_of_time(what):
                continue
            try:
                report.add(table_row(frame, measure(frame, n, size, frames, device)))
            except Exception as error:  # noqa: BLE001 - one row failing must not lose the others
                report.failed(what, error)
    report.add()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="start no new stage or object count after this many seconds (one already running "
                             "ends: allow about 2 minutes more, e.g. the device tool's timeout_s=600)")
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    report = Report(args.budget_s, args.out)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = resolve_precision(None, device)
    report.add("# GPU check (benchmarks/gpu_check.py)")
    report.add()
    report.add(f"torch {torch.__version__}, Python {platform.python_version()}, "
               f"{describe_precision(device, precision)}")
    report.add()
    if cuda:
        parity(report, "cuda", list(SCENARIOS))
        speed(report, device, ["sam2.1_hiera_t", "sam2.1_hiera_b+"], [1, 16, 64], args.frames, 1024,
              compile_model=True, precision=precision)
        # Whether folding the 64-channel values before their projection pays on this GPU (it does on the CPU).
        speed(report, device, ["sam2.1_hiera_t"], [16], args.frames, 1024, compile_model=True, precision=precision,
              fold_values=False, with_reference=False)
        population(report, "cuda", [1, 16, 100, 500], [1024, 2048], size=512, frames=4)
    else:
        report.add("**No CUDA GPU here** (torch.cuda.is_available() is False): a smoke run on the CPU only; "
                   "no GPU figure was measured.")
        report.add()
        parity(report, "cpu", ["sam2.0 20 frames @128"])
        speed(report, device, ["sam2.1_hiera_t"], [1, 2], 3, 128, compile_model=False, precision=precision)
        population(report, "cpu", [2], [256], size=128, frames=2)
    report.add(f"Total {report.elapsed:.0f} s.")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
