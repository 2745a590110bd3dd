"""Changing the target while a job runs: switching the image, the tracked axis or the model, or loading a session,
while a click is computed and while a propagation runs. Nothing may raise, the old job's results must stop reaching
the layers, and the new session must hold no stale prompts. Real napari viewer; movies are (T, Y, X) or
(T, Z, Y, X); (row, col) = (y, x). Small random-weight model: checks compare with the engine's own results.
"""

import numpy as np
import pytest
from session_support import cells_movie, small_model
from widget_support import click, dock, open_widget, wait_idle

from napari_sam2.plugin.widget import SAM2TrackingWidget

T = 8
BLOB = (33, 27)
WHILE = ["click", "propagation"]


def start_job(widget, qtbot, kind: str) -> None:
    """Leave a click (on frame 2) or a propagation (from frame 0) running."""
    click(widget, 0, BLOB)
    wait_idle(qtbot, widget)
    if kind == "click":
        click(widget, 2, BLOB)
        qtbot.waitUntil(lambda: widget.runner.is_running("click"), timeout=10_000)
    else:
        assert widget.propagate(direction="forward", start=0) is not None
        assert widget.runner.is_running("propagation")


def no_error(widget) -> None:
    assert not widget.status.text().startswith("Error"), widget.status.text()


@pytest.mark.parametrize("kind", WHILE)
def test_switching_the_image_while_a_job_runs(make_napari_viewer, model, qtbot, kind):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(T), name="first")
    second = viewer.add_image(cells_movie(T + 2, (72, 56)), name="second")
    start_job(widget, qtbot, kind)
    old_output = widget.labels_layer

    widget.set_image_layer(second)
    snapshot = np.array(old_output.data)
    wait_idle(qtbot, widget)

    no_error(widget)
    np.testing.assert_array_equal(np.asarray(old_output.data), snapshot)  # the old job wrote nothing after the switch
    assert widget.controller.target.layer is second and widget.labels_layer is not old_output
    assert widget.controller.session is None or not widget.controller.session.obj_ids  # nothing stale
    click(widget, 3, (36, 30))
    wait_idle(qtbot, widget)
    session = widget.controller.session
    assert [list(session.prompts(i)) for i in session.obj_ids] == [[3]]
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data[3]), session.label_image(3))


@pytest.mark.parametrize("kind", WHILE)
def test_switching_the_tracked_axis_while_a_job_runs(make_napari_viewer, model, qtbot, kind):
    viewer = make_napari_viewer()
    data = np.stack([cells_movie(T, (64, 64))] * 3, axis=1)  # (T, Z, Y, X)
    layer = viewer.add_image(data, name="tzyx")
    viewer.dims.set_current_step(0, 0)
    viewer.dims.set_current_step(1, 0)
    widget = dock(viewer, model, layer, 0)
    wait_idle(qtbot, widget)
    start_job(widget, qtbot, kind)
    output = widget.labels_layer
    t_now = widget.viewer.dims.current_step[0]

    widget.set_image_layer(layer, 1)  # track Z at the current T instead
    snapshot = np.array(output.data)
    wait_idle(qtbot, widget)

    no_error(widget)
    target = widget.controller.target
    assert target.track_axis == 1 and target.fixed == {0: t_now}
    after = np.asarray(output.data)
    others = [t for t in range(T) if t != t_now]  # planes the new target does not track: the old job's frames
    np.testing.assert_array_equal(after[others], snapshot[others])
    session = widget.controller.session
    if session is not None:  # clicks re-read on the new axis: only those on its plane, on its frames
        for obj_id in session.obj_ids:
            for frame in session.prompted_frames(obj_id):
                np.testing.assert_array_equal(after[t_now, frame] == obj_id, session.label_image(frame) == obj_id)


@pytest.mark.parametrize("kind", WHILE)
def test_switching_the_model_while_a_job_runs(make_napari_viewer, model, qtbot, kind):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(T))
    start_job(widget, qtbot, kind)
    expected_frames = [0, 2] if kind == "click" else [0]
    other = small_model()

    widget.use_model(other)
    wait_idle(qtbot, widget)

    no_error(widget)
    session = widget.controller.session
    assert widget.controller.model is other and session.model is other
    assert session.obj_ids == [1] and session.prompted_frames(1) == expected_frames  # replayed, nothing else
    labels = np.asarray(widget.labels_layer.data)
    for frame in expected_frames:
        np.testing.assert_array_equal(labels[frame], session.label_image(frame))


@pytest.mark.parametrize("kind", WHILE)
def test_loading_a_session_while_a_job_runs(make_napari_viewer, model, qtbot, tmp_path, kind):
    viewer = make_napari_viewer()
    saved, _ = open_widget(viewer, model, cells_movie(T), name="saved")
    click(saved, 5, BLOB)
    wait_idle(qtbot, saved)
    path = saved.save_session(tmp_path / "frame5.json")
    saved.close()

    viewer2 = make_napari_viewer()
    widget, _ = open_widget(viewer2, model, cells_movie(T))
    start_job(widget, qtbot, kind)
    old_clicks = widget.points_layer

    widget.load_session(path)
    snapshot = np.array(widget.labels_layer.data)
    wait_idle(qtbot, widget)

    no_error(widget)
    session = widget.controller.session
    assert session.obj_ids == [1] and session.prompted_frames(1) == [5]  # only the file's prompts
    labels = np.asarray(widget.labels_layer.data)
    np.testing.assert_array_equal(labels[5], session.label_image(5))
    others = [t for t in range(T) if t != 5]
    np.testing.assert_array_equal(labels[others], snapshot[others])  # the old job wrote nothing after the load
    assert old_clicks in viewer2.layers and widget.points_layer is not old_clicks  # the old clicks stay as a record
    assert len(widget.points_layer.data) == 1


def test_a_model_loading_while_the_image_changes_is_kept(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    widget = SAM2TrackingWidget(viewer)
    widget.dwell.delay_ms = None
    assert widget.load_model(str(tiny_checkpoint), "cpu") is not None
    viewer.add_image(cells_movie(T), name="opened while loading")  # re-targets while the model loads
    wait_idle(qtbot, widget)
    no_error(widget)
    assert widget.controller.model is not None and widget.controller.target is not None
    assert "config sam2.1_hiera_t" in widget.model_label.text()


def test_a_click_dropped_by_a_model_switch_reaches_the_new_session(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(T))
    start_job(widget, qtbot, "propagation")
    widget.cancel()
    click(widget, 3, BLOB)  # queued behind the cancelled run ...
    qtbot.waitUntil(lambda: not widget._prompts_dirty, timeout=10_000)
    other = small_model()
    widget.use_model(other)  # ... and dropped by the switch before it ran
    wait_idle(qtbot, widget)
    no_error(widget)
    session = widget.controller.session
    assert session.model is other and 3 in session.prompted_frames(1)


def test_remove_object_and_painted_masks_wait_for_a_cancelled_run_to_finish(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(T))
    start_job(widget, qtbot, "propagation")
    widget.cancel()
    widget.remove_selected_object()
    assert widget.status.text().startswith("Busy (propagation); remove the object"), widget.status.text()
    widget.use_painted_mask()
    assert "send the painted mask once it has finished" in widget.status.text()
    wait_idle(qtbot, widget)
    assert widget.controller.session.obj_ids == [1]
    widget.remove_selected_object()
    assert widget.controller.session.obj_ids == [] and not np.asarray(widget.labels_layer.data).any()
