"""The widget's background jobs against the user's edits and changes of mind: edits made while a propagation runs
survive it and become prompts, switching image / axis / model or loading a session while a job runs leaves nothing
stale, cancel then run again at once, failing jobs keep corrections pending, painted masks come back exactly, Remove
object touches only the tracked plane. Real napari viewer; movies are (T, Y, X) or (T, Z, Y, X); (row, col) = (y, x).

The model is a small random-weight SAM 2.1 tiny (image size 128): masks are arbitrary, so checks compare the layer
with the engine's own results and with what must not change.
"""

import threading

import numpy as np
from session_support import cells_movie
from widget_support import click, dock, labels_of, open_widget, wait_idle, widget_fixture

T = 8
BLOB = (33, 27)  # (row, col) on the blob of cells_movie in the first frames


widget = widget_fixture(T)


def tracked(widget, qtbot, frame: int = 0) -> None:
    """Object 1 clicked on ``frame`` and propagated forward over the whole movie."""
    click(widget, frame, BLOB)
    wait_idle(qtbot, widget)
    assert widget.propagate(direction="forward", start=frame) is not None
    wait_idle(qtbot, widget)
    assert not widget.status.text().startswith("Error"), widget.status.text()


def when_frame_written(widget, frame: int, action) -> None:
    """Run ``action()`` once, in the GUI thread, right after the propagation has written ``frame``."""
    def once(written: int) -> None:
        if written == frame:
            widget.frame_written.disconnect(once)
            action()
    widget.frame_written.connect(once)


def square(t: int, y0: int, x0: int, size: int = 8) -> tuple[np.ndarray, ...]:
    yy, xx = np.mgrid[y0:y0 + size, x0:x0 + size]
    return np.full(yy.size, t), yy.ravel(), xx.ravel()


# ---------------------------------------------------------------------------------------------------- edits in runs


def test_paint_and_erase_ahead_of_a_running_propagation_survive_and_become_prompts(widget, qtbot):
    tracked(widget, qtbot)
    layer = widget.labels_layer
    expected = {}

    def edit_ahead() -> None:  # while the run is at frame 1: paint object 1 on frame 5, erase it on frame 6
        layer.data_setitem(square(5, 70, 60), 1)
        erase = np.nonzero(layer.data[6] == 1)
        layer.data_setitem((np.full(erase[0].size, 6), *erase), 0)
        layer.paint((6, 80, 10), 1)  # and a brush dab of it elsewhere on frame 6 (napari's brush)
        expected.update({t: np.array(layer.data[t]) for t in (5, 6)})

    when_frame_written(widget, 1, edit_ahead)
    assert widget.propagate(direction="forward", start=0) is not None
    wait_idle(qtbot, widget)

    labels = labels_of(widget)
    for t in (5, 6):
        np.testing.assert_array_equal(labels[t], expected[t])  # exactly as the user left them
    assert "Your edits of object 1 on frames 5, 6" in widget.status.text(), widget.status.text()
    assert set(widget.controller.writer.edited_frames([1])) == {5, 6}  # still pending

    assert widget.propagate(direction="forward", start=0) is not None  # the next run takes them as prompts
    wait_idle(qtbot, widget)
    assert "Painted corrections used as prompts: object 1 on frames 5, 6" in widget.status.text()
    session = widget.controller.session
    for t in (5, 6):
        prompt = session.prompts(1)[t]
        assert prompt.kind == "mask"
        np.testing.assert_array_equal(prompt.mask, expected[t] == 1)
        np.testing.assert_array_equal(labels_of(widget)[t], expected[t])  # and the layer keeps the exact pixels
    assert not widget.controller.writer.edited_frames([1])


def test_undo_after_a_run_with_an_edit_in_it_restores_the_state_before_the_run(widget, qtbot):
    tracked(widget, qtbot)
    before = labels_of(widget)
    layer = widget.labels_layer
    when_frame_written(widget, 1, lambda: layer.data_setitem(square(5, 70, 60), 1))
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)
    after = labels_of(widget)
    assert after[5, 70:78, 60:68].all()
    # napari stages every edit while the run's undo group is open, so the edit is part of the run's undo step.
    layer.undo()
    np.testing.assert_array_equal(labels_of(widget), before)
    layer.redo()
    np.testing.assert_array_equal(labels_of(widget), after)


def test_a_failing_run_leaves_the_painted_corrections_pending(widget, qtbot, monkeypatch):
    tracked(widget, qtbot)
    layer = widget.labels_layer
    layer.data_setitem(square(3, 70, 60), 1)
    session = widget.controller.session

    def broken(*_args, **_kwargs):
        raise RuntimeError("out of memory while encoding the mask")

    monkeypatch.setattr(session, "add_mask", broken)
    assert widget.propagate(direction="forward", start=0) is not None
    wait_idle(qtbot, widget)
    assert widget.status.text().startswith("Error: out of memory"), widget.status.text()
    assert "pending" in widget.status.text()
    assert list(widget.controller.writer.edited_frames([1])) == [3]  # not forgotten

    monkeypatch.undo()
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)
    assert "Painted corrections used as prompts: object 1 on frame 3" in widget.status.text()
    assert widget.controller.session.prompts(1)[3].kind == "mask"


def test_cancel_then_propagate_at_once_runs_to_the_end_with_prefetching_intact(widget, qtbot):
    tracked(widget, qtbot)
    session = widget.controller.session
    prefetcher = session._prefetcher
    events = []
    schedule, cancel = prefetcher.schedule, prefetcher.cancel

    def recording_schedule(frames, keep=None):
        events.append(("schedule", threading.current_thread() is threading.main_thread()))
        schedule(frames, keep)

    def recording_cancel():
        events.append(("cancel", threading.current_thread() is threading.main_thread()))
        cancel()

    prefetcher.schedule, prefetcher.cancel = recording_schedule, recording_cancel
    jobs = []

    def cancel_and_run_again() -> None:
        events.append(("second run", True))
        widget.cancel()
        jobs.append(widget.propagate(direction="forward", start=0))

    when_frame_written(widget, 1, cancel_and_run_again)
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)

    assert jobs and jobs[0] is not None  # the new run was accepted while the cancelled one finished
    assert "Done" in widget.status.text() and f"{T} of {T} frames" in widget.status.text(), widget.status.text()
    kinds = [kind for kind, _ in events]
    assert kinds.count("cancel") == 2 and kinds[-1] == "cancel"  # each run's generator closed once, at its end
    first_cancel = kinds.index("cancel")
    assert first_cancel > kinds.index("second run")  # the cancelled run was closed ...
    assert "schedule" in kinds[first_cancel:]  # ... before the new one read ahead, which nothing cleared mid-run
    assert not any(in_main for kind, in_main in events if kind in ("schedule", "cancel"))  # in the worker thread
    assert prefetcher.scheduled == []
    labels = labels_of(widget)
    for t in range(T):
        np.testing.assert_array_equal(labels[t], session.label_image(t))


# ---------------------------------------------------------------------------------------------------- exact masks


def test_a_painted_2048_px_mask_with_one_pixel_processes_comes_back_exactly(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(2, shape=(2048, 2048)))
    layer = widget.labels_layer
    obj = widget.objects.current_id
    mask = np.zeros((2048, 2048), bool)
    yy, xx = np.mgrid[:2048, :2048]
    mask[(yy - 600) ** 2 + (xx - 500) ** 2 < 40 ** 2] = True  # a cell body ...
    mask[600, 500:1800] = True  # ... a 1-pixel-wide process along a row
    mask[100:600, 520] = True  # ... one along a column
    mask[np.arange(640, 1500), np.arange(640, 1500)] = True  # ... and a diagonal one
    where = np.nonzero(mask)
    layer.data_setitem((np.zeros(where[0].size, dtype=int), *where), obj)
    widget.use_painted_mask()
    wait_idle(qtbot, widget)
    assert widget.controller.session.prompts(obj)[0].kind == "mask"
    np.testing.assert_array_equal(np.asarray(layer.data[0]) == obj, mask)
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(layer.data[0]) == obj, mask)  # the run does not blur it either
    assert "2 of 2 frames" in widget.status.text(), widget.status.text()


# ---------------------------------------------------------------------------------------------------- remove object


def test_remove_object_on_a_4d_layer_changes_only_the_tracked_plane(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    data = np.stack([cells_movie(3, shape=(64, 64))] * 3, axis=1)  # (T, Z, Y, X)
    layer = viewer.add_image(data, name="tzyx")
    viewer.dims.set_current_step(1, 1)
    widget = dock(viewer, model, layer, 0)
    wait_idle(qtbot, widget)
    assert widget.controller.target.fixed == {1: 1}
    labels = widget.labels_layer
    obj = widget.objects.current_id
    labels.data[:, 0, 5:15, 5:15] = obj  # the same label on other Z planes (e.g. drawn there by hand)
    labels.data[:, 2, 40:50, 40:50] = obj
    click(widget, 1, BLOB)
    wait_idle(qtbot, widget)
    before = np.array(labels.data)
    assert (before[1, 1] == obj).any()

    widget.remove_selected_object()

    after = np.array(labels.data)
    assert not (after[:, 1] == obj).any()
    np.testing.assert_array_equal(np.delete(after, 1, axis=1), np.delete(before, 1, axis=1))
    assert obj not in widget.objects.ids and obj not in widget.controller.session.obj_ids
    labels.undo()
    np.testing.assert_array_equal(np.array(labels.data), before)


def test_a_run_after_undoing_a_run_writes_every_frame_again(widget, qtbot):
    tracked(widget, qtbot)
    after_run = labels_of(widget)
    widget.labels_layer.undo()  # the whole run (one step): only the click's frame is left
    assert not labels_of(widget)[1:].any()
    widget.propagate(direction="forward", start=0)
    wait_idle(qtbot, widget)
    assert "Your edits" not in widget.status.text(), widget.status.text()  # an undo is not an edit
    np.testing.assert_array_equal(labels_of(widget), after_run)


def test_painting_one_object_over_another_keeps_both_exactly(make_napari_viewer, model, qtbot):
    viewer = make_napari_viewer()
    widget, _ = open_widget(viewer, model, cells_movie(T))
    click(widget, 2, BLOB)
    second = widget.new_object()
    click(widget, 2, (70, 60), obj_id=second)
    wait_idle(qtbot, widget)
    layer = widget.labels_layer
    plane = np.array(layer.data[2])
    assert (plane == 1).any() and (plane == second).any()
    cover = np.nonzero(plane == second)
    half = slice(0, max(1, cover[0].size // 2))  # object 1 painted over half of object 2
    layer.data_setitem((np.full(cover[0][half].size, 2), cover[0][half], cover[1][half]), 1)
    painted = np.array(layer.data[2])
    widget.propagate(direction="forward", start=2)
    wait_idle(qtbot, widget)
    text = widget.status.text()
    assert f"Painted corrections used as prompts: object 1 on frame 2; object {second} on frame 2" in text, text
    assert "Your edits" not in text, text
    np.testing.assert_array_equal(np.asarray(layer.data[2]), painted)  # both exactly as painted
    session = widget.controller.session
    for obj_id in (1, second):
        np.testing.assert_array_equal(session.prompts(obj_id)[2].mask, painted == obj_id)
    assert not widget.controller.writer.edited_frames([1, second])
