"""Click latency in the napari widget: widget overhead over the engine, and clicks after the viewer rested on a frame.

    xvfb-run -a python benchmarks/bench_widget_click.py [--model sam2.1_hiera_tiny] [--size 1024] [--objects 1]

Through the real dock widget and a real viewer, a random-weight SAM 2.1 tiny at the full 1024 input size unless
``--model`` is given (same speed as the real weights). Reported, in milliseconds:

* clicks on a cached frame: the time from the click (``Points.add``, as napari's add mode does) until the Labels
  layer holds the new mask, split into napari's own ``Points.add``, the engine's time (``TrackingSession.add_points``
  / ``add_box`` in the worker) and the widget's overhead (the rest: reading prompts, the job, writing the layer);
* the first click on a new frame, with and without resting ``--dwell`` seconds on it first (encoding ahead);
* a correction click on a tracked frame, with and without the dwell (encoding and memory attention ahead).

Axis order is napari's (T, Y, X); clicks are (row, col). Targets (issue 13): overhead <= 30 ms, dwell clicks <= 150 ms.
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
    parser.add_argument("--size", type=int, default=1024, help="frame size in pixels (square)")
    parser.add_argument("--objects", type=int, default=1, help="objects clicked on frame 0 before timing")
    parser.add_argument("--clicks", type=int, default=10, help="timed clicks on the cached frame")
    parser.add_argument("--dwell", type=float, default=2.0, help="seconds the viewer rests on a frame")
    args = parser.parse_args()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam2 import build_model, load_model
    from napari_sam2.plugin.prompt_layers import prompt_rows, set_prompt_defaults
    from napari_sam2.plugin.widget import SAM2TrackingWidget
    from napari_sam2.sample_data import synthetic_cells_movie

    torch.manual_seed(0)
    model = (load_model(args.model, args.device) if args.model
             else build_model("sam2.1_hiera_t", device=args.device or "cpu"))
    movie, _ = synthetic_cells_movie(12, args.size)
    viewer = napari.Viewer(show=False)
    layer = viewer.add_image(movie)
    widget = SAM2TrackingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.use_model(model)
    widget.set_image_layer(layer)
    app = QApplication.instance()
    rng = np.random.default_rng(0)
    engine: list[float] = []

    def wait_idle() -> None:
        while not widget.idle:
            app.processEvents()
            time.sleep(0.001)

    def rest(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.005)
        wait_idle()  # the encoding ahead, if it is still running

    def go_to(frame: int) -> None:
        viewer.dims.set_current_step(0, frame)

    def timed_click(frame: int, obj_id: int, positive: bool = True) -> tuple[float, float, float]:
        """(total, Points.add, engine) seconds of one click."""
        yx = rng.uniform(0.3, 0.7, size=(1, 2)) * args.size
        set_prompt_defaults(widget.points_layer, obj_id=obj_id, positive=positive)
        engine.clear()
        start = time.perf_counter()
        widget.points_layer.add(prompt_rows(widget.controller.target, frame, yx))
        added = time.perf_counter()
        wait_idle()
        return time.perf_counter() - start, added - start, sum(engine)

    def instrument(session) -> None:
        for name in ("add_points", "add_box"):
            method = getattr(session, name)

            def timed(*a, _method=method, **k):
                t0 = time.perf_counter()
                try:
                    return _method(*a, **k)
                finally:
                    engine.append(time.perf_counter() - t0)
            setattr(session, name, timed)

    widget.dwell.delay_ms = None  # no encoding ahead until the dwell measurements
    go_to(0)
    timed_click(0, 1)  # creates the session, encodes frame 0
    instrument(widget.controller.session)
    for obj_id in range(2, args.objects + 1):
        widget.new_object()
        timed_click(0, obj_id)
    cached = [timed_click(0, 1 + i % args.objects) for i in range(args.clicks)]

    # Frames 0..6 tracked; the feature cache (4 frames) then holds 3..6. Frames 1, 2 are tracked and not cached,
    # frames 10, 11 never seen.
    widget.propagate(direction="forward", start=0, first=0, last=6)
    wait_idle()
    correction_plain = timed_click(1, 1, positive=False)[0]
    new_plain = timed_click(11, 1)[0]
    widget.dwell.delay_ms = 1000
    widget.objects.select_id(1)  # the object the user is about to correct is the selected one
    go_to(2)
    rest(args.dwell)
    correction_dwell = timed_click(2, 1, positive=False)[0]
    go_to(10)
    rest(args.dwell)
    new_dwell = timed_click(10, 1)[0]

    totals = [c[0] for c in cached]
    overhead = [total - add - eng for total, add, eng in cached]
    ms = 1000.0
    print(f"device {widget.controller.session.device}, {torch.get_num_threads()} threads, "
          f"frames {args.size}x{args.size}, model input {model.image_size}, {args.objects} object(s)")
    print(f"click on a cached frame: median {statistics.median(totals) * ms:.0f} ms "
          f"(napari Points.add {statistics.median([c[1] for c in cached]) * ms:.0f} ms, "
          f"engine {statistics.median([c[2] for c in cached]) * ms:.0f} ms, "
          f"widget overhead median {statistics.median(overhead) * ms:.1f} ms, max {max(overhead) * ms:.1f} ms)")
    print(f"first click on a new frame: {new_plain * ms:.0f} ms plain, {new_dwell * ms:.0f} ms after "
          f"{args.dwell:g} s dwell")
    print(f"correction click on a tracked frame: {correction_plain * ms:.0f} ms plain, {correction_dwell * ms:.0f} ms "
          f"after {args.dwell:g} s dwell")
    viewer.close()


if __name__ == "__main__":
    main()
