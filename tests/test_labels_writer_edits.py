"""LabelsWriter: the user's corrections (paint events, undo/redo, content of unknown origin) on a real Labels layer.

Arrays are (T, Y, X) or (T, Z, Y, X); pixel coordinates are (row, col) = (y, x).
"""

import numpy as np
from labels_support import H, T, W, disc, two_cells, viewer_layer  # noqa: F401 - viewer_layer is a fixture

from napari_sam2.plugin.labels_writer import LabelsWriter


def test_user_paint_fill_and_data_setitem_are_reported(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    for t in range(T):
        writer.write_frame(t, [1, 2], two_cells(t))
    assert writer.edited_frames([1, 2]) == {}

    layer.brush_size = 5
    layer.paint((1, 20, 20), 1)  # brush: object 1 grows on frame 1
    layer.fill((2, 30, 30), 0)  # fill with 0: object 2 erased entirely on frame 2
    ys, xs = np.nonzero(two_cells(3) == 0)
    layer.data_setitem((np.full(4, 3), ys[:4], xs[:4]), np.full(4, 9, np.int32))  # label 9 is not tracked
    layer.data_setitem((np.array([4]), np.array([12]), np.array([20])), 0)  # one pixel erased from object 1

    edits = writer.edited_frames([1, 2])
    assert sorted(edits) == [1, 2, 4]
    assert list(edits[1]) == [1]
    assert np.array_equal(edits[1][1], np.asarray(layer.data[1]) == 1)
    assert edits[1][1].sum() > (two_cells(1) == 1).sum()
    assert list(edits[2]) == [2]
    assert edits[2][2].shape == (H, W) and edits[2][2].dtype == bool and not edits[2][2].any()
    assert list(edits[4]) == [1] and not edits[4][1][12, 20]
    assert writer.edited_frames([2]).keys() == {2}  # asking for one object reports only its corrections
    assert writer.edited_frames([1, 2]).keys() == {1, 2, 4}  # reported again until synced

    writer.mark_synced(1)
    writer.write_frame(2, [1, 2], two_cells(2))
    assert writer.edited_frames([1, 2]).keys() == {4}
    assert writer.edited_frames([1, 2], frames=[0, 4]).keys() == {4}


def test_prompts_on_unwritten_frames_and_before_the_writer(viewer_layer):
    _, layer = viewer_layer
    layer.data[3] = disc((20, 20), 4, 5)  # painted before the writer existed
    layer.data[4, 0:5, 0:5] = 9  # another label
    writer = LabelsWriter(layer)
    layer.brush_size = 3
    layer.paint((1, 10, 10), 6)  # a prompt on a frame the engine never wrote

    edits = writer.edited_frames([5, 6])
    assert sorted(edits) == [1, 3]
    assert list(edits[1]) == [6] and np.array_equal(edits[1][6], np.asarray(layer.data[1]) == 6)
    assert list(edits[3]) == [5] and edits[3][5].sum() == (disc((20, 20), 4, 5) != 0).sum()
    assert writer.edited_frames([7]) == {}

    writer.write_frame(3, [5, 6], disc((20, 21), 4, 5))
    writer.write_frame(1, [5, 6], disc((10, 10), 2, 6))
    assert writer.edited_frames([5, 6]) == {}


def test_undo_and_redo_of_user_edits_and_strict_comparison(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    writer.write_frame(0, [1, 2], two_cells(0))
    layer.brush_size = 3
    layer.paint((0, 30, 10), 2)
    assert writer.edited_frames([1, 2]).keys() == {0}
    layer.undo()  # the user's stroke undone: the frame equals the engine's write again
    assert writer.edited_frames([1, 2]) == {}
    layer.redo()
    assert writer.edited_frames([1, 2]).keys() == {0}
    layer.undo()
    layer.undo()  # the engine's write undone: not reported, except by the strict per-frame comparison
    assert writer.edited_frames([1, 2]) == {}
    strict = writer.edited_frames([1, 2], frames=[0, 1])
    assert strict.keys() == {0}
    assert sorted(strict[0]) == [1, 2] and not strict[0][1].any() and not strict[0][2].any()


def test_direct_data_assignment_is_seen_only_when_frames_are_given(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    writer.write_frame(0, [1], disc((10, 10), 3, 1))
    layer.data[0, 30:33, 30:33] = 1  # no paint event
    assert writer.edited_frames([1]) == {}
    edits = writer.edited_frames([1], frames=range(T))
    assert edits.keys() == {0} and edits[0][1][31, 31] and edits[0][1][10, 10]


def test_painting_over_a_tracked_object_and_3d_brush(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    for t in range(T):
        writer.write_frame(t, [1, 2], two_cells(t))
    layer.brush_size = 3
    layer.paint((0, 30, 30), 9)  # an untracked label painted over object 2: a correction of object 2
    edits = writer.edited_frames([1, 2])
    assert edits.keys() == {0} and list(edits[0]) == [2]
    assert np.array_equal(edits[0][2], np.asarray(layer.data[0]) == 2)
    assert edits[0][2].sum() < (two_cells(0) == 2).sum()

    layer.n_edit_dimensions = 3  # one brush stroke across frames 1..3
    layer.paint((2, 5, 35), 1)
    edits = writer.edited_frames([1, 2])
    assert edits.keys() == {0, 1, 2, 3}
    for t in (1, 2, 3):
        assert list(edits[t]) == [1] and edits[t][1][5, 35]
    layer.undo()
    assert writer.edited_frames([1, 2]).keys() == {0}


def test_replaced_data_is_rescanned_and_close_stops_listening(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    writer.write_frame(0, [1], disc((10, 10), 3, 1))
    assert writer.edited_frames([1]) == {}
    replaced = np.zeros((T, H, W), dtype=np.int32)
    replaced[0] = disc((10, 10), 3, 1)
    replaced[3] = disc((20, 20), 3, 1)
    layer.data = replaced  # a session loaded by hand, say: frame 3 now holds object 1 the engine did not write
    assert writer.edited_frames([1]).keys() == {3}

    writer.close()
    layer.brush_size = 3
    layer.paint((1, 30, 30), 1)
    assert writer.edited_frames([1]).keys() == {3}  # the stroke on frame 1 was not seen
    assert writer.edited_frames([1], frames=[1]).keys() == {1}


def test_edited_ids_looks_at_one_frame_only(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    for t in range(T):
        writer.write_frame(t, [1, 2], two_cells(t))
    reads = []
    read_frame = writer.read_frame
    writer.read_frame = lambda t: reads.append(t) or read_frame(t)
    assert writer.edited_ids(3, [1, 2]) == set() and reads == []  # nothing touched frame 3: nothing is read

    ys, xs = np.nonzero(disc((20, 20), 2, 1))
    layer.data_setitem((np.full(ys.size, 3), ys, xs), np.ones(ys.size, np.int32))  # brush-like: object 1 grows
    assert writer.edited_ids(3, [1, 2]) == {1}
    assert writer.edited_ids(3, [2]) == set()
    assert writer.edited_ids(2, [1, 2]) == set()
    assert set(reads) == {3}  # only the asked frame was read
    assert writer.edited_ids(3, [1, 2]) == set(writer.edited_frames([1, 2])[3])
    writer.write_frame(3, [1, 2], two_cells(3))  # the engine's write replaces the edit
    assert writer.edited_ids(3, [1, 2]) == set()

    layer.fill((3, 30, 30), 0)  # napari fill: object 2 erased on frame 3
    assert writer.edited_ids(3, [1, 2]) == {2} and writer.edited_ids(4, [1, 2]) == set()
    writer.mark_synced(3)
    assert writer.edited_ids(3, [1, 2]) == set()

    layer.brush_size = 3
    layer.paint((3, 12, 30), 1)  # napari brush: object 1 painted on frame 3
    assert writer.edited_ids(3, [1, 2]) == {1}
    layer.undo()  # an undone edit is not reported, as by edited_frames
    assert writer.edited_ids(3, [1, 2]) == set() and writer.edited_frames([1, 2]) == {}
    layer.redo()
    assert writer.edited_ids(3, [1, 2]) == {1} and writer.edited_frames([1, 2]).keys() == {3}
    assert writer.edited_ids(3, []) == set()


def test_edited_ids_of_unknown_content_and_other_planes(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.zeros((T, 2, H, W), dtype=np.int32)
    data[3, 1] = disc((20, 20), 4, 5)  # painted before the writer existed, in the tracked plane
    data[2, 0] = disc((20, 20), 4, 5)  # and in the other Z plane
    layer = viewer.add_labels(data)
    writer = LabelsWriter(layer, frame_axis=0, fixed_index={1: 1})
    assert writer.edited_ids(3, [5, 6]) == {5}
    assert writer.edited_ids(2, [5, 6]) == set() and writer.edited_ids(0, [5]) == set()
    viewer.dims.set_current_step(1, 0)
    layer.brush_size = 3
    layer.paint((1, 0, 10, 10), 6)  # another Z plane: not an edit of the tracked plane
    assert writer.edited_ids(1, [5, 6]) == set()
    assert writer.edited_ids(3, [5, 6]) == {5}  # reported until synced
    writer.mark_synced(3, [5])
    assert writer.edited_ids(3, [5, 6]) == set()
    for t in range(T):
        assert writer.edited_ids(t, [5, 6]) == set(writer.edited_frames([5, 6]).get(t, {}))


def test_an_object_painted_over_stays_edited_when_only_the_painted_one_is_written(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    writer.write_frame(1, [1, 2], two_cells(1))
    over = np.nonzero(two_cells(1) == 2)
    layer.data_setitem((np.full(over[0].size, 1), over[0], over[1]), 1)  # object 1 painted over all of object 2
    assert writer.edited_ids(1, [1, 2]) == {1, 2}
    painted = np.asarray(layer.data[1]).copy()
    writer.write_frame(1, [1], np.where(painted == 1, 1, 0))  # the engine takes object 1 as painted, only it
    assert writer.edited_ids(1, [1]) == set()
    assert writer.edited_ids(1, [2]) == {2}  # object 2's erasure is still the user's, not yet given to the model
    assert list(writer.edited_frames([2])[1]) == [2] and not writer.edited_frames([2])[1][2].any()
    writer.write_frame(1, [2], np.zeros((H, W), np.int32))  # the engine writes object 2 (absent)
    assert writer.edited_ids(1, [1, 2]) == set()
