"""The dock widget on every kind of Image layer it may be given, and with layers switched or removed mid-session.

Each kind of layer either works (a click writes the engine's mask into the right plane of the output Labels layer,
propagation writes every frame of that plane and nothing else) or is refused with a message that says why. Axis order
is napari's: leading axes ((T,), (T, Z), (T, C)), then (row, col) = (y, x), then colour for RGB layers.

The model is a small random-weight SAM 2.1 tiny (image size 128): masks are arbitrary shapes, so every check compares
what the widget wrote with the engine's own result (``session.label_image``) and with what must not change.
"""

import numpy as np
import pytest
from napari.layers import Labels
from session_support import cells_movie
from widget_support import click, dock, labels_of, open_widget, wait_idle

from napari_sam2.plugin.prompt_layers import prompt_rows, set_prompt_defaults
from napari_sam2.plugin.widget import SAM2TrackingWidget

T = 4  # frames per movie: enough to propagate over, few enough to stay fast on 2 CPU cores
SHAPE = (64, 64)  # (Y, X) of every movie; the blob of cells_movie is near (30 + 3 t, 25 + 2 t)
BLOB = (33, 27)  # (row, col) on the blob in every frame used here


# ---------------------------------------------------------------------------------------------------- helpers


def movie(dtype=np.uint16) -> np.ndarray:
    return cells_movie(T, SHAPE, dtype=dtype)


def engine_labels(widget, frame: int) -> np.ndarray:
    return widget.controller.session.label_image(frame)


def click_and_wait(qtbot, widget, frame: int, yx=BLOB, **kwargs) -> None:
    click(widget, frame, yx, **kwargs)
    wait_idle(qtbot, widget)
    assert not widget.status.text().startswith("Error"), widget.status.text()


def run(qtbot, widget, **kwargs):
    job = widget.propagate(**kwargs)
    assert job is not None, widget.status.text()
    wait_idle(qtbot, widget)
    assert not widget.status.text().startswith("Error"), widget.status.text()
    return job


def assert_frame_is_engine_result(widget, labels: np.ndarray, frame: int, plane: tuple) -> None:
    """``labels[plane]`` (the (Y, X) plane of ``frame``) holds exactly the engine's labels of that frame, not empty."""
    expected = engine_labels(widget, frame)
    assert expected.any(), f"the engine found nothing on frame {frame}: the check would be empty"
    np.testing.assert_array_equal(labels[plane], expected)


# ---------------------------------------------------------------------------------------------------- 2-D images


def test_2d_image_picked_in_the_combo_is_refused_with_a_clear_message(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, movie_layer = open_widget(viewer, model, movie())
    click_and_wait(qtbot, widget, 1)
    before = labels_of(widget)
    old_output = widget.labels_layer
    flat = viewer.add_image(movie()[0], name="flat")
    assert widget.image_layer is movie_layer  # adding a layer does not re-target

    widget.image_combo.setCurrentIndex(widget.image_combo.findData(flat))  # the user picks the 2-D image

    text = widget.status.text()
    assert "2-D" in text and "time or Z axis" in text, text
    assert widget.controller.target is None and widget.labels_layer is None
    assert widget.points_layer is None  # no clicks layer to click into
    labels_layers = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert labels_layers == [old_output]  # no output layer made for the 2-D image
    np.testing.assert_array_equal(np.asarray(old_output.data), before)
    assert widget.propagate() is None  # refused, not crashed
    assert widget.status.text().startswith("Error")
    np.testing.assert_array_equal(np.asarray(old_output.data), before)

    # Back to the movie: work goes on (in a new output layer: the 2-D detour left no output to keep), and the old
    # output keeps its content.
    widget.set_image_layer(movie_layer)
    assert widget.controller.target is not None and widget.labels_layer is not None
    click_and_wait(qtbot, widget, 3)
    after = labels_of(widget)
    assert_frame_is_engine_result(widget, after, 3, (3,))
    if widget.labels_layer is old_output:
        np.testing.assert_array_equal(after[1], before[1])
    else:
        np.testing.assert_array_equal(np.asarray(old_output.data), before)


def test_2d_image_as_the_only_image_is_refused_after_the_model_loads(make_napari_viewer, model):
    viewer = make_napari_viewer()
    viewer.add_image(movie()[0], name="flat")
    widget = SAM2TrackingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.use_model(model)  # the model finishes loading after the image was refused

    text = widget.status.text()
    assert "2-D" in text and "time or Z axis" in text, text
    assert widget.controller.target is None and widget.labels_layer is None and widget.points_layer is None
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert widget.propagate() is None


def test_set_image_layer_on_a_2d_image_says_why(make_napari_viewer, model):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, movie())
    flat = viewer.add_image(movie()[0], name="flat")
    with pytest.raises(ValueError, match="2-D"):
        widget.set_image_layer(flat)


# ---------------------------------------------------------------------------------------------------- RGB, dtypes


def test_rgb_time_lapse_click_writes_that_frame_of_a_TYX_output(make_napari_viewer, model, qtbot):
    grey = (movie().astype(np.float64) * (255.0 / 3400.0)).clip(0, 255).astype(np.uint8)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)  # (T, Y, X, 3), colours differ per channel
    viewer = make_napari_viewer()
    widget, layer = open_widget(viewer, model, rgb, rgb=True)
    assert layer.rgb and widget.controller.target.rgb
    assert widget.labels_layer.data.shape == (T, *SHAPE)  # no colour axis in the output

    click_and_wait(qtbot, widget, 2)

    labels = labels_of(widget)
    assert labels.shape == (T, *SHAPE)
    assert_frame_is_engine_result(widget, labels, 2, (2,))
    assert not np.delete(labels, 2, axis=0).any()
    source = widget.controller.session.source
    np.testing.assert_array_equal(source.read(2), rgb[2])  # the model sees the colour frame, all three channels


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_16_bit_and_float_movies_use_the_layer_contrast_limits(make_napari_viewer, model, qtbot, dtype):
    data = movie(np.float64)
    data = (data / 1000.0).astype(dtype) if dtype == np.float32 else data.astype(dtype)
    viewer = make_napari_viewer()
    widget, layer = open_widget(viewer, model, data)
    low, high = (float(v) for v in layer.contrast_limits)
    assert widget.controller.target.contrast_limits == (low, high)

    click_and_wait(qtbot, widget, 1)

    mapping = widget.controller.session.source.mapping
    assert (mapping.low, mapping.high) == (low, high)  # what the model is given is what the user sees
    labels = labels_of(widget)
    assert_frame_is_engine_result(widget, labels, 1, (1,))
    assert not np.delete(labels, 1, axis=0).any()


def test_contrast_limits_set_before_the_first_click_are_what_the_model_sees(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, layer = open_widget(viewer, model, movie())
    layer.contrast_limits = (250.0, 1500.0)  # the user adjusts the display before clicking

    click_and_wait(qtbot, widget, 1)

    mapping = widget.controller.session.source.mapping
    assert (mapping.low, mapping.high) == (250.0, 1500.0)


def test_propagating_both_ways_from_frame_1_writes_frame_0(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, movie())
    click_and_wait(qtbot, widget, 1)

    run(qtbot, widget, direction="both", start=1)

    labels = labels_of(widget)
    for t in range(T):
        assert_frame_is_engine_result(widget, labels, t, (t,))
    assert f"{T} of {T} frames" in widget.status.text(), widget.status.text()


# ---------------------------------------------------------------------------------------------------- 4-D movies


def zt_movie() -> np.ndarray:
    """(T, Z, Y, X) uint16: the cell movie with a different brightness on each of 4 Z planes."""
    base = movie(np.float64)
    return np.stack([base * (0.4 + 0.2 * z) for z in range(4)], axis=1).astype(np.uint16)


def dock_4d(make_napari_viewer, model, slider_axis, position, track_axis):
    """A (T, Z, Y, X) movie with the slider of ``slider_axis`` at ``position``, tracked along ``track_axis``."""
    data = zt_movie()
    viewer = make_napari_viewer()
    layer = viewer.add_image(data)
    viewer.dims.set_current_step(slider_axis, position)
    widget = dock(viewer, model, layer, track_axis=track_axis)
    return data, viewer, widget, widget.controller.target


def test_4d_tracked_along_t_writes_only_the_current_z_plane(make_napari_viewer, model, qtbot):
    data, _, widget, target = dock_4d(make_napari_viewer, model, 1, 2, track_axis=0)  # the Z slider at z = 2
    assert target.track_axis == 0 and target.fixed == {1: 2}
    assert widget.labels_layer.data.shape == data.shape
    np.testing.assert_array_equal(widget.controller.ensure_session().source.read(1), data[1, 2])

    click_and_wait(qtbot, widget, 2)
    labels = labels_of(widget)
    assert_frame_is_engine_result(widget, labels, 2, (2, 2))
    labels[2, 2] = 0
    assert not labels.any()  # nothing on other frames or other Z planes

    run(qtbot, widget, direction="both", start=2)
    labels = labels_of(widget)
    for t in range(T):
        assert_frame_is_engine_result(widget, labels, t, (t, 2))
    labels[:, 2] = 0
    assert not labels.any()  # no other Z plane was touched


def test_4d_tracked_along_z_writes_only_the_current_t(make_napari_viewer, model, qtbot):
    data, viewer, widget, target = dock_4d(make_napari_viewer, model, 0, 3, track_axis=1)  # the T slider at t = 3
    assert target.track_axis == 1 and target.fixed == {0: 3} and target.num_frames == 4
    assert widget.current_frame() == viewer.dims.current_step[1]

    click_and_wait(qtbot, widget, 2)  # z = 2
    labels = labels_of(widget)
    assert_frame_is_engine_result(widget, labels, 2, (3, 2))
    labels[3, 2] = 0
    assert not labels.any()

    run(qtbot, widget, direction="both", start=2)
    labels = labels_of(widget)
    for z in range(4):
        assert_frame_is_engine_result(widget, labels, z, (3, z))
    np.testing.assert_array_equal(widget.controller.session.source.read(2), data[3, 2])
    labels[3] = 0
    assert not labels.any()  # no other time point was touched


# ---------------------------------------------------------------------------------------------------- channels


def two_channel_movie() -> np.ndarray:
    """(T, C, Y, X) uint16: channel 1 is the cell movie, channel 0 a mirrored, dimmer copy (a different image)."""
    cells = movie()
    return np.stack([cells[:, ::-1, ::-1] // 2, cells], axis=1)


def test_multichannel_stack_tracks_the_current_channel(make_napari_viewer, model, qtbot):
    data = two_channel_movie()
    viewer = make_napari_viewer()
    layer = viewer.add_image(data)
    viewer.dims.set_current_step(1, 1)  # channel 1
    widget = dock(viewer, model, layer, track_axis=0)
    assert widget.controller.target.fixed == {1: 1}

    click_and_wait(qtbot, widget, 2)

    np.testing.assert_array_equal(widget.controller.session.source.read(2), data[2, 1])  # channel 1 only
    labels = labels_of(widget)
    assert labels.shape == data.shape
    assert_frame_is_engine_result(widget, labels, 2, (2, 1))
    labels[2, 1] = 0
    assert not labels.any()


def test_one_layer_of_a_channel_split_image_can_be_picked(make_napari_viewer, model, qtbot):
    data = two_channel_movie()
    viewer = make_napari_viewer()
    layers = viewer.add_image(data, channel_axis=1, name=["mirror", "cells"])
    widget = dock(viewer, model, layers[1])
    assert widget.image_layer is layers[1] and widget.controller.target.layer is layers[1]
    assert widget.controller.target.contrast_limits == tuple(float(v) for v in layers[1].contrast_limits)
    assert widget.labels_layer.data.shape == (T, *SHAPE)

    click_and_wait(qtbot, widget, 2)

    np.testing.assert_array_equal(widget.controller.session.source.read(2), data[2, 1])
    labels = labels_of(widget)
    assert_frame_is_engine_result(widget, labels, 2, (2,))
    assert not np.delete(labels, 2, axis=0).any()


# ---------------------------------------------------------------------------------------------------- switching


def session_on_first_image(make_napari_viewer, model, qtbot):
    """A viewer with image "first", the widget on it, a click on frame 1: (viewer, widget, output, its content)."""
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, movie(), name="first")
    click_and_wait(qtbot, widget, 1)
    return viewer, widget, widget.labels_layer, labels_of(widget)


def test_switching_to_another_image_mid_session_keeps_the_old_output(make_napari_viewer, model, qtbot):
    viewer, widget, old_output, before = session_on_first_image(make_napari_viewer, model, qtbot)
    assert before[1].any()
    other = cells_movie(T + 1, (72, 56))  # another movie, another shape: the old output does not fit it
    second = viewer.add_image(other, name="second")

    widget.set_image_layer(second)

    assert widget.controller.target.layer is second
    assert widget.labels_layer is not old_output and widget.labels_layer.data.shape == other.shape
    assert old_output in viewer.layers
    np.testing.assert_array_equal(np.asarray(old_output.data), before)
    click_and_wait(qtbot, widget, 3, (36, 30))
    labels = labels_of(widget)
    assert_frame_is_engine_result(widget, labels, 3, (3,))
    np.testing.assert_array_equal(widget.controller.session.source.read(3), other[3])
    assert not np.delete(labels, 3, axis=0).any()  # only the frame clicked on the new movie
    np.testing.assert_array_equal(np.asarray(old_output.data), before)


def test_switching_to_an_image_of_the_same_shape_keeps_what_was_written(make_napari_viewer, model, qtbot):
    viewer, widget, output, before = session_on_first_image(make_napari_viewer, model, qtbot)
    other = movie()[:, ::-1, :].copy()  # same shape, different content
    second = viewer.add_image(other, name="second")

    widget.set_image_layer(second)
    assert widget.controller.target.layer is second
    assert widget.labels_layer is output  # the old output fits the new image: it stays the output
    np.testing.assert_array_equal(labels_of(widget), before)

    obj = widget.new_object()
    click_and_wait(qtbot, widget, 3, (64 - BLOB[0], BLOB[1]), obj_id=obj)
    labels = labels_of(widget)
    np.testing.assert_array_equal(labels[1], before[1])  # the first movie's result is kept
    expected = engine_labels(widget, 3)
    assert (expected == obj).any()
    np.testing.assert_array_equal(labels[3], np.where(expected == obj, obj, before[3]))
    np.testing.assert_array_equal(np.delete(labels, [1, 3], axis=0), np.delete(before, [1, 3], axis=0))


@pytest.mark.parametrize("switched", [False, True], ids=["from-the-start", "after-switching"])
def test_clicks_on_an_image_with_another_pixel_size_land_where_clicked(make_napari_viewer, model, qtbot, switched):
    viewer = make_napari_viewer()
    if switched:  # a session on an image of pixel size 1 first, then the user picks an image of pixel size 0.5
        widget, _ = open_widget(viewer, model, movie(), name="first")
        click_and_wait(qtbot, widget, 1)
        second = viewer.add_image(movie(), name="second", scale=(1.0, 0.5, 0.5))
        widget.set_image_layer(second)
    else:
        widget, second = open_widget(viewer, model, movie(), name="second", scale=(1.0, 0.5, 0.5))
    points = widget.points_layer
    assert points is not None and widget.controller.target.layer is second
    world = np.array([2.0, 0.5 * BLOB[0], 0.5 * BLOB[1]])  # where the mouse clicks: on the blob of frame 2
    points.add(points.world_to_data(world))  # what napari's add mode does with a click
    wait_idle(qtbot, widget)

    session = widget.controller.session
    obj = widget.objects.current_id
    assert session is not None and 2 in session.prompted_frames(obj)
    np.testing.assert_allclose(session.prompts(obj)[2].points, [BLOB])  # pixel (row, col) of the image clicked
    assert_frame_is_engine_result(widget, labels_of(widget), 2, (2,))


# ---------------------------------------------------------------------------------------------------- removing


def assert_image_removal_reported(widget):
    assert widget.controller.target is None
    text = widget.status.text()
    assert "image" in text.lower() and "removed" in text.lower(), text


def test_removing_the_image_layer_mid_session(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, layer = open_widget(viewer, model, movie())
    click_and_wait(qtbot, widget, 1)
    output = widget.labels_layer
    before = labels_of(widget)

    viewer.layers.remove(layer)

    assert_image_removal_reported(widget)
    assert widget.image_layer is None
    np.testing.assert_array_equal(np.asarray(output.data), before)
    assert widget.propagate() is None  # refused with a message, no crash
    assert widget.status.text().startswith("Error")

    # A new image: work goes on.
    new = viewer.add_image(movie(), name="again")
    widget.set_image_layer(new)
    assert widget.controller.target.layer is new and widget.labels_layer is not None
    click_and_wait(qtbot, widget, 2)
    assert_frame_is_engine_result(widget, labels_of(widget), 2, (2,))


def test_removing_the_image_layer_while_propagating(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, layer = open_widget(viewer, model, movie())
    click_and_wait(qtbot, widget, 0)
    output = widget.labels_layer

    assert widget.propagate(direction="forward", start=0) is not None
    viewer.layers.remove(layer)
    wait_idle(qtbot, widget)

    assert_image_removal_reported(widget)
    assert widget.labels_layer is None
    assert output in viewer.layers and np.asarray(output.data)[0].any()  # what was written stays
    assert not output._block_history  # no undo group left open on the old output


def test_removing_the_output_layer_then_creating_a_new_one(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, movie())
    click_and_wait(qtbot, widget, 1)
    viewer.layers.remove(widget.labels_layer)

    assert widget.labels_layer is None
    assert "Labels layer was removed" in widget.status.text()
    assert widget.propagate() is None and "Labels layer" in widget.status.text()

    new = widget.set_labels_layer(None)  # "(new Labels layer)"
    assert new is not None and widget.labels_layer is new and new in viewer.layers
    click_and_wait(qtbot, widget, 3)
    labels = labels_of(widget)
    assert_frame_is_engine_result(widget, labels, 3, (3,))
    run(qtbot, widget, direction="forward", start=2)
    labels = labels_of(widget)
    for t in (2, 3):
        assert_frame_is_engine_result(widget, labels, t, (t,))


def test_removing_the_output_layer_while_propagating_then_picking_another(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, movie())
    spare = viewer.add_labels(np.zeros((T, *SHAPE), dtype=np.uint16), name="spare")
    click_and_wait(qtbot, widget, 0)

    assert widget.propagate(direction="forward", start=0) is not None
    viewer.layers.remove(widget.labels_layer)
    wait_idle(qtbot, widget)

    assert widget.labels_layer is None
    text = widget.status.text()  # the user removed it: say so, and report no error for frames that came after
    assert "Labels layer was removed" in text and not text.startswith("Error"), text
    assert not spare.data.any()  # nothing was written into a layer that is not the output

    index = widget.labels_combo.findData(spare)
    assert index > 0
    widget.labels_combo.setCurrentIndex(index)  # the user picks the spare layer
    assert widget.labels_layer is spare
    run(qtbot, widget, direction="forward", start=0)
    labels = labels_of(widget)
    for t in range(T):
        assert_frame_is_engine_result(widget, labels, t, (t,))


def test_removing_the_clicks_layer_keeps_the_prompts(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, movie())
    click_and_wait(qtbot, widget, 1)
    before = labels_of(widget)

    viewer.layers.remove(widget.points_layer)

    assert widget.points_layer is None
    assert "prompt layer was removed" in widget.status.text()
    session = widget.controller.session
    assert session.prompted_frames(1) == [1]
    # A box for a second object on another frame: the removed clicks must not count as 'all clicks deleted'.
    obj = widget.new_object()
    shapes = widget.shapes_layer
    set_prompt_defaults(shapes, obj_id=obj)
    corners = np.array([[30, 25], [30, 45], [50, 45], [50, 25]])
    shapes.add_rectangles([prompt_rows(widget.controller.target, 3, corners)])
    wait_idle(qtbot, widget)

    assert widget.controller.session.prompted_frames(1) == [1]
    labels = labels_of(widget)
    np.testing.assert_array_equal(labels[1], before[1])
    assert (labels[3] == obj).any()
    run(qtbot, widget, direction="forward", start=1)
    labels = labels_of(widget)
    for t in range(1, T):
        assert_frame_is_engine_result(widget, labels, t, (t,))


def test_removing_the_clicks_layer_while_propagating(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, movie())
    click_and_wait(qtbot, widget, 0)

    assert widget.propagate(direction="forward", start=0) is not None
    viewer.layers.remove(widget.points_layer)
    wait_idle(qtbot, widget)

    assert widget.points_layer is None
    labels = labels_of(widget)
    for t in range(T):
        assert_frame_is_engine_result(widget, labels, t, (t,))
    assert f"{T} of {T} frames" in widget.status.text(), widget.status.text()


def test_restart_moves_to_the_plane_the_viewer_shows(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    movie = np.stack([cells_movie(4, shape=SHAPE)] * 3, axis=1)  # (T, Z, Y, X)
    layer = viewer.add_image(movie, name="tzyx")
    viewer.dims.set_current_step(1, 0)
    widget = SAM2TrackingWidget(viewer)
    widget.use_model(model)
    widget.set_image_layer(layer, 0)
    assert widget.controller.target.fixed == {1: 0}
    click(widget, 1, (30, 30))
    wait_idle(qtbot, widget)
    viewer.dims.set_current_step(1, 2)
    widget.restart_session()
    wait_idle(qtbot, widget)
    assert widget.controller.target.fixed == {1: 2}
    assert "axis 1 = 2" in widget.target_label.text()
    written = np.asarray(widget.labels_layer.data)
    assert written[1, 0].any() and not written[:, 2].any()  # the old plane's result stays, nothing on the new yet
    click(widget, 1, (30, 30))
    wait_idle(qtbot, widget)
    assert np.asarray(widget.labels_layer.data)[1, 2].any()
