"""Issue 16's scenario end to end, on the plugin's own synthetic time-lapse at its default size (40 frames of
256 x 256, cell 3 divides at frame 20 into 8 and 9): seeded from its hidden ground truth on every frame, a
propagation proposes exactly that division; accepted, the CTC result written from the session scores TRA = 1
and division F1 = 1 against the ground truth through ``evaluate`` (traccuracy), and a missing link lowers both.
Movies are (T, Y, X); coordinates (row, col) = (y, x)."""

from __future__ import annotations

import numpy as np
import pytest
from lineage_support import write_lineage_gt
from session_support import small_model

from napari_sam2 import TrackingSession, write_ctc
from napari_sam2.evaluate import evaluate
from napari_sam2.sample_data import division_frame, synthetic_cells_movie

FRAMES = 40


@pytest.fixture(scope="module")
def accepted():
    """The seeded session after one propagation with divisions="propose", its proposals, and the session after
    accepting the first and propagating again."""
    movie, truth = synthetic_cells_movie()
    assert movie.shape == (FRAMES, 256, 256) and division_frame(FRAMES) == 20
    session = TrackingSession(small_model(), movie)
    session.add_labels(truth, frames=range(FRAMES))
    made = [(out.frame, [(p.frame, p.parent, p.daughters) for p in out.divisions]) for out in session.propagate()]
    proposals = session.division_proposals()
    session.accept_division(proposals[0])
    for _ in session.propagate():
        pass
    return truth, session, made, proposals


def test_the_division_is_proposed_on_its_frame_and_nothing_else(accepted):
    _, _, made, proposals = accepted
    assert [(p.frame, p.parent, p.daughters) for p in proposals] == [(20, 3, (8, 9))]
    assert [(t, found) for t, found in made if found] == [(20, [(20, 3, (8, 9))])]


def test_the_accepted_lineage_scores_perfect_tracking_and_divisions(accepted, tmp_path):
    truth, session, _, _ = accepted
    assert session.lineage() == {8: 3, 9: 3} and session.object_span(3) == (None, 19)
    labels = np.stack([session.label_image(t) for t in range(FRAMES)])
    assert 3 not in labels[20:] and not np.isin(labels[:20], [8, 9]).any()
    write_lineage_gt(tmp_path / "01_GT", truth, {8: 3, 9: 3})
    write_ctc(tmp_path / "01_RES", labels, parents=session.lineage())
    scores = evaluate(tmp_path / "01_RES", tmp_path / "01_GT")
    assert scores["TRA"] == 1.0 and scores["division_f1"] == 1.0 and scores["DET"] == 1.0

    write_ctc(tmp_path / "missing", labels, parents={8: 3})  # daughter 9 not linked to its mother
    wrong = evaluate(tmp_path / "missing", tmp_path / "01_GT")
    assert wrong["TRA"] < 1.0 and wrong["division_f1"] < 1.0
