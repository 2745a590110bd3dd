"""The "SAM 2 tracking" dock widget in a real napari viewer: clicks, boxes, painted masks, propagation, cancel, undo,
corrections, sessions and exports. Movies are (T, Y, X); clicks are (row, col) = (y, x).

The model is a small random-weight SAM 2.1 tiny (image size 128), so masks are arbitrary shapes; every test compares
what the widget wrote with the engine's own results and with what must not change.
"""

import numpy as np
import tifffile
from session_support import cells_movie, small_model
from widget_support import click, labels_of, open_widget, wait_idle, widget_fixture

from napari_sam2.plugin.prompt_layers import NEGATIVE_COLOUR, POSITIVE_COLOUR, prompt_rows
from napari_sam2.plugin.widget import LAYER_KEYS_KEPT, SHORTCUTS, SAM2TrackingWidget

T = 6


widget = widget_fixture(T)


def object_mask(widget, frame, obj_id) -> np.ndarray:
    """The engine's current mask of ``obj_id`` on ``frame`` (highest logit wins between objects)."""
    return widget.controller.session.label_image(frame) == obj_id


def run(qtbot, widget, **kwargs):
    job = widget.propagate(**kwargs)
    assert job is not None, widget.status.text()
    wait_idle(qtbot, widget)
    return job


def test_widget_is_contributed_by_the_plugin_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    from npe2 import PluginManager

    (contribution,) = PluginManager.instance().get_manifest("napari-sam2").contributions.widgets
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam2", contribution.display_name)
    assert isinstance(widget, SAM2TrackingWidget)
    for key in SHORTCUTS:
        assert key in widget.toolTip()


def test_widget_creates_output_and_prompt_layers(widget):
    assert widget.labels_layer.data.shape == (T, 96, 80)
    assert widget.labels_layer.data.dtype == np.uint16
    assert widget.objects.ids == [1] and widget.objects.current_id == 1
    assert widget.points_layer is not None and widget.shapes_layer is not None
    assert "6 frames" in widget.target_label.text()


def test_click_writes_that_frame_for_the_selected_object_only(widget, qtbot):
    layer = widget.labels_layer
    layer.data[2, :5, :5] = 9  # another label that must survive
    layer.data[4, 40:50, 20:40] = 9
    before = labels_of(widget)
    click(widget, 2, (40, 30))
    wait_idle(qtbot, widget)

    after = labels_of(widget)
    mask = object_mask(widget, 2, 1)
    assert mask.sum() > 0
    assert np.array_equal(after[2] == 1, mask & (before[2] != 9))
    assert np.array_equal(after[2] == 9, before[2] == 9)
    assert np.array_equal(np.delete(after, 2, axis=0), np.delete(before, 2, axis=0))  # other frames untouched
    assert "frame 2" in widget.status.text()


def test_second_object_rewrites_the_frame_with_the_higher_logit_winning(widget, qtbot):
    click(widget, 1, (40, 30))
    wait_idle(qtbot, widget)
    first = labels_of(widget)[1] == 1
    second_id = widget.new_object()
    assert second_id == 2 and widget.labels_layer.selected_label == 2
    click(widget, 1, (80, 70))
    wait_idle(qtbot, widget)
    after = labels_of(widget)[1]
    assert set(np.unique(after)) <= {0, 1, 2}
    session_labels = widget.controller.session.label_image(1)  # where the objects overlap, the higher logit wins
    assert np.array_equal(after, session_labels)
    assert np.array_equal(after == 1, first & (session_labels != 2))
    assert widget.controller.session.obj_ids == [1, 2]


def test_click_keeps_unsent_painting_of_another_object(widget, qtbot):
    click(widget, 1, (40, 30))
    wait_idle(qtbot, widget)
    layer = widget.labels_layer
    widget.new_object()
    yy, xx = np.nonzero(np.ones((96, 80), bool))
    layer.data_setitem((np.full(yy.size, 1), yy, xx), 0)  # the user erases object 1 on frame 1 ...
    click(widget, 1, (80, 70))  # ... then clicks object 2 there
    wait_idle(qtbot, widget)
    after = labels_of(widget)[1]
    assert not (after == 1).any()  # the erasure is kept (it becomes a prompt before propagation)
    assert np.array_equal(after == 2, object_mask(widget, 1, 2))


def test_negative_clicks_are_red_and_reach_the_session(widget, qtbot):
    click(widget, 0, (40, 30))
    widget.toggle_click_polarity()
    assert widget.negative_check.isChecked()
    layer = widget.points_layer
    layer.add(prompt_rows(widget.controller.target, 0, np.array([[10.0, 10.0]])))
    wait_idle(qtbot, widget)
    assert list(layer.features["positive"]) == [True, False]
    assert np.allclose(layer.face_color[0][:3], [0, 1, 0]) and np.allclose(layer.face_color[1][:3], [1, 0, 0])
    assert (POSITIVE_COLOUR, NEGATIVE_COLOUR) == ("lime", "red")
    prompt = widget.controller.session.prompts(1)[0]
    assert prompt.labels.tolist() == [1, 0]
    assert np.array_equal(labels_of(widget)[0] == 1, object_mask(widget, 0, 1))


def test_box_prompt_from_the_shapes_layer(widget, qtbot):
    corners = prompt_rows(widget.controller.target, 3, np.array([[20, 15], [20, 50], [60, 50], [60, 15]], float))
    widget.shapes_layer.add_rectangles([corners])
    wait_idle(qtbot, widget)
    prompt = widget.controller.session.prompts(1)[3]
    assert prompt.kind == "box" and np.allclose(prompt.box, [20, 15, 60, 50])
    written = labels_of(widget)
    assert np.array_equal(written[3] == 1, object_mask(widget, 3, 1))
    assert written[[0, 1, 2, 4, 5]].max() == 0


def test_painted_mask_becomes_a_mask_prompt(widget, qtbot):
    layer = widget.labels_layer
    obj_id = widget.new_object()
    yy, xx = np.nonzero(np.ones((12, 10), bool))
    layer.data_setitem((np.full(yy.size, 1), yy + 30, xx + 20), obj_id)  # as the brush would
    widget.viewer.dims.set_current_step(0, 1)
    widget.use_painted_mask()
    wait_idle(qtbot, widget)
    prompt = widget.controller.session.prompts(obj_id)[1]
    assert prompt.kind == "mask"
    assert prompt.mask.sum() == 120 and prompt.mask[30:42, 20:30].all()
    assert np.array_equal(labels_of(widget)[1] == obj_id, prompt.mask)  # the layer keeps the user's exact pixels
    assert not widget.controller.writer.edited_ids(1, [obj_id])  # the model has it: no longer a pending edit


def test_painted_mask_needs_pixels(widget, qtbot):
    widget.use_painted_mask()
    assert "no pixels on frame" in widget.status.text()
    assert widget.controller.session is None or not widget.controller.session.obj_ids


def test_propagate_over_a_range_writes_those_frames_and_leaves_other_labels(widget, qtbot):
    layer = widget.labels_layer
    layer.data[:, 85:, 70:] = 9  # another label on every frame
    click(widget, 2, (40, 30))
    wait_idle(qtbot, widget)
    run(qtbot, widget, direction="both", start=2, first=1, last=3)
    written = labels_of(widget)
    for t in range(T):
        assert (written[t, 85:, 70:] == 9).all()
        if t in (1, 2, 3):
            assert np.array_equal(written[t] == 1, object_mask(widget, t, 1) & (written[t] != 9)), t
            assert (written[t] == 1).any()
        else:
            assert not (written[t] == 1).any(), t
    assert "3 of 3 frames" in widget.status.text()
    assert widget.progress.value() == widget.progress.maximum() == 4  # frame 2 is visited forward and backward


def test_propagate_without_prompts_says_what_to_do(widget):
    assert widget.propagate(direction="forward") is None
    assert "click on an object" in widget.status.text()


def test_undo_reverts_a_click_and_a_whole_propagation(widget, qtbot):
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    after_click = labels_of(widget)
    assert after_click[0].any()
    run(qtbot, widget, direction="forward", start=0)
    assert all(labels_of(widget)[t].any() for t in range(T))
    widget.labels_layer.undo()  # the whole run is one undo step
    assert np.array_equal(labels_of(widget), after_click)
    widget.labels_layer.undo()  # then the click's write
    assert not labels_of(widget).any()
    widget.labels_layer.redo()
    assert np.array_equal(labels_of(widget), after_click)


def test_cancel_mid_run_leaves_layer_and_session_consistent(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(24))
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    def cancel_once(_frame: int) -> None:  # cancel as soon as the first frame is written
        widget.frame_written.disconnect(cancel_once)
        widget.cancel()

    widget.frame_written.connect(cancel_once)
    assert widget.propagate(direction="forward", start=0) is not None
    wait_idle(qtbot, widget)
    assert "Cancelled" in widget.status.text()
    written = labels_of(widget)
    done = [t for t in range(24) if written[t].any()]
    assert 0 < len(done) < 24
    session = widget.controller.session
    for t in range(24):  # what the layer shows is exactly what the session holds, frame by frame
        assert np.array_equal(written[t] == 1, session.label_image(t) == 1), t
    assert not widget.controller.writer.in_undo_group
    assert not widget.cancel_button.isEnabled() and widget.propagate_button.isEnabled()
    run(qtbot, widget, direction="forward", start=0)  # and the next run completes
    assert all(labels_of(widget)[t].any() for t in range(24))


def test_painted_correction_becomes_a_prompt_before_repropagation(widget, qtbot):
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    run(qtbot, widget, direction="forward", start=0)
    layer = widget.labels_layer
    plane = labels_of(widget)[4]
    erase = np.nonzero(plane == 1)
    layer.data_setitem((np.full(erase[0].size, 4), *erase), 0)  # the user erases the object on frame 4 ...
    yy, xx = np.nonzero(np.ones((8, 8), bool))
    layer.data_setitem((np.full(yy.size, 4), yy + 5, xx + 5), 1)  # ... and paints it elsewhere
    run(qtbot, widget, direction="forward", start=0)
    prompt = widget.controller.session.prompts(1)[4]
    assert prompt.kind == "mask" and prompt.mask.sum() == 64 and prompt.mask[5:13, 5:13].all()
    assert "Painted corrections used as prompts: object 1 on frame 4" in widget.status.text()
    assert np.array_equal(labels_of(widget)[4] == 1, prompt.mask)  # the user's exact pixels stay
    run(qtbot, widget, direction="forward", start=0)  # a correction is used once, then it is the session's
    assert "Painted corrections" not in widget.status.text()


def test_remove_object_erases_its_pixels_and_prompts_undoably(widget, qtbot):
    click(widget, 1, (40, 30))
    wait_idle(qtbot, widget)
    second = widget.new_object()
    click(widget, 1, (80, 70))
    wait_idle(qtbot, widget)
    before = labels_of(widget)
    widget.objects.select_id(second)
    widget.remove_selected_object()
    after = labels_of(widget)
    assert not (after == second).any()
    assert np.array_equal(after == 1, before == 1)
    assert widget.objects.ids == [1]
    assert widget.controller.session.obj_ids == [1]
    assert list(widget.points_layer.features["obj_id"]) == [1]
    widget.labels_layer.undo()
    assert np.array_equal(labels_of(widget), before)


def test_shortcuts_are_bound_on_the_prompt_and_labels_layers(widget):
    from app_model.types import KeyBinding

    for layer in (widget.points_layer, widget.shapes_layer, widget.labels_layer):
        bound = {str(k) for k in layer.keymap}
        for key in SHORTCUTS:
            if key in LAYER_KEYS_KEPT and layer is not widget.points_layer:  # napari's own Escape stays there
                assert str(KeyBinding.from_str(key)) not in bound, (layer.name, key)
            else:
                assert str(KeyBinding.from_str(key)) in bound, (layer.name, key)
    toggle = widget.points_layer.keymap[KeyBinding.from_str("T")]
    toggle(widget.points_layer)
    assert widget.negative_check.isChecked()
    assert not bool(widget.points_layer.feature_defaults["positive"].iloc[0])
    new = widget.labels_layer.keymap[KeyBinding.from_str("Shift-N")]
    new(widget.labels_layer)
    assert widget.objects.ids == [1, 2] and widget.objects.current_id == 2
    assert int(widget.points_layer.feature_defaults["obj_id"].iloc[0]) == 2


def test_save_and_load_session_restores_prompts_and_masks(widget, qtbot, tmp_path, make_napari_viewer, model):
    widget.controller.target.layer.contrast_limits = (250.0, 2000.0)
    click(widget, 2, (40, 30))
    widget.new_object()
    corners = prompt_rows(widget.controller.target, 2, np.array([[60, 50], [60, 75], [90, 75], [90, 50]], float))
    widget.shapes_layer.add_rectangles([corners])
    wait_idle(qtbot, widget)
    path = widget.save_session(tmp_path / "cells.json")
    written = labels_of(widget)[2]

    viewer = make_napari_viewer()
    other, _ = open_widget(viewer, model, cells_movie(T))
    other.load_session(path)
    wait_idle(qtbot, other)
    assert other.controller.session.obj_ids == [1, 2]
    mapping = other.controller.session.source.mapping
    assert (mapping.low, mapping.high) == (250.0, 2000.0)  # the saved intensities, not the new layer's
    assert "250..2000 as saved" in other.status.text()
    assert other.objects.ids == [1, 2]
    assert np.array_equal(labels_of(other)[2], written)
    assert len(other.points_layer.data) == 1 and len(other.shapes_layer.data) == 1
    assert list(other.shapes_layer.features["obj_id"]) == [2]
    other.points_layer.add(prompt_rows(other.controller.target, 2, np.array([[42.0, 31.0]])))  # keeps working
    wait_idle(qtbot, other)
    assert len(other.controller.session.prompts(1)[2].points) == 2


def test_exports_tiff_ctc_and_tracks_layer(widget, qtbot, tmp_path):
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    run(qtbot, widget, direction="forward", start=0)
    written = labels_of(widget)
    path = widget.export_tiff(tmp_path / "labels.ome.tif")
    assert np.array_equal(tifffile.imread(path), written)
    tracks = widget.export_ctc(tmp_path / "ctc")
    assert len(tracks) >= 1 and (tmp_path / "ctc" / "res_track.txt").exists()
    layer = widget.add_tracks_layer()
    assert layer.data.shape[1] == 4 and set(layer.data[:, 1].astype(int)) == set(range(T))


def test_load_model_from_a_checkpoint_file_in_a_worker(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    widget = SAM2TrackingWidget(viewer)
    job = widget.load_model(str(tiny_checkpoint), "cpu")
    assert job is not None and widget.busy
    wait_idle(qtbot, widget)
    assert widget.controller.model is not None
    assert "config sam2.1_hiera_t" in widget.model_label.text() and "on cpu" in widget.model_label.text()


def test_a_broken_checkpoint_is_reported_not_raised(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = SAM2TrackingWidget(viewer)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    widget.load_model(str(broken), "cpu")
    wait_idle(qtbot, widget)
    assert widget.controller.model is None
    assert widget.status.text().startswith("Error:") and "broken.pt" in widget.status.text()


def test_changing_the_model_keeps_every_prompt(widget, qtbot):
    click(widget, 2, (40, 30))
    click(widget, 2, (45, 35))
    wait_idle(qtbot, widget)
    before = widget.controller.session.prompt_history(1)
    widget.use_model(small_model())
    wait_idle(qtbot, widget)
    session = widget.controller.session
    history = session.prompt_history(1)
    assert list(history) == list(before) == [2]
    assert [p.points.tolist() for p in history[2]] == [p.points.tolist() for p in before[2]]
    assert (session.label_image(2) == 1).any()


def test_contrast_limits_are_read_at_the_first_prompt_and_on_restart(widget, qtbot):
    image = widget.controller.target.layer
    image.contrast_limits = (250.0, 2000.0)
    click(widget, 1, (40, 30))
    wait_idle(qtbot, widget)
    mapping = widget.controller.session.source.mapping
    assert (mapping.low, mapping.high) == (250.0, 2000.0)
    image.contrast_limits = (300.0, 1500.0)
    assert widget.controller.session.source.mapping.high == 2000.0  # a running session keeps its intensities
    widget.restart_session()
    wait_idle(qtbot, widget)
    session = widget.controller.session
    assert (session.source.mapping.low, session.source.mapping.high) == (300.0, 1500.0)
    assert list(session.prompts(1)) == [1]
    assert np.array_equal(labels_of(widget)[1] == 1, object_mask(widget, 1, 1))
    assert "300..1500" in widget.status.text()
