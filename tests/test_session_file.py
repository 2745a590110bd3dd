"""Saving and re-opening sessions, starting from existing labels, and the session's label stack."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from lazy_frames import LazyFrames
from session_support import cells_movie, small_model

from napari_sam2 import (
    SessionFileError,
    TrackingSession,
    labels_from_logits,
    load_session,
    save_session,
    tracks_from_labels,
    write_label_tiff,
)
from napari_sam2.engine import session as session_module
from napari_sam2.engine.session_file import FORMAT_VERSION, decode_mask_rle, encode_mask_rle


@pytest.fixture(scope="module")
def model():
    return small_model()


def disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def prompted_session(model, movie) -> TrackingSession:
    """Three objects with every prompt kind: clicks (added in two steps), a box with a click, a mask."""
    session = TrackingSession(model, movie, contrast_limits=(250, 2500), fill_hole_area=4)
    session.add_points(0, 1, [[30.5, 25.25]], [1])
    session.add_points(0, 1, [[10, 70]], [0], clear_old_points=False)
    session.add_points(3, 1, [[39, 31]], [1])
    session.add_box(1, 7, (50, 40, 80, 70), points=[[60, 50]], labels=[1])
    session.add_mask(2, 3, disc(movie.shape[1:], (70, 20), 9))
    return session


def test_saved_session_reopens_with_identical_prompts_and_results(model, tmp_path):
    movie = cells_movie(6)
    original = prompted_session(model, movie)
    path = save_session(original, tmp_path / "cells.session.json")

    document = json.loads(path.read_text())  # plain, human-readable JSON
    assert document["format"] == "napari-sam2 session" and document["version"] == 1  # no lineage: the format older versions read
    assert document["movie"]["shape"] == [6, 96, 80]
    assert document["model"]["config"] == "sam2.1_hiera_t"
    assert [o["obj_id"] for o in document["objects"]] == [1, 7, 3]
    first = document["objects"][0]["prompts"][0]
    assert first == {"frame": 0, "type": "points", "points": [[30.5, 25.25], [10.0, 70.0]], "labels": [1, 0],
                     # the first click's result fed the second one: both are kept, in order
                     "earlier_steps": [{"type": "points", "points": [[30.5, 25.25]], "labels": [1]}]}
    assert document["objects"][1]["prompts"][0]["box"] == [50.0, 40.0, 80.0, 70.0]
    assert document["settings"]["contrast_limits"] == [250.0, 2500.0]
    assert "[30.5, 25.25]" in path.read_text()  # a point is one line, not four

    frames = LazyFrames(movie)
    reopened = load_session(path, frames, model)
    assert reopened.obj_ids == [1, 7, 3]
    assert reopened.fill_hole_area == 4 and reopened.source.mapping.low == 250
    for obj_id in original.obj_ids:
        saved, loaded = original.prompts(obj_id), reopened.prompts(obj_id)
        assert saved.keys() == loaded.keys()
        for frame in saved:
            for field in ("points", "labels", "box", "mask"):
                np.testing.assert_array_equal(getattr(saved[frame], field), getattr(loaded[frame], field))
    for frame in range(4):  # prompted frames show the same masks before any propagation
        np.testing.assert_array_equal(original.frame_logits(frame)[1], reopened.frame_logits(frame)[1])
    tracked = {t: logits for t, _, logits in original.propagate()}
    for t, _, logits in reopened.propagate():
        np.testing.assert_array_equal(logits, tracked[t])


def test_load_refuses_another_movie_shape_and_warns_on_another_model(model, tmp_path):
    movie = cells_movie(4)
    path = save_session(prompted_session(model, movie), tmp_path / "s.json")
    with pytest.raises(SessionFileError, match=r"saved for a movie of shape \(4, 96, 80\).*\(5, 96, 80\)"):
        load_session(path, cells_movie(5), model)
    other = small_model(image_size=96)
    with pytest.warns(UserWarning, match="image size 128.*image size 96"):
        load_session(path, movie, other)


def test_correction_on_a_tracked_frame_is_flagged_and_warned_about(model, tmp_path):
    movie = cells_movie(4)
    session = TrackingSession(model, movie)
    session.add_points(0, 1, [[30, 25]], [1])
    list(session.propagate())
    session.add_points(2, 1, [[36, 29]], [0])  # a correction of the tracked mask on frame 2
    document = json.loads(save_session(session, tmp_path / "s.json").read_text())
    entries = {e["frame"]: e for e in document["objects"][0]["prompts"]}
    assert entries[2].get("corrects_tracked_result") is True and "corrects_tracked_result" not in entries[0]
    with pytest.warns(UserWarning, match="object 1 frame 2 were made on tracked results"):
        reopened = load_session(tmp_path / "s.json", movie, model)
    assert reopened.prompted_frames(1) == [0, 2]


def test_load_overrides_and_bad_files(model, tmp_path):
    movie = cells_movie(4)
    path = save_session(prompted_session(model, movie), tmp_path / "s.json")
    reopened = load_session(path, movie, model, contrast_limits=(0, 4000), fill_hole_area=0)
    assert (reopened.source.mapping.low, reopened.source.mapping.high) == (0, 4000)
    assert reopened.fill_hole_area == 0

    with pytest.raises(SessionFileError, match="does not exist"):
        load_session(tmp_path / "missing.json", movie, model)
    (tmp_path / "garbage.json").write_bytes(b"\x00\x01 not json")
    with pytest.raises(SessionFileError, match="not a napari-sam2 session file"):
        load_session(tmp_path / "garbage.json", movie, model)
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(SessionFileError, match="not a napari-sam2 session file"):
        load_session(tmp_path / "other.json", movie, model)
    newer = json.loads(path.read_text())
    newer["version"] = 99
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(SessionFileError, match="version 99.*Upgrade"):
        load_session(tmp_path / "newer.json", movie, model)
    broken = json.loads(path.read_text())
    broken["objects"][2]["prompts"][0]["mask_rle"] = [5, 5]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(SessionFileError, match="does not match the frame shape"):
        load_session(tmp_path / "broken.json", movie, model)


def test_save_replaces_the_file_atomically(model, tmp_path):
    movie = cells_movie(3)
    session = TrackingSession(model, movie)
    session.add_points(0, 1, [[30, 25]], [1])
    path = save_session(session, tmp_path / "s.json")
    session.add_points(1, 2, [[40, 40]], [1])
    save_session(session, path)
    assert [o["obj_id"] for o in json.loads(path.read_text())["objects"]] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]  # no temporary file left behind
    (tmp_path / "plain.txt").write_text("")  # the session file gets the permissions any new file gets
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


@pytest.mark.parametrize("mask", [
    np.zeros((5, 7), bool), np.ones((5, 7), bool), disc((9, 11), (4, 5), 3), disc((9, 11), (0, 0), 2),
    np.random.default_rng(0).random((16, 12)) > 0.5,
])
def test_mask_run_length_round_trip(mask):
    runs = encode_mask_rle(mask)
    assert sum(runs) == mask.size
    np.testing.assert_array_equal(decode_mask_rle(runs, mask.shape), mask)


def test_existing_labels_become_mask_prompts(model):
    movie = cells_movie(5)
    labels = np.zeros(movie.shape, np.uint16)
    labels[0][disc(movie.shape[1:], (30, 25), 8)] = 4
    labels[0][disc(movie.shape[1:], (70, 60), 6)] = 9
    labels[3][disc(movie.shape[1:], (39, 31), 8)] = 4
    session = TrackingSession(model, movie)
    assert session.add_labels(labels, frames=[0, 3]) == [4, 9]
    assert session.obj_ids == [4, 9]
    assert session.prompted_frames(4) == [0, 3] and session.prompted_frames(9) == [0]
    np.testing.assert_array_equal(session.prompts(4)[3].mask, labels[3] == 4)

    only = TrackingSession(model, movie)
    assert only.add_labels(labels[0], frames=0, obj_ids=[9]) == [9]  # a single (Y, X) label image
    reference = TrackingSession(model, movie)
    reference.add_mask(0, 9, labels[0] == 9)
    np.testing.assert_array_equal(only.frame_logits(0)[1], reference.frame_logits(0)[1])


def test_add_labels_checks_everything_before_changing_the_session(model):
    movie = cells_movie(4)
    session = TrackingSession(model, movie)
    session.add_points(0, 1, [[30, 25]], [1])
    before = session.frame_logits(0)[1].copy()
    good = np.zeros(movie.shape, np.int32)
    good[1, 5:10, 5:10] = 2
    bad = good.copy()
    bad[2, 0, 0] = -1
    with pytest.raises(ValueError, match="non-negative integers.*frame 2"):
        session.add_labels(bad, frames=[1, 2])
    with pytest.raises(ValueError, match=r"labels must be \(Y, X\)"):
        session.add_labels(np.zeros((4, 10, 10), np.uint8), frames=[0])
    with pytest.raises(ValueError, match="belongs to one frame"):
        session.add_labels(good[1], frames=[1, 2])
    with pytest.raises(ValueError, match="non-negative integers"):
        session.add_labels(good.astype(np.float32), frames=[1])
    assert session.obj_ids == [1] and session.prompted_frames(1) == [0]
    np.testing.assert_array_equal(session.frame_logits(0)[1], before)


def test_label_stack_is_lazy_and_matches_the_tracked_labels(model, tmp_path):
    import tifffile

    movie = cells_movie(5)
    session = TrackingSession(model, movie)
    session.add_points(0, 2, [[30, 25]], [1])
    session.add_points(0, 70000, [[70, 60]], [1])
    assert session.frames_to_visit(None, "forward", 2) == [0, 1, 2]
    assert session.frames_to_visit(3, "both") == [3, 4, 2, 1, 0]
    tracked = {t: labels_from_logits(ids, logits) for t, ids, logits in session.propagate(max_frames=2)}
    stack = session.label_stack()
    assert stack.shape == (5, 96, 80) and stack.dtype == np.uint32 and stack.max_label == 70000
    for t in range(3):
        np.testing.assert_array_equal(stack[t], tracked[t])
    assert not stack[4].any()  # never tracked: background
    write_label_tiff(tmp_path / "labels.tif", stack)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), np.asarray(stack))
    tracks = tracks_from_labels(stack)
    assert set(tracks[:, 0]) <= {2, 70000} and set(tracks[:, 1]) <= {0, 1, 2}


def test_session_files_are_a_layer_above_the_session():
    """session.py knows nothing of files (no import of session_file, no save / load methods)."""
    tree = ast.parse(Path(session_module.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any("session_file" in (name or "") for name in imported)
    assert not hasattr(TrackingSession, "save") and not hasattr(TrackingSession, "load")
