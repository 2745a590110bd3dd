"""CTC results with parents and the napari Tracks graph, read back by independent readers: py-ctcmetrics
(TRA, branching correctness) and traccuracy's CTC loader. Label stacks are (T, Y, X), (row, col) = (y, x)."""

from __future__ import annotations

import numpy as np
import pytest
from ctc_metrics import evaluate_sequence
from lazy_frames import LazyFrames
from lineage_support import EARLY, GONE, LINEAGE, SPLIT, T, dividing_stack, read_track_file, write_lineage_gt
from scipy import ndimage
from traccuracy.loaders import load_ctc_data

from napari_sam2.exports import ParentsError, lineage_tracks, tracks_from_labels, write_ctc


def _score(res, gt) -> dict:
    return evaluate_sequence(res=str(res), gt=str(gt), metrics=["Valid", "TRA", "BC"], threads=1)


def test_daughters_get_their_parents_last_track(tmp_path):
    tracks = write_ctc(tmp_path / "res", dividing_stack(), parents=LINEAGE)
    # object 2 comes back on frame 5 as track 10 (above the largest id, 9)
    assert read_track_file(tmp_path / "res" / "res_track.txt") == [
        (1, 0, T - 1, 0), (2, 0, GONE[0] - 1, 0), (3, 0, SPLIT - 1, 0), (4, 0, EARLY, 0),
        (10, GONE[-1] + 1, T - 1, 0), (8, SPLIT, T - 1, 3), (9, SPLIT, T - 1, 3),
    ]
    assert {k.label: k.parent for k in tracks if k.parent} == {8: 3, 9: 3}


def test_parent_that_left_and_came_back_is_linked_by_its_last_track(tmp_path):
    stack = dividing_stack()
    stack[stack == 3] = 0
    for t in (0, 1, 3, 4):  # object 5 is on frames 0-1 and 3-4, then divides into 8 and 9
        stack[t, 40:48, 16:24] = 5
    tracks = write_ctc(tmp_path / "res", stack, parents={8: 5, 9: 5}, link_gaps=True)
    by_label = {k.label: k for k in tracks}
    returned = next(k for k in tracks if k.obj_id == 5 and k.begin == 3)
    assert by_label[8].parent == by_label[9].parent == returned.label != 5
    assert returned.parent == 5  # link_gaps bridges the gap of the parent itself
    write_lineage_gt(tmp_path / "gt", stack, {8: 5, 9: 5})
    assert _score(tmp_path / "res", tmp_path / "gt")["Valid"] == 1


def test_py_ctcmetrics_scores_our_lineage_perfect(tmp_path):
    stack = dividing_stack()
    write_lineage_gt(tmp_path / "01_GT", stack, LINEAGE)
    write_ctc(tmp_path / "01_RES", stack, parents=LINEAGE)
    result = _score(tmp_path / "01_RES", tmp_path / "01_GT")
    assert result["Valid"] == 1
    assert result["TRA"] == 1.0
    assert result["BC(0)"] == 1.0


@pytest.mark.parametrize("wrong", [{8: 4, 9: 3}, {8: 3}, {}])
def test_a_wrong_or_missing_link_lowers_tra_and_branching(tmp_path, wrong):
    stack = dividing_stack()
    write_lineage_gt(tmp_path / "gt", stack, LINEAGE)
    write_ctc(tmp_path / "res", stack, parents=wrong)
    result = _score(tmp_path / "res", tmp_path / "gt")
    assert result["Valid"] == 1
    assert result["TRA"] < 1.0
    assert result["BC(0)"] < 1.0


def test_traccuracy_reads_the_division(tmp_path):
    write_ctc(tmp_path / "res", dividing_stack(), parents=LINEAGE)
    graph = load_ctc_data(str(tmp_path / "res"), run_checks=True)
    divisions = graph.get_divisions()
    assert len(divisions) == 1
    (parent,) = divisions
    assert graph.graph.nodes[parent]["t"] == SPLIT - 1
    assert sorted(graph.graph.nodes[c]["t"] for c in graph.graph.successors(parent)) == [SPLIT, SPLIT]


@pytest.mark.parametrize(
    ("parents", "message"),
    [
        ({8: 1}, "object 1 is on frames up to 9, so it cannot be the parent of object 8, which starts on frame 5"),
        ({3: 8}, "cannot be the parent of object 3"),
        ({8: 42}, r"object 42 \(parent in 8: 42\) is not in the label stack"),
        ({42: 3}, r"object 42 \(daughter in 42: 3\) is not in the label stack"),
        ({8: 8}, "object 8 cannot be its own parent"),
        ({8: 3.0}, "integers"),
    ],
)
def test_impossible_parents_are_refused_and_nothing_is_written(tmp_path, parents, message):
    stack = dividing_stack()
    write_ctc(tmp_path / "res", stack, parents=LINEAGE)
    before = {p.name: p.read_bytes() for p in (tmp_path / "res").iterdir()}
    with pytest.raises(ParentsError, match=message) as info:
        write_ctc(tmp_path / "res", stack, parents=parents, overwrite=True)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "res").iterdir()} == before
    with pytest.raises(ParentsError):
        lineage_tracks(stack, parents)


def test_lineage_is_read_once_per_frame_from_a_lazy_stack(tmp_path):
    lazy = LazyFrames(dividing_stack())
    write_ctc(tmp_path / "res", lazy, max_label=9, parents=LINEAGE)
    assert lazy.reads == list(range(T))


# --- napari Tracks graph ---------------------------------------------------------------------------


def test_tracks_graph_matches_the_ctc_segments(tmp_path):
    stack = dividing_stack()
    data, graph = lineage_tracks(stack, LINEAGE)
    tracks = write_ctc(tmp_path / "res", stack, parents=LINEAGE)
    assert graph == {8: [3], 9: [3]}
    assert graph == {k.label: [k.parent] for k in tracks if k.parent}
    assert set(data[:, 0].astype(int)) == {k.label for k in tracks}
    for track in tracks:
        np.testing.assert_array_equal(data[data[:, 0] == track.label, 1], np.arange(track.begin, track.end + 1))
    np.testing.assert_array_equal(data, tracks_from_labels(stack, split_gaps=True))
    order = np.lexsort((data[:, 1], data[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(data)))
    for track_id, t, y, x in data[::5]:  # centroids in (row, col) = (y, x)
        obj = next(k.obj_id for k in tracks if k.label == track_id)
        np.testing.assert_allclose((y, x), ndimage.center_of_mass(stack[int(t)] == obj))


def test_tracks_graph_links_gaps_like_the_ctc_export(tmp_path):
    stack = dividing_stack()
    _, graph = lineage_tracks(stack, LINEAGE, link_gaps=True, max_label=20)
    tracks = write_ctc(tmp_path / "res", stack, parents=LINEAGE, link_gaps=True, max_label=20)
    assert graph == {8: [3], 9: [3], 21: [2]}
    assert graph == {k.label: [k.parent] for k in tracks if k.parent}


def test_tracks_graph_without_lineage_and_in_napari(make_napari_viewer):
    _, graph = lineage_tracks(dividing_stack())
    assert graph == {}
    data, graph = lineage_tracks(dividing_stack(), LINEAGE)
    layer = make_napari_viewer().add_tracks(data, graph=graph)
    assert layer.graph == {8: [3], 9: [3]}
