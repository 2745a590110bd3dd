"""A batch refuses, before anything runs, outputs that would replace a row's input or land outside --out."""

from __future__ import annotations

import pytest

from napari_sam2.batch_run import check_outputs
from napari_sam2.batch_sheet import MovieRow


def test_outputs_inside_out_and_apart_from_the_inputs_pass(tmp_path):
    rows = [MovieRow(row=1, movie=tmp_path / "pos1.tif", prompts=tmp_path / "pos1_seeds.tif")]
    check_outputs(rows, tmp_path / "results")


def test_an_output_that_is_a_prompt_file_is_refused(tmp_path):
    rows = [MovieRow(row=1, movie=tmp_path / "pos1.tif", prompts=tmp_path / "pos1_labels.tif")]
    with pytest.raises(ValueError, match=r"row 1: its output .*pos1_labels.tif would replace row 1's input"):
        check_outputs(rows, tmp_path)  # the default output name, pos1_labels.tif, is the seed labels


def test_an_output_folder_holding_an_input_is_refused(tmp_path):
    rows = [MovieRow(row=1, movie=tmp_path / "data" / "pos1.tif", prompts="auto"),
            MovieRow(row=2, movie=tmp_path / "pos2.tif", prompts="auto", out="../data")]
    with pytest.raises(ValueError, match="row 2, column 'out'"):  # outside --out
        check_outputs(rows, tmp_path / "results")
    rows[1] = MovieRow(row=2, movie=tmp_path / "pos2.tif", prompts="auto", out="data")
    with pytest.raises(ValueError, match="would replace row 1's input"):
        check_outputs(rows, tmp_path)
