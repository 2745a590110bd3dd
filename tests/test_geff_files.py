"""GEFF export and import: round trip, geff's own validators, traccuracy's GEFF loader.
Label stacks are (T, Y, X), coordinates (row, col) = (y, x)."""

from __future__ import annotations

import geff
import numpy as np
import pytest
from geff.core_io._base_read import read_to_memory
from geff.validate.data import ValidationConfig
from geff.validate.segmentation import has_seg_ids_at_coords, has_valid_seg_id
from lazy_frames import LazyFrames
from lineage_support import GONE, LINEAGE, SPLIT, T, dividing_stack
from scipy import ndimage
from traccuracy.loaders import load_geff_data

from napari_sam2.exports import ParentsError
from napari_sam2.geff_files import GeffFileError, read_geff, write_geff

ALL_CHECKS = ValidationConfig(graph=True, sphere=True, ellipsoid=True, lineage=True, tracklet=True)


def _appearances(stack: np.ndarray) -> list[tuple[int, int]]:
    return [(t, obj) for t, frame in enumerate(stack) for obj in np.unique(frame[frame > 0]).tolist()]


def test_round_trip_nodes_edges_lineage_and_labels(tmp_path):
    stack = dividing_stack()
    write_geff(tmp_path / "run.geff", stack, LINEAGE)
    back = read_geff(tmp_path / "run.geff")
    assert sorted(zip(back.t.tolist(), back.seg_ids.tolist())) == _appearances(stack)
    for t, obj, (y, x) in zip(back.t, back.seg_ids, back.yx):
        np.testing.assert_allclose((y, x), ndimage.center_of_mass(stack[t] == obj))
    assert back.parents == LINEAGE
    np.testing.assert_array_equal(back.labels, stack)
    node = dict(zip(zip(back.t.tolist(), back.seg_ids.tolist()), back.node_ids.tolist()))
    edges = {tuple(e) for e in back.edges.tolist()}
    assert (node[(SPLIT - 1, 3)], node[(SPLIT, 8)]) in edges and (node[(SPLIT - 1, 3)], node[(SPLIT, 9)]) in edges
    gap_edge = (node[(GONE[0] - 1, 2)], node[(GONE[-1] + 1, 2)])
    assert gap_edge not in edges
    n_segments = len(np.unique(stack[stack > 0])) + 1  # object 2 is two segments
    assert len(edges) == len(back.node_ids) - n_segments + len(LINEAGE)
    write_geff(tmp_path / "linked.geff", stack, LINEAGE, link_gaps=True)
    linked = read_geff(tmp_path / "linked.geff")
    assert {tuple(e) for e in linked.edges.tolist()} == edges | {gap_edge}
    assert linked.parents == LINEAGE


def test_geff_validators_pass(tmp_path):
    stack = dividing_stack()
    path = write_geff(tmp_path / "run.geff", stack, LINEAGE)
    geff.validate_structure(str(path))
    linked = write_geff(tmp_path / "linked.geff", stack, LINEAGE, link_gaps=True)
    read_to_memory(str(linked), data_validation=ALL_CHECKS)
    memory = read_to_memory(str(path), data_validation=ALL_CHECKS)  # raises on bad tracklets / lineages
    assert memory["metadata"].track_node_props == {"tracklet": "tracklet_id", "lineage": "lineage_id"}
    assert has_valid_seg_id(memory, "seg_id") == (True, [])
    props = memory["node_props"]
    coords = np.column_stack([props[k]["values"] for k in ("t", "y", "x")]).round().astype(int)
    assert has_seg_ids_at_coords(stack, coords.tolist(), props["seg_id"]["values"].tolist())[0]
    lineages = dict(zip(props["seg_id"]["values"].tolist(), props["lineage_id"]["values"].tolist()))
    assert lineages[8] == lineages[9] == lineages[3] != lineages[1]
    # the checks do run: daughter 8 given its parent's tracklet id is caught
    graph, metadata = geff.read(str(path))
    daughter = next(n for n, d in graph.nodes(data=True) if d["seg_id"] == 8)
    graph.nodes[daughter]["tracklet_id"] = graph.nodes[next(iter(graph.predecessors(daughter)))]["tracklet_id"]
    geff.write(graph, str(tmp_path / "broken.geff"), metadata=metadata)
    with pytest.raises(ValueError, match="tracklets"):
        read_to_memory(str(tmp_path / "broken.geff"), data_validation=ALL_CHECKS)


def test_traccuracy_reads_our_geff_with_its_labels(tmp_path):
    stack = dividing_stack()
    path = write_geff(tmp_path / "run.geff", stack, LINEAGE)
    graph = load_geff_data(str(path), load_geff_seg=True)
    assert graph.label_key == "seg_id"
    np.testing.assert_array_equal(graph.segmentation, stack)
    assert len(graph.get_divisions()) == 1
    assert graph.graph.number_of_nodes() == len(_appearances(stack))


def test_lazy_stack_without_lineage(tmp_path):
    lazy = LazyFrames(dividing_stack())
    write_geff(tmp_path / "run.geff", lazy)
    back = read_geff(tmp_path / "run.geff")
    assert back.parents == {}
    assert sorted(set(lazy.reads)) == list(range(T))
    np.testing.assert_array_equal(back.labels, dividing_stack())


def test_overwrite_and_refusals_keep_the_old_file(tmp_path):
    stack = dividing_stack()
    path = write_geff(tmp_path / "run.geff", stack, LINEAGE)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_geff(path, stack)
    with pytest.raises(ParentsError, match="cannot be the parent of object 8"):
        write_geff(path, stack, {8: 1}, overwrite=True)
    assert read_geff(path).parents == LINEAGE
    write_geff(path, stack, {8: 3}, overwrite=True)
    assert read_geff(path).parents == {8: 3}
    assert [p.name for p in tmp_path.iterdir()] == ["run.geff"]  # no partial folder left


def test_reading_what_is_not_a_geff(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_geff(tmp_path / "missing.geff")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeffFileError, match="not a readable GEFF"):
        read_geff(tmp_path / "empty")


def test_another_tools_geff_without_labels(tmp_path):
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_node(1, t=0, y=5.0, x=6.0, label=3)
    graph.add_node(2, t=1, y=5.5, x=6.5, label=4)
    graph.add_edge(1, 2)
    geff.write(graph, str(tmp_path / "other.geff"), axis_names=["t", "y", "x"], axis_types=["time", "space", "space"])
    back = read_geff(tmp_path / "other.geff", label_prop="label")
    assert back.labels is None
    assert back.parents == {}  # one label id per node: an edge along a track is no division
    np.testing.assert_allclose(back.yx, [[5.0, 6.0], [5.5, 6.5]])
    assert read_geff(tmp_path / "other.geff").seg_ids.tolist() == [-1, -1]  # no seg_id property
    geff.write(graph, str(tmp_path / "flat.geff"), axis_names=["t", "y"], axis_types=["time", "space"])
    with pytest.raises(GeffFileError, match="two space axes"):
        read_geff(tmp_path / "flat.geff")


def test_another_tools_lineage_comes_from_branching_not_from_label_changes(tmp_path):
    """A GEFF with one label id per node (no tracklet property): only the edges out of a branching node are
    lineage; a merge (two parents) and a node without a label id are left out with a warning."""
    import networkx as nx

    graph = nx.DiGraph()
    for node, (t, label) in enumerate([(0, 10), (1, 11), (2, 12), (2, 13), (3, 14), (3, 15)], start=1):
        graph.add_node(node, t=t, y=float(node), x=0.0, label=label)
    graph.add_edges_from([(1, 2), (2, 3), (2, 4), (3, 5), (4, 5), (4, 6)])  # 2 divides; 5 merges 3 and 4
    graph.add_node(7, t=4, y=1.0, x=1.0)  # no label
    graph.add_edges_from([(5, 7), (6, 7)])
    geff.write(graph, str(tmp_path / "other.geff"), axis_names=["t", "y", "x"], axis_types=["time", "space", "space"])
    with pytest.warns(UserWarning, match=r"lineage edges left out: 0 without a label id, and label\(s\) \[14\]"):
        back = read_geff(tmp_path / "other.geff", label_prop="label")
    assert back.parents == {12: 11, 13: 11, 15: 13}


def test_a_single_daughter_link_survives_the_round_trip(tmp_path):
    stack = np.zeros((4, 8, 8), dtype=np.uint16)
    stack[:2, 1:3, 1:3] = 1
    stack[2:, 1:3, 1:3] = 2  # 2 continues 1 under a new id: a link with one daughter
    stack[:, 5:7, 5:7] = 3  # 3 is one track throughout
    write_geff(tmp_path / "one.geff", stack, {2: 1})
    assert read_geff(tmp_path / "one.geff").parents == {2: 1}
