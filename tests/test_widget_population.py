"""Populations in the dock widget: "Segment all on this frame" and "Seed from labels" through their buttons
(written into the real Labels layer, listed, undoable; Cancel leaves labels, objects and the session as they were),
the object list with 500 objects (fill time, find by id, jump to an object's frames, show / hide), and label images
without dense logits (propagated frames and clicks equal ``labels_from_logits`` of ``session.frame_logits``). Real
napari viewer; movies are (T, Y, X); (row, col) = (y, x).

The model is a small random-weight SAM 2.1 tiny (image size 128): masks are arbitrary shapes, so every check compares
the layer with the engine's own results and with what must not change.
"""

import threading
import time

import numpy as np
import pytest
from qtpy.QtCore import Qt
from session_support import cells_movie
from widget_support import click, labels_of, open_widget, wait_idle, widget_fixture

from napari_sam2 import AutomaticMaskOptions
from napari_sam2.engine.postprocess import labels_from_logits
from napari_sam2.plugin import population
from napari_sam2.plugin.object_frames import next_frame

T = 3
OPEN = AutomaticMaskOptions(points_per_side=4, points_per_batch=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            box_nms_thresh=0.95)  # 4 batches; random weights pass every filter


widget = widget_fixture(T)


def grid_labels(count: int, shape=(96, 80), side: int = 6, pitch: int = 9) -> np.ndarray:
    """(Y, X) uint16 label image of ``count`` squares (labels 1..count) on a grid, row by row."""
    labels = np.zeros(shape, np.uint16)
    per_row = (shape[1] - 2) // pitch
    for label in range(1, count + 1):
        row, col = divmod(label - 1, per_row)
        y, x = 2 + row * pitch, 2 + col * pitch
        labels[y:y + side, x:x + side] = label
    return labels


def session_labels(widget, frame: int) -> np.ndarray:
    """The engine's labels of ``frame`` from its dense logits (the path the widget used before issue 15)."""
    session = widget.controller.session
    return labels_from_logits(*session.frame_logits(frame), dtype=widget.labels_layer.data.dtype)


def expected_seeded_frame(widget, frame: int, before: np.ndarray, new_ids: list[int]) -> np.ndarray:
    """What the layer must hold on ``frame`` after seeding ``new_ids``: the engine's labels, each mask prompt's exact
    pixels on top (in the session's order), and every label the engine does not own kept as it was."""
    session = widget.controller.session
    labels = session_labels(widget, frame)
    masked = np.isin(labels, [i for i in session.obj_ids if session.prompts(i).get(frame) is not None
                              and session.prompts(i)[frame].kind == "mask"])
    labels[masked] = 0
    for obj_id in session.obj_ids:
        prompt = session.prompts(obj_id).get(frame)
        if prompt is not None and prompt.kind == "mask":
            labels[prompt.mask] = obj_id
    foreign = (before != 0) & ~np.isin(before, session.obj_ids)
    return np.where(foreign, before, labels)


def press(qtbot, widget, button, frame: int = 0) -> None:
    """Show ``frame``, then press ``button`` and wait for its job."""
    widget.viewer.dims.set_current_step(0, frame)
    button.click()
    wait_idle(qtbot, widget)


# ---------------------------------------------------------------------------------------------------- segment all


def test_segment_all_button_writes_new_objects_into_the_labels_layer_in_one_undo_step(widget, qtbot):
    layer = widget.labels_layer
    layer.data[0, :4, :4] = 9  # a hand-drawn label: it survives, and new ids start above it
    layer.data[2, 50:60, 50:60] = 9
    widget.segment_options = OPEN
    before = labels_of(widget)
    seen = []
    shown = widget._segment_progress
    widget._segment_progress = lambda done, total: (seen.append((done, total)), shown(done, total))
    placeholders = []  # the ids come from first_id: no placeholder object is added to push them up
    widget.controller.ensure_session().add_mask = lambda *args, **kwargs: placeholders.append(args)
    press(qtbot, widget, widget.segment_all_button)
    assert not placeholders

    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # progress after each batch of point prompts
    session = widget.controller.session
    new_ids = session.obj_ids
    assert len(new_ids) > 1 and new_ids == list(range(10, 10 + len(new_ids)))  # above label 9 and the listed 1
    assert set(new_ids) <= set(widget.objects.ids)
    after = labels_of(widget)
    np.testing.assert_array_equal(after[0], expected_seeded_frame(widget, 0, before[0], new_ids))
    assert (after[0, :4, :4] == 9).all()
    np.testing.assert_array_equal(after[1:], before[1:])  # other frames untouched
    assert f"{len(new_ids)} new objects" in widget.status.text()
    assert not widget.cancel_button.isEnabled() and widget.segment_all_button.isEnabled()
    layer.undo()  # one undo step takes the whole frame back
    np.testing.assert_array_equal(labels_of(widget), before)


def test_segment_all_then_propagate_tracks_the_new_objects(widget, qtbot):
    widget.segment_options = OPEN
    press(qtbot, widget, widget.segment_all_button)
    new_ids = widget.controller.session.obj_ids
    assert widget.propagate(direction="forward", start=0) is not None
    wait_idle(qtbot, widget)
    for t in (1, 2):  # tracked frames hold exactly the engine's labels
        np.testing.assert_array_equal(labels_of(widget)[t], session_labels(widget, t))
    assert set(np.unique(labels_of(widget))) - {0} <= set(new_ids)


def cancel_when(widget, moment: str):
    """Patch the session's segment_all so that Cancel comes during mask generation ("generation": after the first
    batch, the worker waits until the GUI has pressed Cancel) or while the masks are being seeded ("seeding")."""
    session = widget.controller.ensure_session()
    real = session.segment_all
    pressed = threading.Event()

    def on_progress(done: int, total: int) -> None:  # GUI thread: the first progress report presses Cancel
        if not pressed.is_set():
            widget.cancel()
            pressed.set()

    def patched(frame, options=None, progress=None, first_id=None):
        if moment == "generation":
            def wrapped(done, total):
                progress(done, total)
                assert pressed.wait(30)
            return real(frame, options, progress=wrapped, first_id=first_id)
        ids = real(frame, options, progress=progress, first_id=first_id)
        widget._seeding[1].context.cancel()  # as Cancel does, once the engine has seeded its masks
        return ids

    session.segment_all = patched
    if moment == "generation":
        widget._segment_progress = on_progress
    return session


def test_painting_while_segment_all_runs_stays_as_painted(widget, qtbot):
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    layer = widget.labels_layer
    session = widget.controller.ensure_session()
    real = session.segment_all
    painted = threading.Event()
    expected = {}

    def paint(done: int, total: int) -> None:  # GUI thread, while the worker waits after the first batch
        if painted.is_set():
            return
        yy, xx = np.mgrid[60:70, 50:62]
        layer.data_setitem((np.zeros(yy.size, int), yy.ravel(), xx.ravel()), 1)  # object 1 corrected
        layer.data_setitem((np.zeros(4, int), np.array([90, 90, 91, 91]), np.array([2, 3, 2, 3])), 77)  # new label
        expected["plane"] = np.array(layer.data[0])
        painted.set()

    def patched(frame, options=None, progress=None, first_id=None):
        def wrapped(done, total):
            progress(done, total)
            assert painted.wait(30)
        return real(frame, options, progress=wrapped, first_id=first_id)

    session.segment_all = patched
    widget._segment_progress = paint
    widget.viewer.dims.set_current_step(0, 0)
    assert widget.segment_all(OPEN) is not None
    wait_idle(qtbot, widget)
    after = labels_of(widget)[0]
    assert len(session.obj_ids) > 1
    np.testing.assert_array_equal(after == 1, expected["plane"] == 1)  # exactly as the user left it ...
    np.testing.assert_array_equal(after == 77, expected["plane"] == 77)
    assert widget.controller.writer.edited_ids(0, [1]) == {1}  # ... and still a pending correction


@pytest.mark.parametrize("moment", ["generation", "seeding"])
def test_cancel_of_segment_all_leaves_labels_objects_and_session_as_before(widget, qtbot, moment):
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    widget.segment_options = OPEN
    session = cancel_when(widget, moment)
    widget.viewer.dims.set_current_step(0, 0)
    before, ids_before, listed = labels_of(widget), session.obj_ids, widget.objects.ids
    prompts_before = session.prompts(1)
    widget.segment_all()
    wait_idle(qtbot, widget)
    assert session.obj_ids == ids_before == [1] and widget.objects.ids == listed
    assert session.prompts(1) == prompts_before
    np.testing.assert_array_equal(labels_of(widget), before)
    assert "Cancelled segment all" in widget.status.text()
    if moment == "seeding":
        assert "taken out again" in widget.status.text()
    assert not widget.cancel_button.isEnabled()
    assert widget.propagate(direction="forward", start=0) is not None  # and the session goes on as before
    wait_idle(qtbot, widget)
    assert widget.controller.session.obj_ids == [1]


def test_segment_all_refused_while_a_propagation_runs(widget, qtbot):
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    assert widget.propagate(direction="forward", start=0) is not None
    assert widget.segment_all(OPEN) is None
    assert "Busy" in widget.status.text()
    wait_idle(qtbot, widget)


# ---------------------------------------------------------------------------------------------------- seed from labels


def test_seed_from_labels_button_takes_the_frames_labels_as_new_objects(widget, qtbot, monkeypatch):
    monkeypatch.setattr(population, "LABEL_BATCH", 5)
    layer = widget.labels_layer
    seeds = grid_labels(12)
    layer.data[1] = seeds
    layer.refresh()
    before = labels_of(widget)
    seen = []
    shown = widget._seed_progress
    widget._seed_progress = lambda done, total: (seen.append((done, total)), shown(done, total))
    press(qtbot, widget, widget.seed_labels_button, frame=1)
    assert seen == [(5, 12), (10, 12), (12, 12)]
    session = widget.controller.session
    assert session.obj_ids == list(range(1, 13)) and set(widget.objects.ids) >= set(range(1, 13))
    for obj_id in range(1, 13):
        assert np.array_equal(session.prompts(obj_id)[1].mask, seeds == obj_id)
    np.testing.assert_array_equal(labels_of(widget), before)  # the layer keeps the exact labels
    assert not widget.controller.writer.edited_ids(1, list(range(1, 13)))  # given to the model: no longer pending
    assert "12 new objects" in widget.status.text()


def test_cancel_of_seed_from_labels_takes_the_seeded_batches_out(widget, qtbot, monkeypatch):
    monkeypatch.setattr(population, "LABEL_BATCH", 2)
    layer = widget.labels_layer
    layer.data[0] = grid_labels(8)
    layer.refresh()
    before = labels_of(widget)
    widget._seed_progress = lambda done, total: widget.cancel()  # Cancel at the first batch's progress
    widget.viewer.dims.set_current_step(0, 0)
    assert widget.seed_from_labels() is not None
    wait_idle(qtbot, widget)
    session = widget.controller.session
    assert session.obj_ids == []
    np.testing.assert_array_equal(labels_of(widget), before)
    assert "Cancelled seed from labels" in widget.status.text()


def test_seed_from_labels_without_new_labels_says_so(widget):
    assert widget.seed_from_labels() is None
    assert "no label that is not an object yet" in widget.status.text()


# ---------------------------------------------------------------------------------------------------- many objects


def test_propagation_and_clicks_with_many_objects_write_the_engines_labels(widget, qtbot):
    layer = widget.labels_layer
    layer.data[0] = grid_labels(60)
    layer.refresh()
    press(qtbot, widget, widget.seed_labels_button)
    session = widget.controller.session
    assert len(session.obj_ids) == 60
    assert widget.propagate(direction="forward", start=0) is not None
    wait_idle(qtbot, widget)
    for t in (1, 2):
        np.testing.assert_array_equal(labels_of(widget)[t], session_labels(widget, t))

    frame_labels = widget.controller.frame_labels
    renders = frame_labels.local_renders
    new = widget.new_object()
    click(widget, 1, (50, 40), obj_id=new)  # a new object: only the window it can change is rendered
    wait_idle(qtbot, widget)
    click(widget, 1, (30, 20), positive=False, obj_id=new)  # refining it, too
    wait_idle(qtbot, widget)
    assert frame_labels.local_renders == renders + 2 and frame_labels.last_render.startswith("windows")
    np.testing.assert_array_equal(labels_of(widget)[1], session_labels(widget, 1))
    np.testing.assert_array_equal(labels_of(widget)[1], session.label_image(1))
    rng = np.random.default_rng(0)
    for t in (2, 1, 2, 0, 0):  # clicks on objects that have pixels there (tracked, or seeded on frame 0)
        plane = labels_of(widget)[t]
        present = np.unique(plane[plane != 0])
        obj_id = int(rng.choice(present))
        yx = tuple(np.argwhere(plane == obj_id)[int(rng.integers(np.count_nonzero(plane == obj_id)))])
        before = frame_labels.local_renders
        click(widget, t, yx, positive=bool(rng.integers(2)), obj_id=obj_id)
        wait_idle(qtbot, widget)
        assert frame_labels.local_renders == before + 1, frame_labels.last_render  # a window, not the whole frame
        assert session.prompts(obj_id)[t].kind == "points"
        if t == 0:  # the other seeded objects keep their painted masks exactly
            np.testing.assert_array_equal(labels_of(widget)[0], expected_seeded_frame(widget, 0, 0 * plane, []))
        else:
            np.testing.assert_array_equal(labels_of(widget)[t], session.label_image(t))
            np.testing.assert_array_equal(labels_of(widget)[t], session_labels(widget, t))


def test_frame_labels_after_many_clicks_equal_the_engines_label_image(model):
    """FrameLabels without the widget: clicks on tracked, seeded and new objects among 60, each rendered in windows of
    the kept labels, give exactly ``session.label_image`` (and the dense ``labels_from_logits``) every time."""
    from napari_sam2 import TrackingSession
    from napari_sam2.plugin.frame_labels import FrameLabels

    session = TrackingSession(model, cells_movie(3), contrast_limits=(0, 4000))
    session.add_labels(grid_labels(60), 0)
    kept = FrameLabels()
    for output in session.propagate(0):
        kept.store(session, output.frame, output.label_image(np.uint16))
    rng = np.random.default_rng(4)
    for step in range(10):
        frame = int(rng.integers(3))
        labels = session.label_image(frame)
        present = np.unique(labels[labels != 0])
        obj_id = 61 + step if step % 5 == 4 else int(rng.choice(present))  # now and then a new object
        where = np.argwhere(labels == obj_id) if obj_id in present else np.argwhere(labels >= 0)
        yx = where[int(rng.integers(len(where)))]
        output = session.add_points(frame, obj_id, [yx], [int(rng.integers(2))], clear_old_points=bool(step % 2))
        drawn = kept.after_prompt(session, frame, obj_id, output, np.dtype(np.uint16))
        assert kept.last_render.startswith("windows"), kept.last_render
        np.testing.assert_array_equal(drawn, session.label_image(frame), err_msg=f"step {step}: {kept.last_render}")
        np.testing.assert_array_equal(drawn, labels_from_logits(*session.frame_logits(frame), dtype=np.uint16))


def many_objects_widget(make_napari_viewer, model, count: int = 500):
    """The widget over a (4, 200, 200) movie whose output layer holds ``count`` labels on frame 0 (8 x 8 squares),
    label 250 also on frame 2, and the time the object list took to be filled."""
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(4, shape=(200, 200)))
    data = np.zeros((4, 200, 200), np.uint16)
    data[0] = grid_labels(count, (200, 200), side=6, pitch=8)
    data[2][data[0] == 250] = 250
    layer = viewer.add_labels(data, name="cells")
    viewer.dims.set_current_step(0, 0)
    start = time.perf_counter()
    widget.set_labels_layer(layer)
    return widget, time.perf_counter() - start


def test_object_list_with_500_objects_fills_fast_and_finds_jumps_and_hides(make_napari_viewer, model, qtbot):
    widget, fill = many_objects_widget(make_napari_viewer, model)
    objects = widget.objects
    assert objects.ids == list(range(1, 501))
    print(f"\nobject list: set_labels_layer with 500 labels {fill * 1000:.0f} ms", end="")
    start = time.perf_counter()
    objects.clear()
    objects.add_ids(range(1, 501))
    refill = time.perf_counter() - start
    print(f", refilled {refill * 1000:.1f} ms", end="")
    assert refill < 0.5 and fill < 1.0

    widget.find_edit.setText("25")  # find by id
    shown = [i for i in objects.ids if not objects.item(objects.ids.index(i)).isHidden()]
    assert shown == [25, *range(250, 260)]
    widget.find_edit.returnPressed.emit()
    assert objects.current_id == 25 and widget.labels_layer.selected_label == 25
    assert widget.find_object("250") == 250 and widget.labels_layer.selected_label == 250
    assert widget.find_object("9999") is None and "No object 9999" in widget.status.text()
    widget.find_edit.clear()
    assert all(not objects.item(row).isHidden() for row in range(objects.count()))

    assert widget.current_frame() == 0  # jump to the frames that hold object 250: 2, then none after
    assert widget.jump_to_object_frame(1) == 2 and widget.current_frame() == 2
    assert widget.jump_to_object_frame(1) is None and "no mask or prompt after frame 2" in widget.status.text()
    assert widget.jump_to_object_frame(-1) == 0 and widget.current_frame() == 0

    layer = widget.labels_layer
    colour = layer.get_color(7).copy()
    objects.item(6).setCheckState(Qt.Unchecked)  # the user unticks object 7
    assert objects.hidden_ids == {7}
    assert layer.get_color(7)[3] == 0 and np.allclose(layer.get_color(8), widget.visibility.colour_of(8))
    assert np.allclose(layer.colormap.map(np.array([7, 300], np.uint16))[:, 3], [0, 1])
    assert np.allclose(widget.visibility.colour_of(7), colour)  # the swatch keeps its colour
    objects.item(6).setCheckState(Qt.Checked)
    assert not objects.hidden_ids and np.allclose(layer.get_color(7), colour)
    widget.solo_check.setChecked(True)  # "only this one": napari's show_selected_label
    assert layer.show_selected_label and layer.selected_label == 250
    widget.solo_check.setChecked(False)
    assert not layer.show_selected_label


def test_jump_also_stops_at_prompted_frames():
    planes = {t: np.zeros((4, 4), np.uint16) for t in range(6)}
    planes[4][1, 1] = 3
    reads = []

    def read(t):
        reads.append(t)
        return planes[t]

    assert next_frame(read, 6, 3, 0, 1, prompted=[2, 5]) == 2 and reads == [1]
    assert next_frame(read, 6, 3, 2, 1) == 4
    assert next_frame(read, 6, 3, 5, -1, prompted=[2]) == 4
    assert next_frame(read, 6, 3, 4, 1) is None
