"""Lineage curation in the dock widget (issue-16 review): unlink and its undo write the Labels, a split proposal
accepted and undone, daughters' ids above every painted label, "auto" runs end the parent on unvisited frames too,
unlink after the parent was removed, a manual division under way ends with its session, cancelling it keeps the
other steps, the Link control, exports that leave out links the labels no longer fit, GEFF export, Escape kept
for napari on its own layers, the widget's DivisionOptions. Real napari viewer; every check reads the Labels
layer. Movies are (T, Y, X), (row, col) = (y, x); the model is a small random-weight SAM 2.1 tiny (image size
128).
"""

import numpy as np
from session_support import cells_movie
from test_widget_lineage import SPLIT, T, seeded_widget, track_object_1
from widget_support import click, labels_of, wait_idle, widget_fixture

from napari_sam2 import DivisionOptions, DivisionProposal

widget = widget_fixture(4)


def linked_child(widget, qtbot) -> int:
    """Object 1 tracked over the 4 frames, a child prompted on frame 3 and linked to it (1 ends at frame 2)."""
    track_object_1(widget, qtbot)
    child = widget.new_object()
    click(widget, 3, (55, 45), obj_id=child)
    wait_idle(qtbot, widget)
    assert widget.link_objects(child, 1) is not None
    wait_idle(qtbot, widget)
    assert widget.controller.session.lineage() == {child: 1}
    assert not (labels_of(widget)[3] == 1).any()
    return child


def test_undoing_an_unlink_takes_the_parents_later_frames_out_of_the_labels_again(widget, qtbot):
    child = linked_child(widget, qtbot)
    session = widget.controller.session
    widget.objects.select_id(child)
    assert widget.unlink_object() is not None
    wait_idle(qtbot, widget)
    assert session.lineage() == {} and session.object_span(1) == (None, None)
    assert widget.propagate("forward", start=0, first=0, last=3) is not None  # 1 tracked past its old end
    wait_idle(qtbot, widget)
    assert (labels_of(widget)[3] == 1).any()
    assert widget.undo_lineage()
    assert session.lineage() == {child: 1} and session.object_span(1)[1] == 2
    assert not (labels_of(widget)[3] == 1).any()  # the layer follows the restored end
    np.testing.assert_array_equal(labels_of(widget)[3] == 1, session.label_image(3) == 1)


def test_an_undo_the_session_refuses_is_reported_and_changes_nothing(widget, qtbot):
    child = linked_child(widget, qtbot)
    session = widget.controller.session
    assert widget.unlink_object(child) is not None
    wait_idle(qtbot, widget)
    click(widget, 3, (40, 30), obj_id=1)  # a prompt of 1 after its old end: the old lineage no longer fits
    wait_idle(qtbot, widget)
    before = labels_of(widget)
    assert not widget.undo_lineage()
    assert "cannot be undone" in widget.status.text()
    assert session.lineage() == {} and 3 in session.prompted_frames(1)
    np.testing.assert_array_equal(labels_of(widget), before)


def test_unlink_after_the_parent_was_removed_lifts_the_kept_start(widget, qtbot):
    child = linked_child(widget, qtbot)
    session = widget.controller.session
    assert widget.remove_object(1)
    assert session.object_span(child)[0] == 3 and session.lineage() == {}
    widget.objects.select_id(child)
    widget.unlink_button.click()
    wait_idle(qtbot, widget)
    assert session.object_span(child) == (None, None)
    assert "unlinked from its removed parent" in widget.status.text()


def test_the_link_control_links_the_selected_object(widget, qtbot):
    track_object_1(widget, qtbot)
    session = widget.controller.session
    child = widget.new_object()
    click(widget, 3, (55, 45), obj_id=child)
    wait_idle(qtbot, widget)
    widget.objects.select_id(child)
    widget.link_parent_spin.setValue(7)
    assert widget.link_selected(7) is None and "object 7 is not tracked" in widget.status.text()
    widget.link_parent_spin.setValue(1)
    widget.link_button.click()
    wait_idle(qtbot, widget)
    assert session.lineage() == {child: 1} and not (labels_of(widget)[3] == 1).any()


def split_proposal(widget, frame: int) -> DivisionProposal:
    """A "split" proposal of object 1 on ``frame``: its mask in the layer there, cut in two at its middle column."""
    mask = labels_of(widget)[frame] == 1
    cols = np.nonzero(mask.any(axis=0))[0]
    middle = int(cols.mean())
    left, right = mask.copy(), mask.copy()
    left[:, middle:], right[:, :middle] = False, False
    assert left.sum() > 0 and right.sum() > 0
    return DivisionProposal(frame=frame, parent=1, parts=(left, right), daughters=None, kind="split")


def test_accepting_a_split_proposal_makes_daughters_above_every_painted_label_and_undo_takes_them_back(widget, qtbot):
    track_object_1(widget, qtbot)
    session = widget.controller.session
    layer = widget.labels_layer
    painted = layer.data.copy()
    painted[0, 2:6, 2:6] = 2  # a hand-painted label 2, not an object of the session
    layer.data = painted
    before = labels_of(widget)
    proposal = split_proposal(widget, 2)
    widget.divisions.set_proposals([proposal])
    assert widget.accept_proposal(0) is not None
    wait_idle(qtbot, widget)
    daughters = sorted(session.lineage())
    assert len(daughters) == 2 and min(daughters) > 2  # never the painted label's value
    after = labels_of(widget)
    assert not (after[2:] == 1).any()
    for daughter, part in zip(daughters, proposal.parts, strict=True):
        np.testing.assert_array_equal(after[2] == daughter, part)  # the parts, as the mask prompts give them
    np.testing.assert_array_equal(after[0], before[0])  # (the painted label stays)
    assert set(daughters) <= set(widget.objects.ids)

    assert widget.undo_lineage()
    np.testing.assert_array_equal(labels_of(widget), before)
    assert session.lineage() == {} and session.obj_ids == [1]
    assert not set(daughters) & set(widget.objects.ids)
    # The parent's pixels back in the layer are not taken for the user's corrections (no mask prompts from them);
    # the session has no result of it after frame 1 until the next propagation (the user guide says so).
    assert widget.controller.collect_corrections(widget.objects.ids) == []
    assert not (session.label_image(2) == 1).any()


def test_auto_divisions_end_the_parent_on_frames_the_run_did_not_visit(make_napari_viewer, model, qtbot):
    widget, _ = seeded_widget(make_napari_viewer(), model, qtbot, divisions="off")
    session = widget.controller.session
    assert (labels_of(widget)[SPLIT + 1:] == 3).any()  # tracked past the division by the "off" run
    assert widget.propagate("forward", start=0, first=0, last=SPLIT, divisions="auto") is not None
    wait_idle(qtbot, widget)
    assert session.lineage().get(8) == 3 and session.object_span(3)[1] == SPLIT - 1
    assert not (labels_of(widget)[SPLIT:] == 3).any()  # also on frames after the run's last one
    assert T > SPLIT + 1


def test_a_manual_division_under_way_ends_when_the_session_is_replaced(widget, qtbot):
    track_object_1(widget, qtbot)
    widget.objects.select_id(1)
    widget.show_frame(2)
    assert widget.divide_here()
    assert widget.restart_session() is not None
    wait_idle(qtbot, widget)
    assert widget._dividing is None and widget.divide_button.text() == "Divide here"
    widget.objects.select_id(1)
    assert widget.divide_here()
    other = widget.viewer.add_image(cells_movie(4), name="another movie")
    widget.set_image_layer(other, 0)  # another image: a new session
    wait_idle(qtbot, widget)
    assert widget._dividing is None and widget.divide_button.text() == "Divide here"


def test_cancelling_a_manual_division_keeps_the_other_undo_steps(widget, qtbot):
    child = linked_child(widget, qtbot)
    session = widget.controller.session
    widget.objects.select_id(1)
    widget.show_frame(2)
    assert widget.divide_here()
    daughter = widget.objects.current_id
    click(widget, 2, (38, 28), obj_id=daughter)
    wait_idle(qtbot, widget)
    widget.cancel_division()
    assert daughter not in session.obj_ids
    assert widget.undo_lineage_button.isEnabled()  # the link, made before the division was started, is kept ...
    assert [step.what for step in widget._lineage_steps] == [f"link object {child} to 1"]
    assert session.lineage() == {child: 1} and child in session.obj_ids  # ... and still in force


def test_exports_leave_out_links_the_labels_no_longer_fit(widget, qtbot, tmp_path):
    child = linked_child(widget, qtbot)
    layer = widget.labels_layer
    erased = layer.data.copy()
    erased[erased == child] = 0  # the daughter erased by hand
    layer.data = erased
    widget.export_ctc(tmp_path / "01_RES")
    rows = [line.split() for line in (tmp_path / "01_RES" / "res_track.txt").read_text().splitlines()]
    assert all(row[3] == "0" for row in rows) and {int(row[0]) for row in rows} == {1}
    assert f"{child} -> 1 (object {child} has no pixels)" in widget.status.text()
    path = widget.export_geff(tmp_path / "tracks.geff")
    assert path.is_dir() and "Links left out" in widget.status.text()
    tracks = widget.add_tracks_layer()
    assert tracks is not None and tracks.graph == {}


def test_escape_stays_napari_s_on_the_shapes_and_labels_layers(widget, qtbot):
    track_object_1(widget, qtbot)

    def binds_escape(layer) -> bool:
        return any(str(key) == "Escape" for key in layer.keymap)

    assert binds_escape(widget.points_layer)
    assert not binds_escape(widget.shapes_layer) and not binds_escape(widget.labels_layer)
    widget.objects.select_id(1)
    widget.show_frame(2)
    assert widget.divide_here()
    widget.points_layer.keymap[next(k for k in widget.points_layer.keymap if str(k) == "Escape")](widget.points_layer)
    assert widget._dividing is None


def test_the_widgets_division_options_reach_the_run(make_napari_viewer, model, qtbot):
    widget, _ = seeded_widget(make_napari_viewer(), model, qtbot, divisions="off")
    widget.division_options = DivisionOptions(min_part_area=10**6)  # no part or cell is that large
    assert widget.propagate("forward", start=0, first=0, last=T - 1, divisions="propose") is not None
    wait_idle(qtbot, widget)
    assert widget.divisions.proposals == [] and widget.controller.session.division_proposals() == []
    widget.division_options = None  # the defaults: the division of cell 3 is proposed
    assert widget.propagate("forward", start=0, first=0, last=T - 1, divisions="propose") is not None
    wait_idle(qtbot, widget)
    assert (SPLIT, 3) in [(p.frame, p.parent) for p in widget.divisions.proposals]
