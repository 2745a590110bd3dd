"""Divisions in the dock widget: the proposals list (jump, preview, accept, reject), manual division ("Divide here",
then a click per daughter), link / unlink / remove, undo (the Divisions box's Undo and Ctrl-Z in the Labels layer),
the object list's parents and the Tracks layer's lineage graph. Real napari viewer; every check reads the Labels
layer the widget wrote. Movies are (T, Y, X); (row, col) = (y, x).

The model is a small random-weight SAM 2.1 tiny (image size 128): its masks are arbitrary shapes, so the proposal
test seeds every frame from the synthetic time-lapse's ground truth (as a segmentation would) and checks the "cells"
proposal those seeds make (cell 3 -> 8 and 9 at the division frame), whatever the model does elsewhere.
"""

import numpy as np
import pytest
from widget_support import click, labels_of, open_widget, wait_idle, widget_fixture

from napari_sam2.plugin.division_review import describe_proposal
from napari_sam2.sample_data import division_frame, synthetic_cells_movie

T = 6
SPLIT = division_frame(T)

widget = widget_fixture(4)


def seeded_widget(viewer, model, qtbot, divisions: str | None = None):
    """The widget on the synthetic time-lapse (T frames, 128 x 128) seeded from its ground truth on every frame,
    propagated forward (``divisions``: None for the widget's default choice); with the ground truth."""
    movie, truth = synthetic_cells_movie(num_frames=T, size=128)
    docked, _ = open_widget(viewer, model, movie)
    wait_idle(qtbot, docked)
    controller = docked.controller
    session = controller.ensure_session()
    ids = session.add_labels(truth, frames=range(T))
    docked._write_all([controller.frame_write(session, t, None, controller.label_dtype) for t in range(T)])
    docked.objects.add_ids(ids)
    assert docked.propagate("forward", start=0, first=0, last=T - 1, divisions=divisions) is not None
    wait_idle(qtbot, docked)
    return docked, truth


@pytest.fixture
def seeded(make_napari_viewer, model, qtbot):
    """:func:`seeded_widget` with the widget's default, divisions="propose"."""
    docked, truth = seeded_widget(make_napari_viewer(), model, qtbot)
    assert docked.division_combo.currentText() == "propose"
    yield docked, truth
    wait_idle(qtbot, docked)


def division_row(widget) -> int:
    """The row of the proposal of cell 3 at the division frame."""
    keys = [(p.frame, p.parent) for p in widget.divisions.proposals]
    assert (SPLIT, 3) in keys, keys
    return keys.index((SPLIT, 3))


def preview_layers(widget) -> list:
    return [layer for layer in widget.viewer.layers if layer.name.startswith("division preview")]


def test_accepting_a_proposal_ends_the_parent_in_the_labels_and_the_tracks_graph(seeded, qtbot, tmp_path):
    widget, truth = seeded
    session = widget.controller.session
    row = division_row(widget)
    proposal = widget.divisions.proposals[row]
    assert proposal.daughters == (8, 9)
    assert widget.divisions.rows.item(row).text() == describe_proposal(proposal) == f"frame {SPLIT}: object 3 → 8 + 9"
    assert "division proposal" in widget.status.text()
    tracks = widget.add_tracks_layer()
    assert tracks is not None and tracks.graph == {}

    widget.divisions.select_row(row)  # jump to the frame, preview the two parts
    assert widget.current_frame() == SPLIT
    (preview,) = preview_layers(widget)
    np.testing.assert_array_equal(preview.data == 1, proposal.parts[0])
    np.testing.assert_array_equal(preview.data == 2, proposal.parts[1])
    assert widget.viewer.layers.selection.active is widget.points_layer  # clicks keep reaching SAM 2

    before = labels_of(widget)
    assert widget.accept_proposal() is not None  # the Accept button's action, on the chosen row
    wait_idle(qtbot, widget)
    after = labels_of(widget)
    assert session.lineage() == {8: 3, 9: 3}
    assert session.object_span(3)[1] == SPLIT - 1
    assert not (after[SPLIT:] == 3).any()  # the parent's pixels from the division frame on are gone ...
    assert not np.isin(after[:SPLIT], [8, 9]).any()  # ... the daughters' (tracked by the model) before it too ...
    assert ((after[:SPLIT] == 3) >= (before[:SPLIT] == 3)).all()
    untouched = ~np.isin(before, [3, 8, 9])  # ... and nothing else changed
    np.testing.assert_array_equal(after[untouched], before[untouched])
    for daughter in (8, 9):
        np.testing.assert_array_equal(after[SPLIT] == daughter, truth[SPLIT] == daughter)
    assert (SPLIT, 3) not in [(p.frame, p.parent) for p in widget.divisions.proposals]
    assert not preview_layers(widget)
    assert tracks.graph == {8: [3], 9: [3]}  # the Tracks layer follows
    assert widget.objects.row_text(8) == "object 8 (from 3)" and widget.objects.row_text(3) == "object 3"
    assert "Division accepted: object 3 ends at frame" in widget.status.text()
    widget.export_ctc(tmp_path / "01_RES")  # the CTC export carries the lineage: L B E P rows
    rows = {int(r[0]): [int(v) for v in r[1:]] for r in
            (line.split() for line in (tmp_path / "01_RES" / "res_track.txt").read_text().splitlines())}
    assert rows[3][1] == SPLIT - 1 and rows[8] == [SPLIT, T - 1, 3] and rows[9] == [SPLIT, T - 1, 3]

    widget.labels_layer.undo()  # Ctrl-Z in the Labels layer: the pixels and the lineage come back
    np.testing.assert_array_equal(labels_of(widget), before)
    assert session.lineage() == {} and session.object_span(3) == (None, None)
    assert tracks.graph == {} and widget.objects.row_text(8) == "object 8"
    assert (SPLIT, 3) in [(p.frame, p.parent) for p in widget.divisions.proposals]

    widget.divisions.select_row(division_row(widget))
    assert widget.accept_proposal() is not None
    wait_idle(qtbot, widget)
    assert session.lineage() == {8: 3, 9: 3}
    assert widget.undo_lineage_button.isEnabled()
    widget.undo_lineage_button.click()  # Undo in the Divisions box: the same, from the widget
    np.testing.assert_array_equal(labels_of(widget), before)
    assert session.lineage() == {} and tracks.graph == {}
    assert "Undone" in widget.status.text()
    assert not widget.undo_lineage_button.isEnabled()


def test_rejecting_a_proposal_keeps_the_object_and_is_not_proposed_again(seeded, qtbot):
    widget, _ = seeded
    session = widget.controller.session
    row = division_row(widget)
    widget.divisions.select_row(row)
    before = labels_of(widget)
    pixels_of_3 = (before[SPLIT:] == 3).sum()
    widget.divisions.reject_button.click()
    assert session.lineage() == {} and session.object_span(3) == (None, None)
    np.testing.assert_array_equal(labels_of(widget), before)  # nothing written
    assert (SPLIT, 3) not in [(p.frame, p.parent) for p in widget.divisions.proposals]
    assert not preview_layers(widget)
    assert "Rejected: object 3 goes on" in widget.status.text()
    assert widget.propagate("forward", start=0, first=0, last=T - 1) is not None
    wait_idle(qtbot, widget)
    assert (SPLIT, 3) not in [(p.frame, p.parent) for p in widget.divisions.proposals]
    assert (labels_of(widget)[SPLIT:] == 3).sum() == pixels_of_3 > 0  # object 3 is still tracked there
    assert widget.undo_lineage()  # the rejection can be undone: the proposal is back
    assert (SPLIT, 3) in [(p.frame, p.parent) for p in widget.divisions.proposals]


def track_object_1(widget, qtbot, frames: int = 4) -> np.ndarray:
    """Object 1 clicked on frame 0 and propagated over ``frames`` frames; the labels after."""
    click(widget, 0, (40, 30))
    wait_idle(qtbot, widget)
    assert widget.propagate("forward", start=0, first=0, last=frames - 1) is not None
    wait_idle(qtbot, widget)
    labels = labels_of(widget)
    assert all((labels[t] == 1).any() for t in range(frames))
    return labels


def test_manual_division_links_the_two_clicked_daughters_and_undo_takes_it_back(widget, qtbot):
    before = track_object_1(widget, qtbot)
    session = widget.controller.session
    tracks = widget.add_tracks_layer()
    widget.objects.select_id(1)
    widget.show_frame(2)
    widget.divide_button.click()
    assert widget.divide_button.text().startswith("Cancel division")
    assert widget.objects.current_id == 2 and "first daughter, object 2" in widget.status.text()
    click(widget, 2, (38, 28), obj_id=2)
    wait_idle(qtbot, widget)
    assert widget.objects.current_id == 3 and "second daughter, object 3" in widget.status.text()
    click(widget, 2, (50, 40), obj_id=3)
    wait_idle(qtbot, widget)

    after = labels_of(widget)
    assert session.lineage() == {2: 1, 3: 1} and session.object_span(1)[1] == 1
    assert widget.divide_button.text() == "Divide here"
    np.testing.assert_array_equal(after[:2], before[:2])
    assert not (after[2:] == 1).any()  # the parent ends the frame before
    np.testing.assert_array_equal(after[2], session.label_image(2))
    assert (after[2] == 2).any() and (after[2] == 3).any()
    assert tracks.graph == {2: [1], 3: [1]}
    assert widget.objects.row_text(3) == "object 3 (from 1)"
    assert "Object 1 divided into 2 and 3 on frame 2" in widget.status.text()

    assert widget.undo_lineage()  # the link goes, object 1's pixels come back; the daughters drawn for it go
    assert session.lineage() == {} and session.object_span(1) == (None, None)
    undone = labels_of(widget)
    for t in (0, 1, 3):
        np.testing.assert_array_equal(undone[t] == 1, before[t] == 1)
    assert (undone[2] == 1).any()  # (less the daughters' area until the next propagation: see the user guide)
    assert not np.isin(undone, [2, 3]).any()
    assert tracks.graph == {} and session.obj_ids == [1] and widget.objects.ids == [1]


def test_a_second_press_cancels_a_manual_division(widget, qtbot):
    before = track_object_1(widget, qtbot)
    widget.objects.select_id(1)
    widget.show_frame(2)
    assert widget.divide_here()
    click(widget, 2, (38, 28), obj_id=2)
    wait_idle(qtbot, widget)
    assert widget.objects.current_id == 3
    widget.divide_button.click()  # a second press: cancelled, the daughter drawn so far goes
    session = widget.controller.session
    assert session.obj_ids == [1] and widget.objects.ids == [1] and session.lineage() == {}
    np.testing.assert_array_equal(labels_of(widget), before)
    assert "Division cancelled" in widget.status.text()
    assert widget.divide_button.text() == "Divide here"
    widget.cancel_division()  # Esc with nothing under way: nothing happens
    assert session.obj_ids == [1]


def test_divide_here_refuses_a_parent_prompted_on_or_after_the_frame(widget, qtbot):
    track_object_1(widget, qtbot)
    widget.objects.select_id(1)
    widget.show_frame(0)
    assert not widget.divide_here()
    assert "no frame comes before frame 0" in widget.status.text()
    click(widget, 3, (50, 35), obj_id=1)
    wait_idle(qtbot, widget)
    widget.show_frame(2)
    assert not widget.divide_here()
    assert "object 1 has prompts on frames 3, at or after frame 2" in widget.status.text()
    assert widget.divide_button.text() == "Divide here"


def test_link_unlink_and_removing_the_parent_follow_in_the_list_and_the_tracks(widget, qtbot):
    before = track_object_1(widget, qtbot)
    session = widget.controller.session
    child = widget.new_object()
    click(widget, 3, (55, 45), obj_id=child)
    wait_idle(qtbot, widget)
    tracks = widget.add_tracks_layer()
    assert widget.link_objects(child, 1) is not None
    wait_idle(qtbot, widget)
    assert session.lineage() == {child: 1} and not (labels_of(widget)[3] == 1).any()
    np.testing.assert_array_equal(labels_of(widget)[:3], before[:3])
    assert tracks.graph == {child: [1]} and widget.objects.row_text(child) == f"object {child} (from 1)"

    widget.objects.select_id(child)
    widget.unlink_button.click()
    wait_idle(qtbot, widget)
    assert session.lineage() == {} and tracks.graph == {} and widget.objects.row_text(child) == f"object {child}"
    assert widget.undo_lineage()  # the unlink undone: linked again
    assert session.lineage() == {child: 1}

    widget.objects.select_id(1)
    widget.remove_object_button.click()  # removing the parent: its links go
    assert session.lineage() == {} and 1 not in session.obj_ids
    assert widget.objects.row_text(child) == f"object {child}" and tracks.graph == {}
    assert not widget.undo_lineage_button.isEnabled()


def test_restart_keeps_the_lineage_and_a_bad_divisions_choice_is_refused(widget, qtbot):
    track_object_1(widget, qtbot)
    child = widget.new_object()
    click(widget, 3, (55, 45), obj_id=child)
    wait_idle(qtbot, widget)
    widget.link_objects(child, 1)
    wait_idle(qtbot, widget)
    assert widget.restart_session() is not None  # a replay on a fresh session: the lineage goes with it
    wait_idle(qtbot, widget)
    assert widget.controller.session.lineage() == {child: 1}
    assert widget.objects.row_text(child) == f"object {child} (from 1)"
    assert widget.propagate("forward", start=0, divisions="sometimes") is None
    assert "divisions must be one of propose, auto, off" in widget.status.text()



def test_divisions_auto_accepts_at_once_and_writes_the_lineage(make_napari_viewer, model, qtbot):
    widget, truth = seeded_widget(make_napari_viewer(), model, qtbot, divisions="auto")
    session = widget.controller.session
    assert session.lineage().get(8) == 3 and session.lineage().get(9) == 3
    assert not widget.divisions.proposals  # nothing left to review
    labels = labels_of(widget)
    assert not (labels[SPLIT:] == 3).any() and not np.isin(labels[:SPLIT], [8, 9]).any()
    for daughter in (8, 9):
        np.testing.assert_array_equal(labels[SPLIT] == daughter, truth[SPLIT] == daughter)
    assert "accepted at once" in widget.status.text()
    assert widget.objects.row_text(8) == "object 8 (from 3)"
    wait_idle(qtbot, widget)
