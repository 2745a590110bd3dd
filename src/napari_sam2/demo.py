"""Track two synthetic cells through a small 16-bit movie: ``python -m napari_sam2.demo [MODEL]``.

Without a model the weights are random (nothing is downloaded), so the masks are not meaningful, but
every step of the real pipeline runs and is timed. With a model name (``sam2.1_hiera_tiny``, downloaded
once) or a checkpoint path the cells are segmented and tracked.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from . import TrackingSession, build_model, describe_model, load_model


def synthetic_cells(num_frames: int = 8, size: int = 256, seed: int = 0) -> np.ndarray:
    """(T, Y, X) uint16 movie of two bright Gaussian cells drifting over a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = []
    for t in range(num_frames):
        img = 800 + rng.normal(0, 60, (size, size))
        for cy, cx, vy, vx in ((0.3, 0.3, 0.02, 0.015), (0.7, 0.6, -0.015, 0.01)):
            y, x = (cy + vy * t) * size, (cx + vx * t) * size
            img += 20000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (0.06 * size) ** 2))
        frames.append(np.clip(img, 0, 65535).astype(np.uint16))
    return np.stack(frames)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", help="model name or checkpoint (.pt); random weights if omitted")
    parser.add_argument("--config", default="sam2.1_hiera_tiny", help="architecture for random weights")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)

    movie = synthetic_cells(args.frames)
    if args.model is None:
        model = build_model(args.config, image_size=args.image_size)
    else:
        model = load_model(args.model, image_size=args.image_size, verbose=False)
    print(f"model {describe_model(model)}")
    if model.source is None:
        print("NOTE: these are RANDOM weights (nothing was downloaded): the masks below are meaningless shapes; "
              "the run only shows that every step works and how long it takes. For real segmentation: "
              "python -m napari_sam2.demo sam2.1_hiera_tiny")
    session = TrackingSession(model, movie)
    start = time.perf_counter()
    session.add_points(0, obj_id=1, points=[[77, 77]], labels=[1])
    session.add_points(0, obj_id=2, points=[[179, 154]], labels=[1])
    print(f"prompted 2 cells on frame 0 in {time.perf_counter() - start:.1f} s")
    labels = np.zeros(movie.shape, dtype=np.uint16)
    for output in session.propagate():
        frame = output.frame
        labels[frame] = output.label_image(np.uint16)
        areas = {i: int((labels[frame] == i).sum()) for i in output.obj_ids}
        print(f"frame {frame}: pixels per object {areas}")
    total = time.perf_counter() - start
    print(f"tracked {len(movie)} frames of {movie.shape[1:]} {movie.dtype} in {total:.1f} s "
          f"({total / len(movie):.2f} s per frame)")


if __name__ == "__main__":
    main()
