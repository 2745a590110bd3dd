"""The lineage in session files: links, start frames, rejected and pending proposals survive a save and a load
(format version 2); version 1 files, written before lineages, still load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from session_support import cells_movie, small_model

from napari_sam2 import DivisionProposal, SessionFileError, TrackingSession, load_session, save_session
from napari_sam2.engine.session_file import FORMAT_VERSION

NUM_FRAMES, SHAPE = 6, (96, 80)
YY, XX = np.mgrid[:SHAPE[0], :SHAPE[1]]


def disk(cy: float, cx: float, radius: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= radius**2


@pytest.fixture(scope="module")
def model():
    return small_model()


def curated_session(model) -> TrackingSession:
    """Object 1 divided on frame 3 (daughters 5, 6); 7 linked to 4 (4 ends on frame 1); 8 keeps its start after
    its parent 9 was removed; a rejected pair and two pending proposals (one with parts, one naming objects)."""
    session = TrackingSession(model, cells_movie(NUM_FRAMES), contrast_limits=(0, 4000))
    session.add_points(0, 1, [[30, 25]], [1])
    session.add_points(0, 4, [[70, 60]], [1])
    assert session.divide(1, 3, [disk(39, 27, 6), disk(39, 43, 6)]) == [5, 6]
    session.add_points(2, 7, [[75, 62]], [1])
    session.link(7, 4)
    session.add_points(0, 9, [[10, 10]], [1])
    session.add_points(4, 8, [[12, 12]], [1])
    session.add_points(4, 10, [[14, 30]], [1])
    session.add_points(4, 11, [[20, 30]], [1])
    session.link(8, 9)
    session.remove_object(9)
    pending = (DivisionProposal(4, 7, (disk(75, 55, 4), disk(75, 68, 4)), kind="split"),
               DivisionProposal(5, 5, (disk(14, 30, 3), disk(20, 30, 3)), daughters=(10, 11), kind="cells"))
    state = dataclasses.replace(session.lineage_state(), rejected=((4, 5),), proposals=pending)
    session.restore_lineage(state)
    return session


def same_state(a, b) -> None:
    assert (a.parents, a.starts, a.rejected) == (b.parents, b.starts, b.rejected)
    assert [(p.key, p.kind, p.daughters) for p in a.proposals] == [(p.key, p.kind, p.daughters) for p in b.proposals]
    for p, q in zip(a.proposals, b.proposals, strict=True):
        for part, other in zip(p.parts, q.parts, strict=True):
            np.testing.assert_array_equal(part, other)


def test_lineage_round_trip(model, tmp_path):
    session = curated_session(model)
    assert session.lineage() == {5: 1, 6: 1, 7: 4}
    path = save_session(session, tmp_path / "lineage.session.json")
    document = json.loads(path.read_text())
    assert document["version"] == FORMAT_VERSION == 2
    lineage = document["lineage"]
    assert lineage["parents"] == [[5, 1], [6, 1], [7, 4]]
    assert lineage["starts"] == [[5, 3], [6, 3], [7, 2], [8, 4]]
    assert lineage["rejected"] == [[4, 5]]
    assert [(p["frame"], p["parent"], p["kind"], p["daughters"]) for p in lineage["proposals"]] == [
        (4, 7, "split", None), (5, 5, "cells", [10, 11])]
    assert sum(lineage["proposals"][0]["parts_rle"][0]) == SHAPE[0] * SHAPE[1]  # run lengths of the frame

    reopened = load_session(path, cells_movie(NUM_FRAMES), model)
    same_state(reopened.lineage_state(), session.lineage_state())
    assert reopened.lineage() == {5: 1, 6: 1, 7: 4}
    assert reopened.object_span(1) == (None, 2) and reopened.object_span(4) == (None, 1)
    assert reopened.object_span(8) == (4, None) and reopened.object_span(5) == (3, None)
    proposal = reopened.division_proposals()[0]
    reopened.reject_division(proposal)  # rejected pairs and proposals work on the loaded session as before
    assert [p.key for p in reopened.division_proposals()] == [(5, 5)]
    for _ in reopened.propagate(divisions="off"):  # the loaded spans gate tracking
        pass
    assert not reopened.frame_logits(3, [1])[1].max() > -1024 and reopened.frame_logits(2, [1])[1].max() > -1024


def version_1_document() -> dict:
    """A session file as napari-sam2 wrote it before lineages (format version 1), written out by hand."""
    return {
        "format": "napari-sam2 session",
        "version": 1,
        "axes": "napari order: movie (T, Y, X[, C]); points (row, col) = (y, x); boxes (y0, x0, y1, x1)",
        "model": {"name": "sam2.1_hiera_t", "config": "sam2.1_hiera_t", "image_size": 128},
        "movie": {"shape": [NUM_FRAMES, *SHAPE]},
        "settings": {"contrast_limits": [0.0, 4000.0], "rgb": False, "channel": None, "fill_hole_area": 8},
        "objects": [
            {"obj_id": 1, "prompts": [{"frame": 0, "type": "points", "points": [[30.0, 25.0]], "labels": [1]}]},
            {"obj_id": 3, "prompts": [{"frame": 2, "type": "box", "box": [50.0, 40.0, 80.0, 70.0],
                                       "points": [], "labels": []}]},
        ],
    }


def test_version_1_files_still_load(model, tmp_path):
    path = tmp_path / "old.session.json"
    path.write_text(json.dumps(version_1_document()))
    session = load_session(path, cells_movie(NUM_FRAMES), model)
    assert session.obj_ids == [1, 3] and session.lineage() == {} and session.division_proposals() == []
    assert session.object_span(3) == (None, None)
    np.testing.assert_array_equal(session.prompts(3)[2].box, [50, 40, 80, 70])
    saved = json.loads(save_session(session, tmp_path / "new.session.json").read_text())
    assert saved["version"] == 1 and "lineage" not in saved  # no lineage: older napari-sam2 versions open it
    session.link(3, 1)
    saved = json.loads(save_session(session, tmp_path / "new.session.json").read_text())
    assert saved["version"] == 2 and saved["lineage"]["parents"] == [[3, 1]]


def test_a_lineage_that_does_not_fit_is_refused(model, tmp_path):
    document = version_1_document()
    document["version"] = 2
    document["lineage"] = {"parents": [[3, 2]], "starts": [[3, 2]], "rejected": [], "proposals": []}
    path = tmp_path / "wrong.session.json"
    path.write_text(json.dumps(document))
    with pytest.raises(SessionFileError, match=r"does not fit its objects.*object\(s\) \[2\]"):
        load_session(path, cells_movie(NUM_FRAMES), model)
    document["lineage"] = {"parents": [[3]], "proposals": []}
    path.write_text(json.dumps(document))
    with pytest.raises(SessionFileError, match="lineage in .* is malformed"):
        load_session(path, cells_movie(NUM_FRAMES), model)
    document["lineage"] = {"proposals": [{"frame": 1, "parent": 1, "parts_rle": [[5], [5]]}]}
    path.write_text(json.dumps(document))
    with pytest.raises(SessionFileError, match="does not match the frame shape"):
        load_session(path, cells_movie(NUM_FRAMES), model)


@pytest.mark.parametrize("lineage, message", [
    ({"parents": [[1, 3], [3, 1]], "starts": [[1, 2], [3, 2]]}, "make a cycle"),
    ({"parents": [[3, 3]], "starts": [[3, 2]]}, "its own parent"),
    ({"starts": [[3, 1], [3, 2]]}, "object 3 has two start frames"),
    ({"starts": [[3, 9]]}, "outside the movie's 6 frame"),
    ({"parents": [[3, 1]], "starts": [[3, 1], [1, 4]]}, "start at frame 4 but end at frame 0"),
    ({"parents": [[3, 1]], "starts": [[3, 3]]}, "prompt lies outside .* object 3 starts at frame 3"),
])
def test_a_corrupt_lineage_is_one_line_and_cannot_hang_the_session(model, tmp_path, lineage, message):
    """Hand-edited lineages that no edit makes: refused on load (a cycle used to load and then hang link())."""
    document = version_1_document()
    document["version"] = 2
    document["lineage"] = lineage
    path = tmp_path / "corrupt.session.json"
    path.write_text(json.dumps(document))
    with pytest.raises(SessionFileError, match=f"does not fit its objects: .*{message}"):
        load_session(path, cells_movie(NUM_FRAMES), model)


def test_rejected_splits_round_trip(model, tmp_path):
    session = load_session(_written(tmp_path, version_1_document()), cells_movie(NUM_FRAMES), model)
    split = DivisionProposal(4, 3, (disk(60, 50, 4), disk(70, 60, 4)), kind="split")
    session.reject_division(split)
    again = load_session(save_session(session, tmp_path / "r.session.json"), cells_movie(NUM_FRAMES), model)
    assert again.lineage_state().rejected_splits == ((4, 3),) and again.lineage_state().rejected == ((4, 3),)


def _written(tmp_path, document) -> object:
    path = tmp_path / "doc.session.json"
    path.write_text(json.dumps(document))
    return path
