"""GEFF (graph exchange file format) export and import of a tracked label stack and its lineage.

GEFF is the zarr-based graph format that tracking tools share (motile tracker / funtracks, napari
track editors, traccuracy). :func:`write_geff` writes one node per (object, frame) with ``t`` (frame),
``y``, ``x`` (centroid, napari's (row, col) order) and ``seg_id`` (the object's label id in the label
stack), an edge from each node to the object's node on the next frame and from a parent's last node to each
daughter's first node; the label stack itself goes into the store as a related ``labels`` object, so
that a reader can match nodes to pixels. :func:`read_geff` reads it (or another tool's GEFF) back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geff
import networkx as nx
import numpy as np
import zarr
from geff_spec import Axis, GeffMetadata, RelatedObject

from .exports import label_dtype
from .label_tracks import TrackSplitter, assign_parents, frame_centroids, label_frames

__all__ = ["LABEL_PROP", "SEGMENTATION_PATH", "GeffFileError", "GeffTracks", "read_geff", "write_geff"]

LABEL_PROP = "seg_id"  # motile tracker's name for the label id of a node
SEGMENTATION_PATH = "segmentation"  # the label stack, inside the GEFF group
_TRACKLET_PROP, _LINEAGE_PROP = "tracklet_id", "lineage_id"


class GeffFileError(ValueError):
    """A path that is not a readable GEFF, or a GEFF that lacks what napari-sam2 needs (t, y, x)."""


@dataclass(frozen=True)
class GeffTracks:
    """The graph of a GEFF file: nodes (one per object and frame), edges and the lineage.

    ``node_ids``, ``t``, ``yx`` ((N, 2) centroids, (row, col) = (y, x)) and ``seg_ids`` (label id of each
    node, -1 where the file has none) are row-aligned; ``edges`` is (E, 2) node ids (source, target).
    ``parents`` is {daughter label id: parent label id}, from the lineage edges: those leaving a node with two or
    more successors (a division) and, where the file names a tracklet property, those between two tracklets
    (see :func:`read_geff`).
    ``labels`` is the (T, Y, X) label stack stored with the graph, or None.
    """

    node_ids: np.ndarray
    t: np.ndarray
    yx: np.ndarray
    seg_ids: np.ndarray
    edges: np.ndarray
    parents: dict[int, int]
    labels: np.ndarray | None = None


def _graph(labels: Any, parents: Mapping[int, int] | None, link_gaps: bool) -> nx.DiGraph:
    """One node per (object, frame) at its centroid; edges along each object and parent -> daughter."""
    graph = nx.DiGraph()
    splitter = TrackSplitter(1)  # segments only to check the lineage against the label stack
    last_node: dict[int, tuple[int, int]] = {}  # object id -> (node, frame) of its latest appearance
    for t, frame in enumerate(label_frames(labels)):
        ids, centroids = frame_centroids(frame)
        splitter.step(t, ids.tolist())
        for obj, (y, x) in zip(ids.tolist(), centroids.tolist()):
            node = graph.number_of_nodes() + 1  # traccuracy wants positive node ids
            graph.add_node(node, t=t, y=y, x=x, **{LABEL_PROP: obj})
            previous = last_node.get(obj)
            if previous is not None and (previous[1] == t - 1 or link_gaps):
                graph.add_edge(previous[0], node)
            last_node[obj] = node, t
    assign_parents(splitter.tracks, parents)  # refuses unknown ids and parents that do not end in time
    first_node = {}
    for node, obj in sorted(graph.nodes(data=LABEL_PROP)):
        first_node.setdefault(obj, node)
    for child, parent in (parents or {}).items():
        graph.add_edge(last_node[int(parent)][0], first_node[int(child)])
    _add_track_ids(graph)
    return graph


def _add_track_ids(graph: nx.DiGraph) -> None:
    """Tracklet ids (maximal unbranched paths) and lineage ids (connected components), as GEFF defines them.

    Written by hand because geff only validates them; nodes are numbered in time order, so a node's
    predecessor always has its tracklet id already. A tracklet is also one label id (a daughter of a single-
    daughter link starts a tracklet of its own).
    """
    for node in sorted(graph.nodes):
        preds = list(graph.predecessors(node))
        # a new label id is a new tracklet too, so that a one-daughter link reads back as a lineage edge
        continues = (len(preds) == 1 and graph.out_degree(preds[0]) == 1
                     and graph.nodes[preds[0]][LABEL_PROP] == graph.nodes[node][LABEL_PROP])
        graph.nodes[node][_TRACKLET_PROP] = graph.nodes[preds[0]][_TRACKLET_PROP] if continues else node
    for lineage, component in enumerate(sorted(nx.weakly_connected_components(graph), key=min), start=1):
        for node in component:
            graph.nodes[node][_LINEAGE_PROP] = lineage


def _metadata() -> GeffMetadata:
    axes = [Axis(name="t", type="time", unit="frame"), Axis(name="y", type="space", unit="pixel"),
            Axis(name="x", type="space", unit="pixel")]
    with warnings.catch_warnings():  # label_prop is deprecated in the spec, but traccuracy 0.4 reads only it
        warnings.simplefilter("ignore", DeprecationWarning)
        related = RelatedObject(type="labels", path=SEGMENTATION_PATH, node_prop=LABEL_PROP, label_prop=LABEL_PROP)
    return GeffMetadata(directed=True, axes=axes, node_props_metadata={}, edge_props_metadata={},
                        track_node_props={"tracklet": _TRACKLET_PROP, "lineage": _LINEAGE_PROP},
                        related_objects=[related])


def write_geff(
    path: str | os.PathLike,
    labels: Any,
    parents: Mapping[int, int] | None = None,
    *,
    link_gaps: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a (T, Y, X) label stack and its lineage ``{daughter id: parent id}`` as a GEFF zarr folder.

    Nodes: one per object per frame, properties ``t``, ``y``, ``x`` (centroid, (row, col) order), ``seg_id``
    (label id), ``tracklet_id`` and ``lineage_id``. Edges: an object on consecutive frames, and each
    parent's last node -> each daughter's first node; an object that disappears and comes back is linked
    across the gap only with ``link_gaps=True`` (as in :func:`~napari_sam2.ctc_export.write_ctc`, so that
    both exports of a result score the same). The label stack is stored in the folder
    (``segmentation``, a related ``labels`` object keyed by ``seg_id``). The lineage is checked as in
    :func:`~napari_sam2.ctc_export.write_ctc`. Written to a hidden sibling folder and moved into place,
    so a failure leaves ``path`` as it was; an existing ``path`` is kept unless ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    graph = _graph(labels, parents, link_gaps)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-partial-", dir=path.parent))
    try:
        store = staging / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            geff.write(graph, str(store), metadata=_metadata())
        dtype = label_dtype(labels)  # uint16, or uint32 when the ids need it
        seg = zarr.open_array(str(store / SEGMENTATION_PATH), mode="w", shape=tuple(labels.shape),
                              chunks=(1, *labels.shape[1:]), dtype=dtype, zarr_format=2)
        for t, frame in enumerate(label_frames(labels)):
            if frame.size and int(frame.max()) > np.iinfo(dtype).max:
                raise ValueError(f"frame {t} has label {int(frame.max())}, which does not fit in {dtype}")
            seg[t] = frame
        _replace_folder(store, path, staging / f"{path.name}.old")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _replace_folder(new: Path, path: Path, aside: Path) -> None:
    """Move ``new`` to ``path``; an existing ``path`` is moved ``aside`` first and put back if that fails."""
    had_old = path.exists()
    if had_old:
        os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        if had_old:
            os.replace(aside, path)
        raise


def read_geff(path: str | os.PathLike, *, labels: Any | None = None, label_prop: str | None = None) -> GeffTracks:
    """Read a GEFF folder (ours or another tool's): nodes, edges, lineage and the stored label stack.

    Position properties are the GEFF's time axis and its last two space axes (as y, x); the label id
    property is ``label_prop``, else the one the GEFF's ``labels`` related object names, else ``seg_id``.
    ``labels`` (a (T, Y, X) array) overrides the stored label stack. Raises :class:`GeffFileError`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GEFF {path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            metadata = GeffMetadata.read(str(path))
            graph, _ = geff.read(str(path), backend="networkx")
        except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
            raise GeffFileError(f"{path} is not a readable GEFF: {' '.join(str(exc).split())}") from None
    time_key, space_keys = _axis_keys(metadata, path)
    related = [obj for obj in metadata.related_objects or [] if obj.type == "labels"]
    label_key = label_prop or (related[0].node_prop if related and related[0].node_prop else LABEL_PROP)
    nodes = sorted(graph.nodes)
    data = [graph.nodes[n] for n in nodes]
    seg_ids = np.array([int(d.get(label_key, -1)) for d in data], dtype=np.int64)
    if labels is None and related and (path / related[0].path).exists():
        labels = np.asarray(zarr.open_array(str(path / related[0].path), mode="r")[:])
    tracklet_key = (metadata.track_node_props or {}).get("tracklet")
    parents = _lineage(graph, dict(zip(nodes, seg_ids.tolist())), tracklet_key, path)
    return GeffTracks(
        node_ids=np.array(nodes, dtype=np.int64),
        t=np.array([int(d[time_key]) for d in data], dtype=np.int64),
        yx=np.array([[float(d[k]) for k in space_keys] for d in data], dtype=float).reshape(-1, 2),
        seg_ids=seg_ids,
        edges=np.array(sorted(graph.edges), dtype=np.int64).reshape(-1, 2),
        parents=parents,
        labels=None if labels is None else np.asarray(labels),
    )


def _lineage(graph: nx.DiGraph, seg_of: dict[Any, int], tracklet_key: str | None, path: Path) -> dict[int, int]:
    """{daughter label id: parent label id} from the lineage edges of ``graph``: an edge leaving a node with two
    or more successors (a division), or joining two tracklets when the file has ``tracklet_key``. Edges along a
    track are not lineage, even between different label ids (another tool may give every node its own id).
    Edges naming a node without a label id, a daughter with two parents (a merge) or a daughter label reached
    by edges from different parents are left out, with one warning naming them."""
    found: dict[int, set[int]] = {}
    unlabelled = 0
    for u, v in graph.edges:
        across = tracklet_key is not None and graph.nodes[u].get(tracklet_key) != graph.nodes[v].get(tracklet_key)
        if graph.out_degree(u) < 2 and not across:
            continue
        if seg_of[u] < 0 or seg_of[v] < 0:
            unlabelled += 1
            continue
        parents = {seg_of[p] for p in graph.predecessors(v)}
        found.setdefault(seg_of[v], set()).update(parents)
    lineage = {child: next(iter(ps)) for child, ps in found.items() if len(ps) == 1 and child not in ps}
    dropped = sorted(set(found) - set(lineage))
    if dropped or unlabelled:
        warnings.warn(f"GEFF {path}: lineage edges left out: {unlabelled} without a label id, and label(s) "
                      f"{dropped} with more than one parent (merges) or linked to themselves", UserWarning,
                      stacklevel=3)
    return dict(sorted(lineage.items()))


def _axis_keys(metadata: GeffMetadata, path: Path) -> tuple[str, list[str]]:
    axes = metadata.axes or []
    time = [ax.name for ax in axes if ax.type == "time"]
    space = [ax.name for ax in axes if ax.type == "space"]
    if not time or len(space) < 2:
        raise GeffFileError(f"GEFF {path} needs a time axis and two space axes (y, x); it has "
                            f"{[ax.name for ax in axes] or 'no axes'}")
    if len(space) > 2:
        raise GeffFileError(f"GEFF {path} has {len(space)} space axes {space}; napari-sam2 reads 2D (t, y, x) only")
    return time[0], space

