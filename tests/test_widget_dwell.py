"""Encoding ahead while the viewer rests on a frame: it gives the same masks as a plain click, and navigation or a
click stops it at once. Real napari viewer; movies are (T, Y, X); (row, col) = (y, x).
"""

import time

import numpy as np
import pytest
from session_support import cells_movie
from widget_support import click, open_widget, wait_idle

from napari_sam2 import TrackingSession

T = 6
BLOB = (33, 27)


@pytest.fixture
def widget(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(T))
    widget.viewer.dims.set_current_step(0, 0)
    click(widget, 0, BLOB)
    wait_idle(qtbot, widget)
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)
    widget.dwell.delay_ms = 50
    yield widget
    widget.dwell.delay_ms = None
    wait_idle(qtbot, widget)


def test_a_correction_after_dwelling_gives_the_same_mask_as_a_plain_click(widget, model, qtbot):
    session = widget.controller.session
    widget.viewer.dims.set_current_step(0, 3)  # rest on tracked frame 3
    qtbot.waitUntil(lambda: widget.dwell.last_frame == 3, timeout=30_000)
    assert 3 in session.features  # encoded ahead
    encodes = session.features.encodes
    click(widget, 3, (40, 33), positive=False)  # a correction click on the tracked frame
    wait_idle(qtbot, widget)
    assert session.features.encodes == encodes  # the click did not encode again

    plain = TrackingSession(model, cells_movie(T), contrast_limits=widget.controller.target.contrast_limits)
    plain.add_points(0, 1, [BLOB], [1])
    for _ in plain.propagate(0, "forward"):
        pass
    plain.add_points(3, 1, [(40, 33)], [0])
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data[3]), plain.label_image(3))


def slow_precompute(calls: list):
    """Stands in for session.precompute: works until told to stop, recording when it stopped."""
    def precompute(frame, obj_id=None, should_stop=None):
        calls.append(["started", frame, time.perf_counter()])
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline:
            if should_stop():
                calls[-1][0] = "stopped"
                calls[-1].append(time.perf_counter())
                return False
            time.sleep(0.002)
        return True
    return precompute


def slow_encoding_on(widget, qtbot, monkeypatch, frame: int) -> list:
    """Rest on ``frame`` with a precompute that works until stopped; its calls once it has started."""
    calls = []
    monkeypatch.setattr(widget.controller.session, "precompute", slow_precompute(calls))
    widget.viewer.dims.set_current_step(0, frame)
    qtbot.waitUntil(lambda: bool(calls), timeout=10_000)
    return calls


def test_navigation_stops_encoding_ahead_within_300_ms(widget, qtbot, monkeypatch):
    calls = slow_encoding_on(widget, qtbot, monkeypatch, 4)
    moved = time.perf_counter()
    widget.viewer.dims.set_current_step(0, 5)  # the user moves on
    qtbot.waitUntil(lambda: calls[0][0] == "stopped", timeout=5_000)
    assert calls[0][1] == 4 and calls[0][3] - moved < 0.3
    qtbot.waitUntil(lambda: len(calls) == 2, timeout=10_000)  # and it starts again on the frame the user rests on
    assert calls[1][1] == 5


def test_a_click_stops_encoding_ahead_and_is_computed(widget, qtbot, monkeypatch):
    calls = slow_encoding_on(widget, qtbot, monkeypatch, 2)
    clicked = time.perf_counter()
    click(widget, 2, (36, 29))
    qtbot.waitUntil(lambda: calls[0][0] == "stopped", timeout=5_000)
    assert calls[0][3] - clicked < 0.3
    widget.dwell.delay_ms = None
    wait_idle(qtbot, widget)
    session = widget.controller.session
    assert 2 in session.prompted_frames(1)
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data[2]), session.label_image(2))
