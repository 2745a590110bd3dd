"""napari_sam2.evaluate: DET, SEG, TRA and division scores through traccuracy, on CTC folders and GEFF files.
Label stacks are (T, Y, X), coordinates (row, col) = (y, x)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import tifffile
from ctc_metrics import evaluate_sequence
from lineage_support import LINEAGE, dividing_stack, write_lineage_gt
from scipy import ndimage

from napari_sam2.evaluate import METRICS, EvaluationError, evaluate, seg_score
from napari_sam2.exports import write_ctc
from napari_sam2.geff_files import SEGMENTATION_PATH, write_geff
from napari_sam2.sample_data import division_frame, synthetic_cells_movie

PERFECT = dict.fromkeys(METRICS, 1.0)


@pytest.fixture(scope="module")
def movie_truth():
    """The synthetic time-lapse's ground truth: cell 3 divides into 8 and 9 at division_frame(T)."""
    _, truth = synthetic_cells_movie(num_frames=12, size=96)
    split = division_frame(12)
    assert 3 in truth[split - 1] and 3 not in truth[split] and {8, 9} <= set(np.unique(truth[split]).tolist())
    return truth


def test_synthetic_ground_truth_scores_perfect_against_itself(tmp_path, movie_truth):
    write_ctc(tmp_path / "01_RES", movie_truth, parents={8: 3, 9: 3})
    write_lineage_gt(tmp_path / "01_GT", movie_truth, {8: 3, 9: 3})  # independent writer
    assert evaluate(tmp_path / "01_RES", tmp_path / "01_GT") == PERFECT
    write_geff(tmp_path / "run.geff", movie_truth, {8: 3, 9: 3})
    assert evaluate(tmp_path / "run.geff", tmp_path / "01_GT" / "TRA") == PERFECT
    assert evaluate(tmp_path / "01_RES", tmp_path / "run.geff") == PERFECT


@pytest.mark.parametrize("wrong", [{8: 4, 9: 3}, {8: 3}, {}])
def test_a_wrong_link_lowers_tra_and_division_f1(tmp_path, wrong):
    stack = dividing_stack()
    write_lineage_gt(tmp_path / "gt", stack, LINEAGE)
    write_ctc(tmp_path / "res", stack, parents=wrong)
    scores = evaluate(tmp_path / "res", tmp_path / "gt")
    assert scores["DET"] == scores["SEG"] == 1.0
    assert scores["TRA"] < 1.0
    assert scores["division_f1"] < 1.0 and scores["division_recall"] < 1.0
    write_geff(tmp_path / "res.geff", stack, wrong)
    assert evaluate(tmp_path / "res.geff", tmp_path / "gt") == scores


def test_tra_det_and_seg_agree_with_py_ctcmetrics(tmp_path):
    stack = dividing_stack()
    result = np.stack([sum((ndimage.binary_erosion(f == i) * i).astype(f.dtype) for i in np.unique(f) if i)
                       for f in stack])
    result[7:][result[7:] == 1] = 0  # a lost cell
    write_lineage_gt(tmp_path / "gt", stack, LINEAGE)
    write_ctc(tmp_path / "res", result, parents=LINEAGE)
    ours = evaluate(tmp_path / "res", tmp_path / "gt")
    theirs = evaluate_sequence(res=str(tmp_path / "res"), gt=str(tmp_path / "gt"), metrics=["DET", "SEG", "TRA"],
                               threads=1)
    for metric in ("DET", "SEG", "TRA"):
        assert ours[metric] < 1.0
        assert ours[metric] == pytest.approx(theirs[metric], abs=1e-6), metric
    assert ours["division_f1"] == 1.0


def test_geff_with_a_separate_label_stack(tmp_path):
    stack = dividing_stack()
    write_geff(tmp_path / "gt.geff", stack, LINEAGE)
    shutil.rmtree(tmp_path / "gt.geff" / SEGMENTATION_PATH)
    write_ctc(tmp_path / "res", stack, parents=LINEAGE)
    with pytest.raises(EvaluationError, match="stores no label stack"):
        evaluate(tmp_path / "res", tmp_path / "gt.geff")
    tifffile.imwrite(tmp_path / "gt_labels.tif", stack)
    assert evaluate(tmp_path / "res", tmp_path / "gt.geff", truth_labels=tmp_path / "gt_labels.tif") == PERFECT
    np.save(tmp_path / "gt_labels.npy", stack)
    assert evaluate(tmp_path / "res", tmp_path / "gt.geff", truth_labels=tmp_path / "gt_labels.npy") == PERFECT
    assert evaluate(tmp_path / "res", tmp_path / "gt.geff", truth_labels=stack) == PERFECT


def test_ground_truth_that_starts_late(tmp_path):
    stack = dividing_stack()
    stack[:2] = 0  # nothing on the first two frames
    write_lineage_gt(tmp_path / "gt", stack, LINEAGE)
    write_ctc(tmp_path / "res", stack, parents=LINEAGE)
    assert evaluate(tmp_path / "res", tmp_path / "gt") == PERFECT


def test_no_divisions_anywhere_gives_nan_division_scores(tmp_path):
    stack = dividing_stack()
    stack[stack == 9] = 0
    write_ctc(tmp_path / "res", stack)
    scores = evaluate(tmp_path / "res", tmp_path / "res")
    assert scores["TRA"] == 1.0
    assert all(math.isnan(scores[k]) for k in ("division_precision", "division_recall", "division_f1"))


def test_bad_inputs_are_one_line_errors(tmp_path):
    stack = dividing_stack()
    write_ctc(tmp_path / "res", stack)
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.txt").write_text("x")
    write_ctc(tmp_path / "small", stack[:, :32, :32])
    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "plain", "neither a GEFF nor a CTC folder"),
        (tmp_path / "file.txt", "is not a folder"),
        (tmp_path / "small", r"shape \(10, 32, 32\) but the ground truth's has \(10, 64, 64\)"),
    ]
    for result, message in cases:
        with pytest.raises(EvaluationError, match=message) as info:
            evaluate(result, tmp_path / "res")
        assert "\n" not in str(info.value)
    with pytest.raises(EvaluationError, match="CTC folder, which has its own masks"):
        evaluate(tmp_path / "res", tmp_path / "res", result_labels=stack)


def test_seg_score_skips_unannotated_frames():
    truth = np.zeros((3, 8, 8), np.int64)
    truth[0, :4, :4] = 1
    truth[1] = -1  # not annotated
    truth[2, 4:, 4:] = 2
    result = np.zeros_like(truth)
    result[0, :4, :2] = 5  # half of the object: not more than half, so no match
    result[2, 4:, 4:] = 7
    result[2, 3, 4:] = 7  # IoU 16 / 20
    assert seg_score(truth, result) == pytest.approx((0 + 0.8) / 2)
    result[0, :4, :3] = 5  # 12 of 16 pixels covered: IoU 0.75
    assert seg_score(truth, result) == pytest.approx((0.75 + 0.8) / 2)
    assert math.isnan(seg_score(np.zeros((2, 4, 4)), np.zeros((2, 4, 4))))
