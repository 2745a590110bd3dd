"""Shared set-up for the dock-widget tests: a viewer with a movie, the widget with a small model, and waiting."""

from __future__ import annotations

import numpy as np
import pytest
from session_support import cells_movie

from napari_sam2.plugin.widget import SAM2TrackingWidget

WAIT_MS = 60_000


def wait_idle(qtbot, widget: SAM2TrackingWidget) -> None:
    """Wait until the widget has no job running and no prompt left to send."""
    qtbot.waitUntil(lambda: widget.idle, timeout=WAIT_MS)


def open_widget(viewer, model, image: np.ndarray, rgb: bool | None = None, track_axis: int = 0, **layer_kwargs):
    """Add ``image`` to ``viewer``, dock the widget, give it ``model`` and a new output layer."""
    layer = viewer.add_image(image, rgb=rgb, **layer_kwargs)
    widget = SAM2TrackingWidget(viewer)
    widget.dwell.delay_ms = None  # no encoding ahead unless a test asks for it (it would keep the widget busy)
    viewer.window.add_dock_widget(widget)
    widget.use_model(model)
    widget.set_image_layer(layer, track_axis)
    return widget, layer


def click(widget: SAM2TrackingWidget, frame: int, yx, positive: bool = True, obj_id: int | None = None) -> None:
    """Add one click to the widget's Points layer, as the mouse would (row, col) = (y, x) on ``frame``."""
    from napari_sam2.plugin.prompt_layers import prompt_rows, set_prompt_defaults

    layer = widget.points_layer
    set_prompt_defaults(layer, obj_id=obj_id or widget.objects.current_id, positive=positive)
    layer.add(prompt_rows(widget.controller.target, frame, np.asarray([yx], dtype=float)))


def dock(viewer, model, layer, track_axis: int = 0) -> SAM2TrackingWidget:
    """Dock the widget on a viewer that already holds ``layer`` (and whose sliders are already set), then give it
    the model and the layer, as a user would: the target takes the other axes' indices from the viewer's sliders."""
    widget = SAM2TrackingWidget(viewer)
    widget.dwell.delay_ms = None  # no encoding ahead unless a test asks for it
    viewer.window.add_dock_widget(widget)
    widget.use_model(model)
    widget.set_image_layer(layer, track_axis)
    return widget


def labels_of(widget: SAM2TrackingWidget) -> np.ndarray:
    """A copy of the output Labels layer's data."""
    return np.array(widget.labels_layer.data)


def widget_fixture(frames: int):
    """A ``widget`` fixture: the dock widget on a (frames, 96, 80) cell movie, waited for at teardown."""
    @pytest.fixture
    def widget(make_napari_viewer, model, qtbot):
        viewer = make_napari_viewer()
        docked, _ = open_widget(viewer, model, cells_movie(frames))
        yield docked
        wait_idle(qtbot, docked)
    return widget
