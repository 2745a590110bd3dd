"""The napari widget with a population: 500 seeded cells, a propagated frame's write and clicks among them.

    xvfb-run -a python benchmarks/bench_widget_population.py [--cells 500] [--frame 1024] [--size 512] [--model NAME]

Through the real dock widget and a real viewer, a random-weight SAM 2.1 tiny at model input ``--size`` unless
``--model`` is given (random weights run as fast as the official ones). The output Labels layer starts with ``--cells``
discs (about 36 pixels across) on frame 0 of a (4, frame, frame) movie; reported, in milliseconds:

* the object list filled with the layer's labels (``set_labels_layer``), and "Seed from labels" (the engine's
  ``add_labels`` in the worker, then the frame written and the objects listed);
* per propagated frame: the label image in the worker (``FrameOutput.label_image``, no dense logits) and the write in
  the GUI thread (``TrackingController.apply``), against what the widget did before issue 15 (the dense
  (objects, Y, X) logits, then ``labels_from_logits``);
* clicks, from ``Points.add`` until the Labels layer holds the result: on the propagated frame a new object, a refining
  click on it and a click on a tracked object; on the seeded frame a click on a seeded object. Each with the engine's
  own time (``add_points``), the whole-frame label image's (``FrameOutput.label_image``: a frame whose labels were
  not kept) and the window's (``session.label_image(frame, window=...)`` of the union of the object's boxes before
  and after, with ``session.object_box``), and how it was rendered. With random weights a tracked object's logits
  are > 0 on most of the frame (every object's are), so its window is nearly the whole frame; seeded cells stay
  small, as real cells do.

Axis order is napari's (T, Y, X); clicks are (row, col).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def disc_labels(count: int, side: int, radius: float = 18.0) -> np.ndarray:
    """(side, side) uint16 label image of ``count`` discs (labels 1..count) on a jittered grid, row by row."""
    per_row = int(np.ceil(np.sqrt(count)))
    pitch = side / per_row
    rng = np.random.default_rng(0)
    labels = np.zeros((side, side), np.uint16)
    r = min(radius, pitch / 2 - 2)
    yy, xx = np.mgrid[:side, :side]
    for label in range(1, count + 1):
        row, col = divmod(label - 1, per_row)
        cy, cx = (np.array([row, col]) + 0.5) * pitch + rng.uniform(-2, 2, 2)
        box = (slice(max(int(cy - r) - 1, 0), int(cy + r) + 2), slice(max(int(cx - r) - 1, 0), int(cx + r) + 2))
        labels[box][(yy[box] - cy) ** 2 + (xx[box] - cx) ** 2 < r * r] = label
    return labels


class Timer:
    """Wraps methods of an object and sums the seconds spent in each (per name) until :meth:`take`."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = {}

    def wrap(self, owner: object, name: str, key: str | None = None) -> None:
        method = getattr(owner, name)
        key = key or name

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent.setdefault(key, []).append(time.perf_counter() - start)
        setattr(owner, name, timed)

    def take(self, key: str) -> list[float]:
        return self.spent.pop(key, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="known model name or checkpoint path (default: random tiny)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=512, help="model input size of the random model")
    parser.add_argument("--frame", type=int, default=1024, help="frame size in pixels (square)")
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--frames", type=int, default=1, help="frames propagated after frame 0")
    args = parser.parse_args()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' random-weight model
    from session_support import small_model

    from napari_sam2 import load_model
    from napari_sam2.engine.outputs import FrameOutput
    from napari_sam2.engine.postprocess import labels_from_logits
    from napari_sam2.plugin.prompt_layers import prompt_rows, set_prompt_defaults
    from napari_sam2.plugin.widget import SAM2TrackingWidget

    model = load_model(args.model, args.device) if args.model else small_model(args.size)
    seeds = disc_labels(args.cells, args.frame)
    movie = np.stack([np.where(seeds > 0, 3000, 300) + t for t in range(4)]).astype(np.uint16)
    viewer = napari.Viewer(show=False)
    image = viewer.add_image(movie, contrast_limits=(0, 3500))
    widget = SAM2TrackingWidget(viewer)
    widget.dwell.delay_ms = None
    viewer.window.add_dock_widget(widget)
    widget.use_model(model)
    widget.set_image_layer(image)
    app = QApplication.instance()
    ms = 1000.0

    def wait_idle() -> float:
        start = time.perf_counter()
        while not widget.idle:
            app.processEvents()
            time.sleep(0.001)
        return time.perf_counter() - start

    wait_idle()
    data = np.zeros(movie.shape, np.uint32 if args.cells > 65535 else np.uint16)
    data[0] = seeds
    layer = viewer.add_labels(data, name="cells")
    viewer.dims.set_current_step(0, 0)
    start = time.perf_counter()
    widget.set_labels_layer(layer)
    fill = time.perf_counter() - start
    controller = widget.controller
    timer = Timer()
    timer.wrap(FrameOutput, "label_image")  # (on the class: every output of the session)
    timer.wrap(controller, "apply")
    start = time.perf_counter()
    widget.seed_from_labels()
    wait_idle()
    seeding = time.perf_counter() - start
    session = controller.session
    print(f"device {session.device}, {torch.get_num_threads()} threads, frames {args.frame}x{args.frame}, model input "
          f"{model.image_size}, {len(session.obj_ids)} objects seeded")
    print(f"object list filled with {len(widget.objects.ids)} labels: {fill * ms:.0f} ms; seed from labels "
          f"{seeding:.1f} s, of which the seeded frame's write (GUI, {len(session.obj_ids)} exact masks) "
          f"{sum(timer.take('apply')) * ms:.0f} ms")
    widget.propagate(direction="forward", start=0, first=0, last=args.frames)
    wait_idle()
    label_images, applies = timer.take("label_image"), timer.take("apply")
    start = time.perf_counter()
    dense = labels_from_logits(*session.frame_logits(args.frames), dtype=layer.data.dtype)
    before = time.perf_counter() - start
    assert np.array_equal(dense, np.asarray(layer.data[args.frames])), "the layer differs from the engine's labels"
    print(f"propagated frame write: label image {statistics.median(label_images) * ms:.0f} ms (worker), "
          f"apply {statistics.median(applies) * ms:.0f} ms (GUI) per frame over {len(applies)} frames; "
          f"before (dense logits + labels_from_logits): {before * ms:.0f} ms")

    engine = Timer()
    engine.wrap(session, "add_points")
    engine.wrap(session, "label_image", "window")
    if hasattr(session, "object_box"):
        engine.wrap(session, "object_box")
    rng = np.random.default_rng(1)
    frame = args.frames

    labels = controller.frame_labels

    def timed_click(obj_id: int, yx: tuple[float, float], positive: bool = True, on: int = frame) -> tuple:
        viewer.dims.set_current_step(0, on)
        set_prompt_defaults(widget.points_layer, obj_id=obj_id, positive=positive)
        start = time.perf_counter()
        widget.points_layer.add(prompt_rows(controller.target, on, np.asarray([yx], float)))
        wait_idle()
        total = time.perf_counter() - start
        times = (total, sum(engine.take("add_points")), sum(timer.take("label_image")),
                 sum(engine.take("window")) + sum(engine.take("object_box")), labels.last_render)
        # The layer holds the engine's labels (the seeded frame: each seeded cell's exact mask instead).
        assert on == 0 or np.array_equal(np.asarray(layer.data[on]), session.label_image(on)), "labels differ"
        engine.take("window")
        return times

    rows = []
    new = widget.new_object()
    gap = np.argwhere(np.asarray(layer.data[frame]) == 0)
    spot = tuple(gap[rng.integers(len(gap))])
    rows.append(("new object", timed_click(new, spot)))
    rows.append(("refine it", timed_click(new, (spot[0] + 3, spot[1] + 3), positive=False)))
    plane = np.asarray(layer.data[frame])
    seeded = int(np.bincount(plane.ravel(), minlength=args.cells + 1)[1:args.cells + 1].argmax()) + 1
    inside = tuple(np.argwhere(plane == seeded)[0])
    rows.append(("tracked object", timed_click(seeded, inside)))
    cell = args.cells // 2
    centre = tuple(np.argwhere(seeds == cell).mean(axis=0))
    rows.append(("seeded object (frame 0)", timed_click(cell, centre, on=0)))
    for name, (total, add, whole, window, how) in rows:
        print(f"click, {name}: {total * ms:.0f} ms (engine add_points {add * ms:.0f} ms, whole-frame label image "
              f"{whole * ms:.0f} ms, window label image + object box {window * ms:.0f} ms; {how})")
    viewer.close()


if __name__ == "__main__":
    main()
