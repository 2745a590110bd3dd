"""LabelsWriter: scoped writes into a real napari Labels layer, undo/redo, correction detection, next_free_label.

Arrays are (T, Y, X) or (T, Z, Y, X); pixel coordinates are (row, col) = (y, x).
"""

import numpy as np
import pytest
from napari.layers import Labels

from napari_sam2.plugin.labels_writer import LabelsWriter, next_free_label

T, H, W = 5, 40, 40


def disc(center, radius, label, shape=(H, W), dtype=np.int32):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    out = np.zeros(shape, dtype=dtype)
    out[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2] = label
    return out


def two_cells(t):
    """Engine output of frame t: object 1 moving right, object 2 still."""
    return np.maximum(disc((12, 8 + 3 * t), 5, 1), disc((30, 30), 4, 2))


@pytest.fixture
def viewer_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((T, H, W), dtype=np.int32), name="tracks")
    return viewer, layer


def test_write_touches_only_tracked_ids(viewer_layer):
    _, layer = viewer_layer
    layer.data[1, 5:15, 5:12] = 9  # another label, overlapped by object 1's new mask
    layer.data[1, 0, 0] = 3  # another label away from the objects
    before = np.array(layer.data)
    writer = LabelsWriter(layer)
    new = two_cells(1)
    changed = writer.write_frame(1, [1, 2], new)

    after = np.array(layer.data)
    assert np.array_equal(after[1] == 9, before[1] == 9)  # label 9 fully preserved
    assert after[1, 0, 0] == 3
    expected = np.where(before[1] == 0, new, before[1])
    assert np.array_equal(after[1], expected)
    assert changed == int(((before[1] == 0) & (new != 0)).sum())
    for t in (0, 2, 3, 4):
        assert not after[t].any()
    assert writer.write_frame(1, [1, 2], new) == 0  # nothing left to change


def test_moving_object_leaves_zero_but_not_over_other_labels(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    writer.write_frame(0, [1, 2], np.maximum(disc((12, 10), 5, 1), disc((30, 30), 4, 2)))
    # Another label 9 painted over part of object 1, and an untracked label 3 next to it.
    layer.data[0, 10:14, 12:20] = 9
    layer.data[0, 20, 20] = 3
    nine = np.array(layer.data[0] == 9)
    moved = disc((12, 25), 5, 1)  # object 1 moved away, object 2 vanished
    writer.write_frame(0, [1, 2], moved)

    plane = np.array(layer.data[0])
    assert np.array_equal(plane == 9, nine)  # untouched, also where object 1 used to be
    assert plane[20, 20] == 3
    assert not (plane == 2).any()  # tracked id that is not in the new result becomes 0
    old_one = disc((12, 10), 5, 1) != 0
    assert not (plane[old_one & ~nine] != 0).any()  # object 1 left 0 behind
    assert np.array_equal(plane == 1, (moved == 1) & ~nine)


def test_tracked_ids_outside_obj_ids_are_left_alone(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    writer.write_frame(2, [1, 2], two_cells(2))
    # Re-propagating object 1 alone must not remove object 2, and must not overwrite it either.
    writer.write_frame(2, [1], disc((30, 28), 6, 1))
    plane = np.array(layer.data[2])
    assert np.array_equal(plane == 2, two_cells(2) == 2)
    assert np.array_equal(plane == 1, (disc((30, 28), 6, 1) == 1) & (two_cells(2) != 2))
    assert writer.edited_frames([1, 2]) == {}  # the record keeps object 2: no spurious correction


def test_undo_reverts_exactly_one_frame_write_and_redo_reapplies(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    for t in range(3):
        writer.write_frame(t, [1, 2], two_cells(t))
    written = np.array(layer.data)
    layer.undo()
    assert not layer.data[2].any()
    assert np.array_equal(layer.data[:2], written[:2])
    layer.redo()
    assert np.array_equal(layer.data, written)
    # A second write of the same frame is one more step that undoes to the first write.
    writer.write_frame(2, [1, 2], two_cells(4))
    layer.undo()
    assert np.array_equal(layer.data, written)


def test_grouped_writes_are_one_undo_step(viewer_layer, qtbot):
    _, layer = viewer_layer
    layer.data[0, 0:3, 0:3] = 9
    writer = LabelsWriter(layer)
    writer.write_frame(0, [1, 2], two_cells(0))  # one step before the run
    after_first = np.array(layer.data)

    writer.begin_undo_group()
    assert writer.in_undo_group
    for t in range(1, T):
        writer.write_frame(t, [1, 2], two_cells(t))
        qtbot.wait(1)  # the run spans Qt event-loop iterations
    writer.begin_undo_group()  # nested begin/end belong to the same step
    writer.write_frame(0, [1, 2], two_cells(3))
    writer.end_undo_group()
    assert writer.in_undo_group
    writer.end_undo_group()
    assert not writer.in_undo_group
    run = np.array(layer.data)

    layer.undo()
    assert np.array_equal(layer.data, after_first)  # the whole run in one undo
    assert writer.edited_frames([1, 2]) == {}  # undoing the engine's run is not a user correction
    layer.redo()
    assert np.array_equal(layer.data, run)
    layer.undo()
    layer.undo()
    only_nine = np.zeros((T, H, W), dtype=np.int32)
    only_nine[0, 0:3, 0:3] = 9
    assert np.array_equal(layer.data, only_nine)  # back to before the writer

    with pytest.raises(RuntimeError):
        writer.end_undo_group()


def test_one_undo_step_context_manager_commits_also_on_error(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    with pytest.raises(KeyError), writer.one_undo_step():
        writer.write_frame(0, [1, 2], two_cells(0))
        writer.write_frame(1, [1, 2], two_cells(1))
        raise KeyError("engine failed")
    assert layer.data[:2].any()
    layer.undo()
    assert not layer.data.any()
    with writer.one_undo_step():
        pass  # an empty group adds no undo step
    layer.redo()
    assert np.array_equal(layer.data[1], two_cells(1))


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


def test_forget_reset_and_records(viewer_layer):
    _, layer = viewer_layer
    writer = LabelsWriter(layer)
    writer.write_frame(0, [1, 2], two_cells(0))
    writer.write_frame(1, [2], disc((30, 30), 4, 2))
    assert writer.tracked_ids == {1, 2}
    assert writer.written_frames == [0, 1]
    assert np.array_equal(writer.recorded_frame(0), two_cells(0))
    writer.forget(2)
    assert writer.tracked_ids == {1}
    assert writer.written_frames == [0]
    assert np.array_equal(writer.recorded_frame(0), two_cells(0) == 1)
    assert layer.data[1].any()  # the layer is not changed
    writer.reset()
    assert writer.written_frames == [] and writer.record_nbytes() == 0
    # After a reset every frame is unknown again: what is in the layer counts as the user's.
    assert writer.edited_frames([1, 2]).keys() == {0, 1}


def test_tzyx_layer_writes_into_one_plane(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((3, 4, H, W), dtype=np.int32))
    writer = LabelsWriter(layer, frame_axis=0, fixed_index={1: 2})
    assert writer.n_frames == 3 and writer.frame_slice(1) == (1, 2, slice(None), slice(None))
    writer.write_frame(1, [1, 2], two_cells(1))
    data = np.array(layer.data)
    assert np.array_equal(data[1, 2], two_cells(1))
    data[1, 2] = 0
    assert not data.any()

    # Painting the same id in another Z plane is not a correction of the tracked plane.
    viewer.dims.set_current_step(1, 0)
    layer.brush_size = 3
    layer.paint((1, 0, 12, 8), 1)
    assert layer.data[1, 0].any()
    assert writer.edited_frames([1, 2]) == {}
    viewer.dims.set_current_step(1, 2)
    layer.paint((1, 2, 20, 20), 1)
    assert writer.edited_frames([1, 2]).keys() == {1}
    layer.undo()
    layer.undo()
    layer.undo()
    assert not layer.data.any()

    # (Z, Y, X) tracked along Z, and (Y, T, ...) orders with a negative frame axis.
    zyx = Labels(np.zeros((4, H, W), dtype=np.uint16))
    LabelsWriter(zyx).write_frame(3, [7], disc((5, 5), 2, 7))
    assert zyx.data[3, 5, 5] == 7 and not zyx.data[:3].any()
    ztyx = Labels(np.zeros((2, 3, H, W), dtype=np.int32))
    writer = LabelsWriter(ztyx, frame_axis=-3, fixed_index={0: 1})
    writer.write_frame(2, [4], disc((5, 5), 2, 4))
    assert ztyx.data[1, 2, 5, 5] == 4 and (ztyx.data != 0).sum() == (disc((5, 5), 2, 4) != 0).sum()

    with pytest.raises(ValueError, match="missing axes"):
        LabelsWriter(layer)
    with pytest.raises(ValueError, match="out of range"):
        LabelsWriter(layer, fixed_index={1: 4})
    with pytest.raises(ValueError, match="frame_axis"):
        LabelsWriter(layer, frame_axis=2)
    with pytest.raises(ValueError, match="frame axis"):
        LabelsWriter(Labels(np.zeros((H, W), dtype=np.int32)))
    with pytest.raises(IndexError):
        writer.write_frame(3, [4], disc((5, 5), 2, 4))


def test_invalid_writes_raise_before_any_change(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((T, H, W), dtype=np.uint8))
    writer = LabelsWriter(layer)
    big = np.maximum(disc((10, 10), 3, 1), disc((30, 30), 3, 300, dtype=np.int64))
    with pytest.raises(ValueError, match="300.*uint8"):
        writer.write_frame(0, [1, 300], big)
    with pytest.raises(ValueError, match="300.*uint8"):
        writer.write_frame(0, [1, 300], disc((10, 10), 3, 1))  # an id that does not fit, even if absent
    with pytest.raises(ValueError, match="not in obj_ids"):
        writer.write_frame(0, [1], big)
    with pytest.raises(ValueError, match="shape"):
        writer.write_frame(0, [1], np.zeros((H, W + 1), np.int32))
    with pytest.raises(ValueError, match=">= 1"):
        writer.write_frame(0, [0, 1], disc((10, 10), 3, 1))
    assert not layer.data.any()
    assert writer.written_frames == []
    layer.undo()  # no undo step was recorded
    assert not layer.data.any()
    assert writer.write_frame(0, [255], disc((10, 10), 3, 255)) > 0


def test_displayed_slice_shows_the_write(viewer_layer):
    viewer, layer = viewer_layer
    viewer.dims.set_current_step(0, 2)
    writer = LabelsWriter(layer)
    texture_before = np.array(layer._slice.image.view)
    writer.write_frame(2, [1, 300], np.maximum(disc((12, 12), 5, 1), disc((30, 30), 4, 300)))
    view = np.asarray(layer._slice.image.view)  # int32 data: the texture is a separate array, updated by napari
    assert not np.shares_memory(view, layer.data)
    assert np.array_equal(np.asarray(layer._slice.image.raw), layer.data[2])
    expected = layer.colormap._data_to_texture(np.asarray(layer.data[2]))
    assert np.array_equal(view, expected)
    assert not np.array_equal(view, texture_before)
    writer.write_frame(4, [1], disc((5, 5), 2, 1))  # another frame: the displayed slice does not change
    assert np.array_equal(np.asarray(layer._slice.image.view), expected)


def test_next_free_label():
    import dask.array as da

    data = np.zeros((3, H, W), dtype=np.int32)
    assert next_free_label(Labels(data)) == 1
    data[2, 5, 5] = 41
    assert next_free_label(Labels(data)) == 42
    assert next_free_label(data) == 42
    lazy = da.from_array(data, chunks=(1, H, W))
    assert next_free_label(lazy) == 42
    assert next_free_label(Labels(lazy)) == 42


def test_record_stays_small_for_big_frames():
    layer = Labels(np.zeros((2, 2048, 2048), dtype=np.int32))
    writer = LabelsWriter(layer)
    cells = np.zeros((2048, 2048), dtype=np.int32)
    for i, (y, x) in enumerate([(300, 400), (900, 1500), (1200, 700), (1800, 1800), (600, 1000)], start=1):
        cells = np.maximum(cells, disc((y, x), 25 + 5 * i, i, shape=(2048, 2048)))
    writer.write_frame(0, range(1, 6), cells)
    per_frame = writer.record_nbytes()
    assert per_frame < 8_000, per_frame  # about 3.5 kB, against 16 MiB for the int32 plane itself
    assert np.array_equal(writer.recorded_frame(0), cells)
    assert writer.edited_frames(range(1, 6)) == {}


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
