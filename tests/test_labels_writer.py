"""LabelsWriter: scoped writes into a real napari Labels layer, undo/redo, clearing an object, next_free_label.

Arrays are (T, Y, X) or (T, Z, Y, X); pixel coordinates are (row, col) = (y, x). The detection of the user's
corrections is tested in test_labels_writer_edits.py.
"""

import numpy as np
import pytest
from labels_support import H, T, W, disc, two_cells, viewer_layer  # noqa: F401 - viewer_layer is a fixture
from napari.layers import Labels

from napari_sam2.plugin.label_ids import isin_ids
from napari_sam2.plugin.packed_planes import grid_nonzero, mask_grid, pack_grid, take_grid, unpack_plane
from napari_sam2.plugin.labels_writer import LabelsWriter, next_free_label


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
    assert per_frame < 8_000, per_frame  # about 1.8 kB, against 16 MiB for the int32 plane itself
    assert np.array_equal(writer.recorded_frame(0), cells)
    assert writer.edited_frames(range(1, 6)) == {}


def test_clear_object_empties_only_the_tracked_plane_in_one_undo_step(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.zeros((3, 4, H, W), dtype=np.int32)
    data[:, 0] = disc((10, 10), 3, 1)  # the same id in another Z plane: not tracked, must stay
    layer = viewer.add_labels(data)
    writer = LabelsWriter(layer, frame_axis=0, fixed_index={1: 2})
    writer.write_frame(0, [1, 2], two_cells(0))
    writer.write_frame(2, [1, 2], two_cells(2))
    viewer.dims.set_current_step(1, 2)
    layer.brush_size = 3
    layer.paint((1, 2, 20, 20), 1)  # the user's object 1 on frame 1
    before = np.array(layer.data)
    writing = []
    layer.events.paint.connect(lambda event: writing.append(writer.is_writing))

    assert writer.clear_object(1) == [0, 1, 2]
    after = np.array(layer.data)
    expected = before.copy()
    expected[:, 2][expected[:, 2] == 1] = 0
    assert np.array_equal(after, expected)
    assert np.array_equal(after[:, 0], before[:, 0]) and np.array_equal(after[:, 1], before[:, 1])
    assert writing == [True]  # one paint event (one undo step), seen as the writer's own write
    assert writer.tracked_ids == {2}  # forgotten
    assert np.array_equal(writer.recorded_frame(0), np.where(two_cells(0) == 2, 2, 0))
    assert writer.edited_frames([1, 2]) == {}
    assert writer.clear_object(1) == []  # nothing left: no undo step either

    layer.undo()  # one undo restores object 1 on every frame
    assert np.array_equal(layer.data, before)
    layer.redo()
    assert np.array_equal(layer.data, after)
    with pytest.raises(ValueError, match=">= 1"):
        writer.clear_object(0)


def test_clear_object_along_z_and_inside_an_undo_group():
    zyx = Labels(np.zeros((4, H, W), dtype=np.uint16))
    writer = LabelsWriter(zyx)  # a (Z, Y, X) volume tracked along Z: every plane is a tracked plane
    zyx.data[1] = disc((10, 10), 3, 7)
    zyx.data[3] = np.maximum(disc((10, 10), 3, 7), disc((30, 30), 3, 8))
    before = np.array(zyx.data)
    with writer.one_undo_step():
        writer.write_frame(0, [7], disc((20, 20), 3, 7))
        assert writer.clear_object(7) == [0, 1, 3]
    assert not (zyx.data == 7).any() and np.array_equal(zyx.data == 8, before == 8)
    zyx.undo()  # the write and the clearing were one step
    assert np.array_equal(zyx.data, before)


def test_writes_and_records_match_the_full_plane_rule():
    rng = np.random.default_rng(0)
    layer = Labels(np.zeros((2, 60, 70), dtype=np.int32))
    writer = LabelsWriter(layer)
    for _ in range(30):
        # Scattered cells of tracked ids 1..4 and of other labels 8, 9 (rows and columns far from contiguous).
        plane = np.zeros((60, 70), dtype=np.int32)
        for label in rng.choice([1, 2, 3, 4, 8, 9], size=5):
            y, x, r = rng.integers(0, 60), rng.integers(0, 70), rng.integers(1, 6)
            plane = np.where(disc((y, x), r, label, shape=(60, 70)) != 0, label, plane)
        if rng.random() < 0.5:
            layer.data[1] = plane  # the user's (or an earlier) content the write must respect
        ids = sorted({int(i) for i in rng.choice([1, 2, 3, 4], size=2)})
        new = np.where(np.isin(plane, ids), plane, 0)[:, ::-1].copy()  # the objects "moved"
        before = np.array(layer.data[1])
        previous_record = writer.recorded_frame(1)
        writable = (before == 0) | np.isin(before, ids)
        changed = writer.write_frame(1, ids, new)
        assert np.array_equal(layer.data[1], np.where(writable, new, before))
        assert changed == int((writable & (before != new)).sum())
        others = np.where(np.isin(previous_record, ids), 0, previous_record)
        assert np.array_equal(writer.recorded_frame(1), np.where(writable & (new != 0), new, others))
        assert not layer.data[0].any()


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_isin_ids_matches_np_isin(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    values = rng.integers(max(info.min, -300), min(info.max, 400), 400, endpoint=True).astype(dtype)
    values = np.concatenate([values, np.array([info.min, info.max, 0, 1], dtype)]).reshape(-1, 4)[:, ::-1]
    for ids in ([1], [1, 2, 3], [5, 6], [127], [1, 3], [250, 251, 252, 253, 254, 255], [255, 256], [300], []):
        ids = np.asarray(ids, dtype=np.int64)
        assert np.array_equal(isin_ids(values, ids), np.isin(values, ids)), ids


def test_grid_records_and_grid_nonzero_match_numpy():
    rng = np.random.default_rng(1)
    for shape, density in [((1, 1), 1.0), ((30, 50), 0.0), ((30, 50), 0.01), ((64, 33), 0.2), ((8, 8), 1.0)]:
        plane = np.where(rng.random(shape) < density, rng.integers(1, 300, shape), 0)
        ys, xs = np.nonzero(plane)
        assert all(np.array_equal(a, b) for a, b in zip(grid_nonzero(plane != 0), (ys, xs)))
        rows, cols = mask_grid(plane != 0)
        packed = pack_grid(shape, rows, cols, take_grid(plane, rows, cols), range(1, 300))
        assert (packed is None) == (ys.size == 0)
        assert np.array_equal(unpack_plane(packed, shape), plane)
