"""Make the screenshots of docs/user-guide.md: the real napari viewer, the real "SAM 2 tracking" dock widget.

Run it from the repository root, on a desktop or under Xvfb::

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_screenshots.py                  # random weights
    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_screenshots.py --model sam2.1_hiera_tiny

It opens napari (window 1400 x 1000), opens the plugin's synthetic time-lapse sample (the same code as
File > Open Sample > SAM 2 tracking; its ground truth stays hidden), docks the widget and walks through the
workflow, saving one PNG of the whole window per step into docs/images/:

1. ``01-model-loaded.png``   the widget docked, a model loaded
2. ``02-prompts.png``        clicks (green positive, red negative) and a box on frame 0, masks shown
3. ``03-propagating.png``    propagation under way: progress bar with ETA, Cancel enabled
4. ``04-painted-correction.png``  a correction painted with the Labels brush on a later frame
5. ``05-repropagated.png``   after propagating again from that frame: the status line names the correction
6. ``06-tracks.png``         a Tracks layer, and the session / export buttons
7. ``07-division-review.png``   the Divisions box: a proposal chosen, its frame shown, its two parts previewed
8. ``08-division-accepted.png`` the proposal accepted: the parent ends, the Tracks layer shows the lineage graph

Steps 7 and 8 (``--only divisions`` makes just those) start from a segmentation of every frame (the sample's
hidden ground truth stands in for one), given to the session as ``session.add_labels(labels, frames=...)`` does
from the console, over the frames around the division only (so that the run is short). The proposal found there
(cell 3 into 8 and 9) comes from that segmentation, not from the model, so it is the same with random weights.

With ``--model`` (a known name such as ``sam2.1_hiera_tiny``, downloaded once, or a checkpoint path) the
model is loaded through the widget (``SAM2TrackingWidget.load_model``, as the Load model button does).
Without it, a SAM 2.1 tiny model with **random weights** is built (image size 256, ``--seed``, object-score
bias raised so that objects are judged present, as tests/checkpoint_files.py does), because the official
weights cannot be downloaded on the machine that built the docs. The masks in such screenshots are
meaningless shapes; the widget, the layers and the messages are real. The default seed was picked so that
the masks are neither empty nor the whole frame.

Besides the screenshots, the script checks a few things the guide states and stops with an error when one
does not hold: a painted correction survives re-propagation, the exports write files, the propagation run
is one undo step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
WINDOW = (1400, 1000)
MAX_PNG_BYTES = 400_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or checkpoint path for napari_sam2.load_model "
                                        "(default: random weights, nothing downloaded)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the random weights (default 3)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "images"),
                        help="folder for the PNGs (default: docs/images next to this script)")
    parser.add_argument("--correction-frame", type=int, default=30, help="frame painted in step 4 (default 30)")
    parser.add_argument("--only", choices=("all", "divisions"), default="all",
                        help="make every screenshot (default) or only those of the Divisions box (07, 08)")
    return parser.parse_args(argv)


def random_model(seed: int):
    """SAM 2.1 tiny with random weights at image size 256 (the sample is 256 x 256), objects judged present."""
    import torch

    from napari_sam2 import build_model

    torch.manual_seed(seed)
    model = build_model("sam2.1_hiera_t", image_size=256, device="cpu")
    with torch.no_grad():
        model.state_dict()[OBJECT_SCORE_BIAS].fill_(8.0)
    return model  # model.source is None: the widget says "random weights"


class Shooter:
    """Drives the Qt event loop and saves window screenshots."""

    def __init__(self, viewer, widget, out: Path) -> None:
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.viewer, self.widget, self.out = viewer, widget, out
        self.saved: list[Path] = []

    def pump(self, seconds: float = 0.3) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 900.0, during=None) -> None:
        """Process events until the widget runs no job and has no prompt left to send; ``during()`` is called
        between events (e.g. to take a screenshot half-way)."""
        start = time.perf_counter()
        while not self.widget.idle:
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"the widget was still busy after {timeout:.0f} s: {self.widget.status.text()}")
            self.app.processEvents()
            if during is not None:
                during()
            time.sleep(0.01)
        self.pump(0.5)
        status = self.widget.status.text()
        if status.startswith("Error"):
            raise RuntimeError(f"the widget reported an error: {status}")

    def shoot(self, name: str) -> Path:
        from PIL import Image

        self.pump(0.5)
        path = self.out / name
        self.viewer.screenshot(str(path), canvas_only=False)
        if path.stat().st_size > MAX_PNG_BYTES:  # 256 colours are plenty for napari's flat UI
            Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        scale = 1.0
        while path.stat().st_size > MAX_PNG_BYTES and scale > 0.5:
            scale -= 0.1
            image = Image.open(path).convert("RGB")
            image = image.resize((round(WINDOW[0] * scale), round(WINDOW[1] * scale)), Image.Resampling.LANCZOS)
            image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        with Image.open(path) as image:
            print(f"{path}: {image.size[0]} x {image.size[1]}, {path.stat().st_size / 1000:.0f} kB", flush=True)
        self.saved.append(path)
        return path


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(ys.mean()), float(xs.mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari


    viewer = napari.Viewer(show=True, title="napari")
    viewer.window.resize(*WINDOW)
    _image_layer, truth_layer = viewer.open_sample("napari-sam2", "time_lapse")  # File > Open Sample
    truth = np.asarray(truth_layer.data)  # only used to place clicks, boxes and strokes on the cells
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "Segment and track")  # Plugins menu
    shots = Shooter(viewer, widget, out)
    shots.pump(1.0)
    viewer.reset_view()

    # ------------------------------------------------------------- 1. model
    if args.model:
        widget.load_model(args.model)
    else:
        widget.use_model(random_model(args.seed))
    shots.wait_idle()
    if widget.controller.model is None:
        raise RuntimeError(f"no model loaded: {widget.status.text()}")
    viewer.dims.set_current_step(0, 0)
    viewer.reset_view()
    if args.only == "divisions":
        division_screenshots(viewer, widget, shots, truth)
        viewer.close()
        print(f"{len(shots.saved)} screenshots in {out}", flush=True)
        return 0
    shots.shoot("01-model-loaded.png")

    # ------------------------------------------------------------- 2. clicks and a box on frame 0
    points, shapes = widget.points_layer, widget.shapes_layer
    y, x = centroid(truth[0] == 1)
    points.add([[0, y, x]])  # object 1: one positive click (the widget made object 1 and selected it)
    shots.wait_idle()
    widget.new_object()  # object 2: a positive click on cell 2, a negative one (T toggles) beside it
    y, x = centroid(truth[0] == 2)
    points.add([[0, y, x]])
    shots.wait_idle()
    widget.toggle_click_polarity()
    points.add([[0, y - 14, x + 14]])
    shots.wait_idle()
    widget.toggle_click_polarity()
    widget.new_object()  # object 3: a box around the cell that will divide
    ys, xs = np.nonzero(truth[0] == 3)
    y0, x0, y1, x1 = ys.min() - 3, xs.min() - 3, ys.max() + 3, xs.max() + 3
    shapes.add_rectangles([[[0, y0, x0], [0, y0, x1], [0, y1, x1], [0, y1, x0]]])  # four corners, as drawn
    shots.wait_idle()
    viewer.layers.selection.active = points
    masks = np.asarray(widget.labels_layer.data)[0]
    print("pixels per object on frame 0:", {i: int((masks == i).sum()) for i in (1, 2, 3)}, flush=True)
    shots.shoot("02-prompts.png")

    # ------------------------------------------------------------- 3. propagate forward over the movie
    labels = widget.labels_layer
    before_run = np.array(labels.data)
    n_frames = widget.controller.target.num_frames
    half_way = {"shot": False}

    def shoot_half_way() -> None:
        if not half_way["shot"] and widget.progress.maximum() > 1 and widget.progress.value() >= n_frames // 2:
            half_way["shot"] = True
            shots.shoot("03-propagating.png")

    widget.propagate("forward", start=0, first=0, last=n_frames - 1)
    shots.wait_idle(during=shoot_half_way)
    print("status:", widget.status.text(), flush=True)
    if not half_way["shot"]:
        raise RuntimeError("the propagation ended before the half-way screenshot")
    after_run = np.array(labels.data)
    labels.undo()  # the whole run is one undo step: one undo brings back the state before it
    undone = np.array_equal(np.asarray(labels.data), before_run)
    labels.redo()
    if not undone or not np.array_equal(np.asarray(labels.data), after_run):
        raise RuntimeError("the propagation run is not one undo step")

    # ------------------------------------------------------------- 4. paint a correction on a later frame
    frame = args.correction_frame
    viewer.dims.set_current_step(0, frame)
    widget.objects.select_id(1)  # also makes label 1 the Labels layer's selected label
    viewer.layers.selection.active = labels
    shots.pump(0.3)
    wrong = np.asarray(labels.data)[frame] == 1
    if wrong.any():  # eraser, "preserve labels" ticked: erases only the selected label
        labels.preserve_labels = True
        labels.mode = "erase"
        labels.brush_size = 12
        with labels.block_history():  # one undo step, as one drag of the mouse would be
            for yy, xx in zip(*np.nonzero(wrong), strict=True):
                if yy % 3 == 0 and xx % 3 == 0:
                    labels.paint((frame, yy, xx), 0, refresh=False)
            for yy, xx in zip(*np.nonzero(np.asarray(labels.data)[frame] == 1), strict=True):  # what the grid missed
                labels.paint((frame, yy, xx), 0, refresh=False)
        labels.refresh()
        labels.preserve_labels = False
    cell = truth[frame] == 1
    labels.mode = "paint"
    labels.brush_size = 6
    with labels.block_history():  # short strokes over the cell, as a user would paint it
        for yy, xx in zip(*np.nonzero(cell), strict=True):
            if yy % 3 == 0 and xx % 3 == 0:
                labels.paint((frame, yy, xx), 1, refresh=False)
    labels.refresh()
    painted = np.asarray(labels.data)[frame] == 1
    print(f"frame {frame}: painted object 1 = {int(painted.sum())} pixels (the cell has {int(cell.sum())})", flush=True)
    shots.shoot("04-painted-correction.png")

    # ------------------------------------------------------------- 5. propagate again from the corrected frame
    labels.mode = "pan_zoom"
    widget.propagate("forward", start=frame, first=0, last=n_frames - 1)
    shots.wait_idle()
    print("status:", widget.status.text(), flush=True)
    after = np.asarray(labels.data)[frame] == 1
    agree = (after & painted).sum() / max((after | painted).sum(), 1)
    print(f"frame {frame} after re-propagation: object 1 = {int(after.sum())} pixels, IoU with the painted mask "
          f"{agree:.3f}", flush=True)
    if "Painted corrections used as prompts: object 1 on frame" not in widget.status.text():
        raise RuntimeError(f"the status line does not name the correction: {widget.status.text()}")
    if agree < 0.9:
        raise RuntimeError(f"the painted correction did not survive re-propagation (IoU {agree:.3f})")
    viewer.dims.set_current_step(0, frame)
    viewer.layers.selection.active = labels
    shots.shoot("05-repropagated.png")

    # ------------------------------------------------------------- 6. exports and a Tracks layer
    with tempfile.TemporaryDirectory() as tmp:
        tiff = widget.export_tiff(Path(tmp) / "labels.ome.tif")
        tracks = widget.export_ctc(Path(tmp) / "01_RES")
        session = widget.save_session(Path(tmp) / "session.json")
        written = sorted(os.listdir(tmp))
        print(f"exports: {written}; {tiff.stat().st_size} bytes of TIFF, {len(tracks)} CTC tracks, "
              f"session {session.stat().st_size} bytes", flush=True)
    tracks_layer = widget.add_tracks_layer()
    if tracks_layer is None:
        raise RuntimeError(f"no Tracks layer: {widget.status.text()}")
    tracks_layer.tail_length = n_frames
    viewer.layers.selection.active = tracks_layer
    viewer.dims.set_current_step(0, n_frames - 1)
    shots.shoot("06-tracks.png")

    viewer.layers.remove(tracks_layer)  # step 8 adds one with the lineage graph
    division_screenshots(viewer, widget, shots, truth)

    viewer.close()
    print(f"{len(shots.saved)} screenshots in {out}", flush=True)
    return 0


def division_screenshots(viewer, widget, shots: Shooter, truth: np.ndarray) -> None:
    """Steps 7 and 8: a segmentation of the frames around the division seeded (as ``session.add_labels`` does),
    propagated with divisions="propose"; the proposal of cell 3 reviewed, then accepted, with a Tracks layer."""
    from napari_sam2.sample_data import division_frame

    split = division_frame(len(truth))
    first, last = split - 3, split + 2
    controller = widget.controller
    session = controller.ensure_session()
    session.reset()  # (after steps 1-6: a fresh start; their labels stay on the other frames)
    widget.objects.clear()
    widget.objects.add_ids(session.add_labels(truth, frames=range(first, last + 1)))
    # The seeded frames written as the widget writes a loaded session's prompted frames (one undo step).
    widget._write_all([controller.frame_write(session, t, None, controller.label_dtype)
                       for t in range(first, last + 1)])
    viewer.dims.set_current_step(0, first)
    widget.propagate("forward", start=first, first=first, last=last, divisions="propose")
    shots.wait_idle()
    print("status:", widget.status.text(), flush=True)
    keys = [(p.frame, p.parent) for p in widget.divisions.proposals]
    if (split, 3) not in keys:
        raise RuntimeError(f"no proposal of cell 3 on frame {split}: {keys}")
    tracks = widget.add_tracks_layer()
    if tracks is None:
        raise RuntimeError(f"no Tracks layer: {widget.status.text()}")
    tracks.tail_length = last - first + 1
    widget.divisions.select_row(keys.index((split, 3)))  # jump there (centred on it), preview the two parts
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom *= 2.5
    shots.pump(0.5)
    shots.shoot("07-division-review.png")

    before = np.array(widget.labels_layer.data)
    widget.accept_proposal()
    shots.wait_idle()
    print("status:", widget.status.text(), flush=True)
    after = np.asarray(widget.labels_layer.data)
    if session.lineage().get(8) != 3 or session.lineage().get(9) != 3 or (after[split:] == 3).any():
        raise RuntimeError(f"the accepted division is not in the lineage or the labels: {session.lineage()}")
    if tracks.graph.get(8) != [3]:
        raise RuntimeError(f"the Tracks layer does not show the lineage: {tracks.graph}")
    if np.array_equal(before, after) and (before[split:] == 3).any():
        raise RuntimeError("accepting the division wrote nothing")
    viewer.dims.set_current_step(0, split + 1)
    widget.scroll.ensureWidgetVisible(widget.undo_lineage_button, 0, 10)
    shots.shoot("08-division-accepted.png")


if __name__ == "__main__":
    sys.exit(main())
