"""Wall time of ``track_many`` on the 4-movie test batch with 1 and with 2 dask workers (issue 17).

    python benchmarks/bench_batch.py [--workers 1 2] [--frames 4] [--size 128] [--cores N] [--repeat 1]

The batch of tests/test_batch_run.py: 4 movies of 64 x 64 pixels (``--frames`` frames each, one with a broken
prompt file), a random-weight SAM 2.1 tiny checkpoint run at model input ``--size``. For each worker count a
LocalCluster of that many worker processes (1 dask thread each, ``cores // workers`` torch threads each) is
started, then ``track_many`` runs into a fresh folder: the time printed is that call's, which includes each
worker loading the model once (the cluster's start is printed apart). Shared machines give noisy figures:
say how loaded the machine was when quoting them.
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
from napari_sam2.batch_movie import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="model input size")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores shared by the workers")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sheet = write_four_movie_sheet(root, args.frames)
        spec = ModelSpec(str(write_checkpoint(root / "tiny.pt", "sam2.1_hiera_t", seed=3, object_score_bias=8.0)),
                         image_size=args.size, device="cpu")
        print(f"4 movies of {args.frames} x 64 x 64, model input {args.size}, {args.cores} core(s), "
              f"load average {os.getloadavg()[0]:.1f}")
        for workers in args.workers:
            threads = max(1, args.cores // workers)
            started = time.perf_counter()
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                              env={"OMP_NUM_THREADS": str(threads)}) as cluster, Client(cluster) as client:
                startup = time.perf_counter() - started
                for attempt in range(args.repeat):
                    begin = time.perf_counter()
                    summary = track_many(sheet, root / f"out-{workers}-{attempt}", client, model=spec,
                                         progress=False)
                    seconds = time.perf_counter() - begin
                    statuses = ",".join(line["status"] for line in summary)
                    print(f"{workers} worker(s) x {threads} torch thread(s): {seconds:.1f} s for the batch "
                          f"(cluster start {startup:.1f} s; {statuses}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
