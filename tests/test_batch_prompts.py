"""Every kind of prompt through the batch as through ``napari-sam2 track``: a label image, ``auto`` (segment
all on the start frame) and a session file, whose saved model (name and input size) the batch uses when it is
given none. One in-process worker thread: the same torch threads as the CLI runs compared with."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from batch_support import IMAGE_SIZE, cli_labels, write_movie

from napari_sam2 import TrackingSession, cli, track_many
from napari_sam2.batch_movie import ModelSpec, manifest_path
from napari_sam2.engine.session_file import save_session
from napari_sam2.weights import load_model

pytest.importorskip("distributed")

FRAMES = 3


@pytest.fixture(scope="module")
def plate(tmp_path_factory, tiny_checkpoint):
    """m0 with seed labels (two discs on frame 0) and a session file saved with the checkpoint at IMAGE_SIZE."""
    root = tmp_path_factory.mktemp("plate")
    write_movie(root, "m0", FRAMES, 0)
    yy, xx = np.mgrid[:64, :64]
    seeds = np.zeros((64, 64), np.uint16)
    seeds[(yy - 20) ** 2 + (xx - 18) ** 2 < 20] = 3
    seeds[(yy - 44) ** 2 + (xx - 46) ** 2 < 20] = 7
    tifffile.imwrite(root / "seeds.tif", seeds)
    model = load_model(tiny_checkpoint, device="cpu", image_size=IMAGE_SIZE, verbose=False)
    session = TrackingSession(model, tifffile.imread(root / "m0.tif"))
    session.add_points(0, 5, np.array([[20.0, 18.0]]), np.array([1]))
    save_session(session, root / "m0_session.json")
    return root


def test_label_image_and_auto_rows_track_as_the_command_does(plate, tiny_checkpoint, threads_client, monkeypatch,
                                                             tmp_path):
    spec = ModelSpec(str(tiny_checkpoint), image_size=IMAGE_SIZE, device="cpu")
    rows = [{"movie": plate / "m0.tif", "prompts": plate / "seeds.tif", "out": "seeded.tif"},
            {"movie": plate / "m0.tif", "prompts": "auto", "out": "auto.tif"}]
    summary = track_many(rows, tmp_path / "out", threads_client, model=spec, progress=False)
    seeded = tifffile.imread(tmp_path / "out" / "seeded.tif")
    assert summary[0]["status"] == "done" and set(np.unique(seeded)) == {0, 3, 7}  # the seeds' own ids
    expected = cli_labels([plate / "m0.tif", "--prompts", plate / "seeds.tif", "--model", tiny_checkpoint],
                          tmp_path / "cli_seeded.tif", monkeypatch)
    np.testing.assert_array_equal(seeded, expected)
    # auto: what the command does with segment all's default options on frame 0, labels or its one-line error
    command = ["track", str(plate / "m0.tif"), "--prompts", "auto", "--model", str(tiny_checkpoint), "--out",
               str(tmp_path / "cli_auto.tif"), "--device", "cpu", "--quiet"]
    if cli.main(command) == 0:
        assert summary[1]["status"] == "done" and summary[1]["objects"] >= 1
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "auto.tif"),
                                      tifffile.imread(tmp_path / "cli_auto.tif"))
    else:
        assert summary[1]["status"] == "failed" and "segment all found no objects on frame 0" in summary[1]["error"]


def test_a_session_row_uses_the_session_model_when_the_batch_names_none(plate, tiny_checkpoint, threads_client,
                                                                        monkeypatch, tmp_path):
    rows = [{"movie": plate / "m0.tif", "prompts": plate / "m0_session.json"}]
    summary = track_many(rows, tmp_path / "out", threads_client, device="cpu", progress=False)  # no model=
    assert summary[0]["status"] == "done", summary[0]["error"]
    output = tmp_path / "out" / "m0_labels.tif"
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["model"] == {"name": str(tiny_checkpoint.resolve()), "image_size": IMAGE_SIZE, "device": "cpu"}
    labels = tifffile.imread(output)
    assert set(np.unique(labels)) == {0, 5}  # the session's object id
    expected = cli_labels([plate / "m0.tif", "--prompts", plate / "m0_session.json"], tmp_path / "cli.tif",
                          monkeypatch)  # the command, without --model, also loads the session's model
    np.testing.assert_array_equal(labels, expected)
    again = track_many(rows, tmp_path / "out", threads_client, device="cpu", progress=False)
    assert again[0]["status"] == "skipped"  # the same session model: the same fingerprint


def test_a_session_whose_model_is_not_here_is_refused_before_anything_runs(plate, threads_client, tmp_path):
    saved = json.loads((plate / "m0_session.json").read_text())
    saved["model"]["name"] = str(tmp_path / "gone" / "retrained.pt")
    (tmp_path / "moved.json").write_text(json.dumps(saved))
    rows = [{"movie": plate / "m0.tif", "prompts": tmp_path / "moved.json"}]
    with pytest.raises(ValueError, match=r"row 1: session .*moved\.json was saved with model .*retrained\.pt.*"
                                         r"give the batch a model \(--model\)"):
        track_many(rows, tmp_path / "out", threads_client, progress=False)
    assert not (tmp_path / "out").exists()
