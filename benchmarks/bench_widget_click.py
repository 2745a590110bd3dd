"""Time from a click in the napari widget to the mask in the Labels layer (run under a display, e.g. xvfb-run).

    xvfb-run -a python benchmarks/bench_widget_click.py [--model sam2.1_hiera_tiny] [--size 512] [--clicks 10]

Measures, through the real dock widget and a real viewer: the first click on a frame (the frame is encoded), then
further clicks on the same (cached) frame, from ``Points.add`` until the Labels layer holds the new mask. Without
``--model`` a random-weight SAM 2.1 tiny at the full 1024 input size is used (same speed as the real weights).
Axis order is napari's (T, Y, X); clicks are (row, col).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="known model name or checkpoint path (default: random tiny)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=512, help="frame size in pixels (square)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=10, help="clicks on the cached frame")
    args = parser.parse_args()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam2 import build_model, load_model
    from napari_sam2.plugin.prompt_layers import prompt_rows
    from napari_sam2.plugin.widget import SAM2TrackingWidget
    from napari_sam2.sample_data import synthetic_cells_movie

    torch.manual_seed(0)
    model = (load_model(args.model, args.device) if args.model
             else build_model("sam2.1_hiera_t", device=args.device or "cpu"))
    movie, _ = synthetic_cells_movie(args.frames, args.size)
    viewer = napari.Viewer(show=False)
    layer = viewer.add_image(movie)
    widget = SAM2TrackingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.use_model(model)
    widget.set_image_layer(layer)
    app = QApplication.instance()
    rng = np.random.default_rng(0)

    def timed_click(frame: int) -> float:
        yx = rng.uniform(0.2, 0.8, size=(1, 2)) * args.size
        start = time.perf_counter()
        widget.points_layer.add(prompt_rows(widget.controller.target, frame, yx))
        while not widget.idle:
            app.processEvents()
            time.sleep(0.001)
        return time.perf_counter() - start

    first = timed_click(0)
    cached = [timed_click(0) for _ in range(args.clicks)]
    print(f"device {widget.controller.session.device}, {torch.get_num_threads()} threads, "
          f"frames {args.size}x{args.size}, model input {model.image_size}")
    print(f"first click (frame encoded): {first * 1000:.0f} ms")
    print(f"click on the cached frame: median {statistics.median(cached) * 1000:.0f} ms, "
          f"min {min(cached) * 1000:.0f} ms, max {max(cached) * 1000:.0f} ms over {len(cached)} clicks")
    viewer.close()


if __name__ == "__main__":
    main()
