"""What a new user sees: layer controls that show the mode the layer is in, one-line messages for mistakes (a
traceback only for real bugs), a short offline error with the instructions in the tooltip, no "downloading" for a
local file, an honest progress bar, Tracks-layer feedback. Real napari viewer; (row, col) = (y, x).
"""

import logging

import numpy as np
from session_support import cells_movie
from widget_support import click, wait_idle, widget_fixture

from napari_sam2.plugin.job_runner import Job
from napari_sam2.plugin.widget import SAM2TrackingWidget
from napari_sam2.weights import WeightsError

T = 4


widget = widget_fixture(T)


def widget_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("napari_sam2")]


def test_the_clicks_layer_controls_show_add_mode(widget):
    controls = widget.viewer.window._qt_viewer.controls.widgets[widget.points_layer]
    assert widget.points_layer.mode == "add"
    assert controls.addition_button.isChecked() and not controls.panzoom_button.isChecked()
    assert widget.viewer.layers.selection.active is widget.points_layer


def test_a_users_mistake_is_one_log_line_without_traceback(widget, caplog):
    caplog.set_level(logging.WARNING)
    widget.use_painted_mask()  # nothing painted yet
    records = widget_records(caplog)
    frame = widget.current_frame()
    assert len(records) == 1 and records[0].exc_info is None
    assert f"no pixels on frame {frame}" in records[0].getMessage() and "\n" not in records[0].getMessage()
    assert widget.status.text().startswith(f"Error: object 1 has no pixels on frame {frame}")


def test_a_2d_image_picked_in_the_combo_is_one_line(make_napari_viewer, model, caplog):
    viewer = make_napari_viewer()
    viewer.add_image(cells_movie(T), name="movie")
    widget = SAM2TrackingWidget(viewer)
    widget.use_model(model)
    caplog.set_level(logging.WARNING)
    viewer.add_image(np.zeros((40, 40)), name="flat")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("flat"))
    records = widget_records(caplog)
    assert records and all(r.exc_info is None for r in records)
    assert "single 2-D image" in widget.status.text()


def test_a_real_bug_keeps_its_traceback_in_the_log(widget, qtbot, caplog):
    caplog.set_level(logging.WARNING)

    def broken(_context):
        return 1 / 0

    widget._submit(Job("test job", broken, on_end=widget._end_busy_job), busy=True)
    wait_idle(qtbot, widget)
    records = widget_records(caplog)
    assert len(records) == 1 and records[0].exc_info is not None and records[0].levelno == logging.ERROR
    assert widget.status.text() == "Error: division by zero"


def test_offline_the_status_is_one_short_line_and_the_tooltip_has_the_instructions(make_napari_viewer, qtbot,
                                                                                   monkeypatch):
    instructions = ("Download it by hand from https://example.org/sam2.1_hiera_tiny.pt (SHA-256 abc...), "
                    "then choose 'custom checkpoint…' and pick the file, or put it in the cache folder.")

    def offline(*_args, **_kwargs):
        raise WeightsError("could not download sam2.1_hiera_tiny: no internet connection (ConnectionError)",
                           instructions)

    monkeypatch.setattr("napari_sam2.plugin.widget.needs_download", lambda _name: True)
    monkeypatch.setattr("napari_sam2.plugin.widget.load_model", offline)
    widget = SAM2TrackingWidget(make_napari_viewer())
    widget.load_model("sam2.1_hiera_tiny", "cpu")
    qtbot.waitUntil(lambda: "first time" in widget.status.text() or widget.idle, timeout=10_000)
    wait_idle(qtbot, widget)
    text = widget.status.text()
    assert text == "Error: could not download sam2.1_hiera_tiny: no internet connection (ConnectionError)"
    assert instructions in widget.status.toolTip()
    assert widget.progress.value() == widget.progress.minimum() and widget.progress.text() == ""


def test_a_local_checkpoint_is_not_downloaded_and_the_bar_does_not_say_100(make_napari_viewer, qtbot,
                                                                            tiny_checkpoint):
    widget = SAM2TrackingWidget(make_napari_viewer())
    texts = []
    widget.status.setText = lambda text, _set=widget.status.setText: (texts.append(text), _set(text))[1]
    widget.load_model(str(tiny_checkpoint), "cpu")
    wait_idle(qtbot, widget)
    assert widget.controller.model is not None
    assert not any("download" in text.lower() for text in texts), texts
    assert widget.progress.value() == widget.progress.minimum() and widget.progress.text() == ""


def test_a_failed_model_load_leaves_an_empty_bar(make_napari_viewer, qtbot, tmp_path):
    widget = SAM2TrackingWidget(make_napari_viewer())
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    widget.load_model(str(broken), "cpu")
    wait_idle(qtbot, widget)
    assert widget.status.text().startswith("Error:")
    assert widget.progress.value() == widget.progress.minimum() and widget.progress.text() == ""


def test_the_tracks_layer_is_reported_and_clicks_keep_reaching_sam2(widget, qtbot):
    click(widget, 0, (33, 27))
    wait_idle(qtbot, widget)
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)
    layer = widget.add_tracks_layer()
    assert layer is not None and layer in widget.viewer.layers
    assert f"Tracks layer {layer.name!r} added: 1 track" in widget.status.text()
    assert widget.viewer.layers.selection.active is widget.points_layer


def test_the_propagation_bar_shows_steps_and_time_left(widget, qtbot):
    click(widget, 0, (33, 27))
    wait_idle(qtbot, widget)
    formats = []
    widget.frame_written.connect(lambda _frame: formats.append(widget.progress.format()))
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)
    assert formats[0] == f"1/{T} steps"  # the start frame: no pace known yet
    assert all("left" in text for text in formats[2:-1]), formats  # a pace from tracked frames after the first
    assert widget.progress.format() == f"Done: {T}/{T} steps"


def test_the_plugin_menu_names_the_widget_once(make_napari_viewer):
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest("napari-sam2")
    (contribution,) = manifest.contributions.widgets
    assert contribution.display_name != manifest.display_name  # napari shows "widget (plugin)"
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam2", contribution.display_name)
    assert isinstance(widget, SAM2TrackingWidget)
    assert widget.maximumWidth() <= 360  # leaves the canvas its right side


def test_a_click_over_an_unsent_painting_of_the_same_object_says_so(widget, qtbot):
    widget.labels_layer.data_setitem((np.full(16, 1), *np.nonzero(np.ones((4, 4), bool))), 1)  # painted, not sent
    click(widget, 1, (33, 27))
    wait_idle(qtbot, widget)
    assert "It replaced your painting of that object there" in widget.status.text(), widget.status.text()
    click(widget, 1, (35, 28))
    wait_idle(qtbot, widget)
    assert "replaced" not in widget.status.text()
