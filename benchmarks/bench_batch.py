"""Wall time of ``track_many`` on the 4-movie test batch with 1 and with 2 dask workers (issue 17).

    python benchmarks/bench_batch.py [--workers 1 2] [--frames 4] [--size 128] [--cores N] [--repeat 1]

The batch of tests/test_batch_run.py: 4 movies of 64 x 64 pixels (``--frames`` frames each, one with a broken
prompt file), a random-weight SAM 2.1 tiny checkpoint run at model input ``--size``. For each worker count the
cluster ``napari-sam2 batch --workers N`` would start is started (``batch_cluster.local_client``: 1 dask thread
per worker, the cores found, or ``--cores``, split among them as torch threads), then ``track_many`` runs into a
fresh folder: the time printed is that call's, which includes each worker loading the model once (the cluster's
start is printed apart). Shared machines give noisy figures: say how loaded the machine was when quoting them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' movies and checkpoint

from batch_support import write_four_movie_sheet
from checkpoint_files import write_checkpoint

from napari_sam2 import track_many
from napari_sam2.batch_cluster import close_client, cpu_cores, local_client
from napari_sam2.batch_movie import ModelSpec


def torch_threads() -> int:
    """The torch threads of the worker this runs on (what its movies get)."""
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="model input size")
    parser.add_argument("--cores", type=int, default=None,
                        help="cores shared by the workers (default: those this process may use)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sheet = write_four_movie_sheet(root, args.frames)
        spec = ModelSpec(str(write_checkpoint(root / "tiny.pt", "sam2.1_hiera_t", seed=3, object_score_bias=8.0)),
                         image_size=args.size, device="cpu")
        print(f"4 movies of {args.frames} x 64 x 64, model input {args.size}, {args.cores or cpu_cores()} core(s), "
              f"load average {os.getloadavg()[0]:.1f}")
        for workers in args.workers:
            run_batch(sheet, root, spec, workers, args.cores, args.repeat)


def run_batch(sheet: Path, root: Path, spec: ModelSpec, workers: int, cores: int | None, repeat: int) -> None:
    """Print the wall time of ``repeat`` batches on a new ``local_client(workers)``, closed at the end."""
    started = time.perf_counter()
    client = local_client(workers, cpu_count=cores)
    try:
        startup = time.perf_counter() - started
        threads = ",".join(str(n) for n in sorted(set(client.run(torch_threads).values())))
        for attempt in range(repeat):
            begin = time.perf_counter()
            summary = track_many(sheet, root / f"out-{workers}-{attempt}", client, model=spec, progress=False)
            seconds = time.perf_counter() - begin
            statuses = ",".join(line["status"] for line in summary)
            print(f"{workers} worker(s) x {threads} torch thread(s): {seconds:.1f} s for the batch "
                  f"(cluster start {startup:.1f} s; {statuses}; load average {os.getloadavg()[0]:.1f})")
    finally:
        close_client(client)


if __name__ == "__main__":
    main()
