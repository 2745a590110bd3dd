"""Tests for napari_sam2.prompt_files: click prompts from the CSV napari writes for a saved Points layer."""

import csv

import numpy as np
import pytest
import tifffile

from napari_sam2.prompt_files import ClickPrompt, PromptFileError, check_clicks, read_points_csv, read_seed_labels


def write_like_napari(path, data, properties=None):
    """The CSV napari writes for a Points layer (napari_builtins.io._write.napari_write_points + write_csv).

    The whole table goes through one numpy array: with numeric and boolean features every cell becomes a
    float ("0.0", "3.0", "1.0"); with a string feature every cell becomes a string ("0", "3.0", "True").
    """
    data = np.asarray(data, dtype=np.float64)
    properties = properties or {}
    column_names = [f"axis-{n!s}" for n in range(data.shape[1])]
    if properties:
        column_names += properties.keys()
        prop_table = [np.expand_dims(np.asarray(col), axis=1) for col in properties.values()]
    else:
        prop_table = []
    column_names = ["index", *column_names]
    indices = np.expand_dims(list(range(data.shape[0])), axis=1)
    table = np.concatenate([indices, data, *prop_table], axis=1)
    with open(path, mode="w", newline="") as csvfile:
        writer = csv.writer(csvfile, delimiter=",", quotechar='"', quoting=csv.QUOTE_MINIMAL)
        writer.writerow(column_names)
        for row in table:
            writer.writerow(row)
    return path


def _write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding, newline="")
    return path


def refusal(path) -> str:
    """The message of the PromptFileError that reading the points CSV ``path`` must raise."""
    with pytest.raises(PromptFileError) as info:
        read_points_csv(path)
    return str(info.value)


def _as_tuples(prompts):
    return [(p.frame, p.obj_id, p.points.tolist(), p.labels.tolist()) for p in prompts]


# --------------------------------------------------------------------------- napari's format

def test_napari_csv_with_positive_and_obj_id(tmp_path):
    """Exactly the text napari writes for a layer with boolean `positive` and integer `obj_id` features."""
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,positive,obj_id\r\n"
                  "0.0,3.0,10.5,20.25,1.0,1.0\r\n"
                  "1.0,3.0,11.0,21.0,0.0,1.0\r\n"
                  "2.0,0.0,5.0,6.0,1.0,2.0\r\n"
                  "3.0,3.0,30.0,40.0,1.0,2.0\r\n"
                  "4.0,3.0,12.0,22.0,1.0,1.0\r\n")
    prompts = read_points_csv(path)
    assert all(isinstance(p, ClickPrompt) for p in prompts)
    # grouped by (frame, object) in order of first appearance
    assert [(p.frame, p.obj_id) for p in prompts] == [(3, 1), (0, 2), (3, 2)]
    first = prompts[0]
    assert isinstance(first.frame, int) and isinstance(first.obj_id, int)
    assert first.points.shape == (3, 2) and first.points.dtype == np.float64
    np.testing.assert_array_equal(first.points, [[10.5, 20.25], [11.0, 21.0], [12.0, 22.0]])  # (y, x)
    assert first.labels.dtype == np.int64
    assert first.labels.tolist() == [1, 0, 1]
    assert _as_tuples(prompts[1:]) == [(0, 2, [[5.0, 6.0]], [1]), (3, 2, [[30.0, 40.0]], [1])]


def test_napari_writer_numeric_features(tmp_path):
    """Through the writer's own code path: bool and int features come out as floats."""
    path = write_like_napari(tmp_path / "points.csv", [[3, 10.5, 20.25], [3, 11, 21], [1, 4, 5]],
                             {"positive": np.array([True, False, True]), "obj_id": np.array([1, 1, 2])})
    text = path.read_text()
    assert text.splitlines()[1] == "0.0,3.0,10.5,20.25,1.0,1.0"
    assert _as_tuples(read_points_csv(path)) == [(3, 1, [[10.5, 20.25], [11.0, 21.0]], [1, 0]),
                                                 (1, 2, [[4.0, 5.0]], [1])]


def test_napari_writer_with_a_string_feature(tmp_path):
    """A string feature turns the whole table into strings: booleans are written as True/False."""
    path = write_like_napari(tmp_path / "points.csv", [[2, 10, 20], [2, 11, 21], [4, 12, 22]],
                             {"positive": np.array([True, False, True]), "obj_id": np.array([3, 3, 5]),
                              "note": np.array(["a", "b", "c"])})
    text = path.read_text()
    assert text.splitlines()[1] == "0,2.0,10.0,20.0,True,3,a"
    assert _as_tuples(read_points_csv(path)) == [(2, 3, [[10.0, 20.0], [11.0, 21.0]], [1, 0]),
                                                 (4, 5, [[12.0, 22.0]], [1])]


def test_true_false_strings_and_spaces(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,positive,obj_id\n"
                  "0,3.0,1.0,2.0,True,1\n"
                  "1,3.0,3.0,4.0, false ,1\n"
                  "2,3.0,5.0,6.0,TRUE,1\n")
    assert _as_tuples(read_points_csv(path)) == [(3, 1, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [1, 0, 1])]


def test_aliases_label_and_object_id(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,label,object_id\n"
                  "0,0,1,2,positive,4\n"
                  "1,0,3,4,negative,4\n"
                  "2,1,5,6,positive,7\n")
    assert _as_tuples(read_points_csv(path)) == [(0, 4, [[1.0, 2.0], [3.0, 4.0]], [1, 0]),
                                                 (1, 7, [[5.0, 6.0]], [1])]


@pytest.mark.parametrize("positive_column", ["positive", "label", "is_positive", "Positive"])
@pytest.mark.parametrize("object_column", ["obj_id", "object_id", "object", "track_id", "OBJ_ID"])
def test_all_aliases(tmp_path, positive_column, object_column):
    path = _write(tmp_path / "points.csv",
                  f"index,axis-0,axis-1,axis-2,{positive_column},{object_column}\n"
                  "0,2,1,2,1,3\n"
                  "1,2,3,4,0,3\n")
    assert _as_tuples(read_points_csv(path)) == [(2, 3, [[1.0, 2.0], [3.0, 4.0]], [1, 0])]


def test_no_feature_columns_means_positive_clicks_on_object_1(tmp_path):
    path = write_like_napari(tmp_path / "points.csv", [[0, 1, 2], [5, 3, 4], [0, 7, 8]])
    assert path.read_text().splitlines()[0] == "index,axis-0,axis-1,axis-2"
    assert _as_tuples(read_points_csv(path)) == [(0, 1, [[1.0, 2.0], [7.0, 8.0]], [1, 1]),
                                                 (5, 1, [[3.0, 4.0]], [1])]


def test_unrelated_features_are_ignored(tmp_path):
    path = write_like_napari(tmp_path / "points.csv", [[1, 1, 2]], {"confidence": np.array([0.25])})
    assert _as_tuples(read_points_csv(path)) == [(1, 1, [[1.0, 2.0]], [1])]


def test_bom_prefixed_file(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,positive,obj_id\n"
                  "0,3.0,1.0,2.0,True,2\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert _as_tuples(read_points_csv(path)) == [(3, 2, [[1.0, 2.0]], [1])]


def test_accepts_str_path(tmp_path):
    path = write_like_napari(tmp_path / "points.csv", [[0, 1, 2]])
    assert len(read_points_csv(str(path))) == 1


# --------------------------------------------------------------------------- errors

def test_two_axis_csv_has_no_frame(tmp_path):
    path = write_like_napari(tmp_path / "points2d.csv", [[1, 2], [3, 4]])
    message = refusal(path)
    assert "points2d.csv" in message
    assert "axis-0, axis-1, axis-2" in message
    assert "no frame" in message


def test_four_axis_csv_is_refused(tmp_path):
    path = write_like_napari(tmp_path / "points4d.csv", [[0, 1, 2, 3]])
    message = refusal(path)
    assert "axis-3" in message and "(T, Z, Y, X)" in message


def test_non_integer_frame(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2\n"
                  "0,1.0,1,2\n"
                  "1,2.5,3,4\n")
    message = refusal(path)
    assert "line 3" in message and "2.5" in message and "frame" in message


def test_negative_frame(tmp_path):
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2\n0,-1.0,1,2\n")
    with pytest.raises(PromptFileError, match="line 2"):
        read_points_csv(path)


def test_frame_within_rounding_tolerance(tmp_path):
    """Coordinates that went through float arithmetic in napari still name their frame."""
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2\n0,2.9999999999999996,1,2\n")
    assert read_points_csv(path)[0].frame == 3


@pytest.mark.parametrize("text", ["", "abc", "nan", "inf"])
def test_bad_coordinate(tmp_path, text):
    path = _write(tmp_path / "points.csv", f"index,axis-0,axis-1,axis-2\n0,1.0,{text},2\n")
    message = refusal(path)
    assert "line 2" in message and "axis-1" in message


def test_bad_polarity_value(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,positive,obj_id\n"
                  "0,1.0,1,2,True,1\n"
                  "1,1.0,3,4,maybe,1\n")
    message = refusal(path)
    assert "line 3" in message and "'maybe'" in message


def test_error_names_the_file_line_past_blank_lines(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,positive\n"
                  "\n"
                  "0,1.0,1,2,True\n"
                  "\n"
                  "1,1.0,3,4,maybe\n")
    message = refusal(path)
    assert "line 5" in message


def test_blank_lines_are_skipped(tmp_path):
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2\n0,1.0,1,2\n\n\n1,1.0,3,4\n\n")
    assert _as_tuples(read_points_csv(path)) == [(1, 1, [[1.0, 2.0], [3.0, 4.0]], [1, 1])]


@pytest.mark.parametrize("value", ["0", "0.0", "1.5", "-2", "abc", ""])
def test_bad_object_id(tmp_path, value):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,positive,obj_id\n"
                  f"0,1.0,1,2,True,{value}\n")
    message = refusal(path)
    assert "line 2" in message


def test_header_only_holds_no_points(tmp_path):
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2,positive,obj_id\n")
    with pytest.raises(PromptFileError, match="holds no points"):
        read_points_csv(path)


def test_empty_file(tmp_path):
    path = _write(tmp_path / "points.csv", "")
    with pytest.raises(PromptFileError, match="no header"):
        read_points_csv(path)


def test_short_row(tmp_path):
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2\n0,1.0,2\n")
    with pytest.raises(PromptFileError, match="line 2"):
        read_points_csv(path)


def test_prompt_file_error_is_a_value_error():
    assert issubclass(PromptFileError, ValueError)


# --------------------------------------------------------------------------- against the movie's shape

MOVIE_SHAPE = (4, 96, 80)  # (T, Y, X)


def misfit(clicks, hint="") -> str:
    """The message of the PromptFileError that checking ``clicks`` against MOVIE_SHAPE must raise."""
    with pytest.raises(PromptFileError) as info:
        check_clicks(clicks, MOVIE_SHAPE, hint)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_clicks_remember_their_file_and_lines(tmp_path):
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2,obj_id\n0,0,1,2,1\n\n1,1,3,4,2\n2,0,5,6,1\n")
    prompts = read_points_csv(path)
    assert [(p.source, p.lines) for p in prompts] == [(str(path), (2, 5)), (str(path), (4,))]


def test_click_outside_the_frame_names_line_object_coordinate_and_shape(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,positive,obj_id\n"
                  "0,0,30,25,True,1\n"
                  "1,0,75,60,True,2\n"
                  "2,2,96.5,40,False,2\n")
    message = misfit(read_points_csv(path))
    assert message == (f"{path}, line 4: the click of object 2 at (row, col) = (96.5, 40) on frame 2 is outside "
                       "the frame of shape (Y, X) = (96, 80)")


def test_click_on_a_frame_the_movie_lacks(tmp_path):
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2,obj_id\n0,0,30,25,1\n1,4,30,25,3\n")
    assert misfit(read_points_csv(path)) == (f"{path}, line 3: the click of object 3 is on frame 4, but the movie "
                                             "has 4 frame(s) (0..3)")


def test_earliest_misfit_is_named_with_the_count_and_the_hint(tmp_path):
    path = _write(tmp_path / "points.csv",
                  "index,axis-0,axis-1,axis-2,obj_id\n0,3,30,-1,2\n1,0,200,25,1\n2,3,30,90,2\n")
    message = misfit(read_points_csv(path), hint="are the axes right?")
    assert message.startswith(f"{path}, line 2: the click of object 2 at (row, col) = (30, -1) on frame 3")
    assert message.endswith("; 2 more click(s) do not fit either; are the axes right?")


def test_clicks_on_the_frame_edge_fit(tmp_path):
    path = _write(tmp_path / "points.csv", "index,axis-0,axis-1,axis-2\n0,3,-0.5,-0.5\n1,3,95.5,79.5\n")
    check_clicks(read_points_csv(path), MOVIE_SHAPE)
    check_clicks(read_points_csv(path), (4, 96, 80, 3))  # a channel axis changes nothing


def _labels(path, shape, frames_with_labels=()):
    labels = np.zeros(shape, np.uint16)
    for t in frames_with_labels:
        labels[t, 10:20, 10:20] = 5
    tifffile.imwrite(path, labels, photometric="minisblack")
    return path


def test_seed_label_stack_takes_the_frames_that_hold_labels(tmp_path):
    path = _labels(tmp_path / "seed.tif", MOVIE_SHAPE, frames_with_labels=(1, 3))
    seed = read_seed_labels(path, MOVIE_SHAPE)
    assert seed.frames == [1, 3] and seed.labels.shape == MOVIE_SHAPE and seed.source == str(path)
    assert read_seed_labels(path, MOVIE_SHAPE, frames=[3]).frames == [3]


def test_single_seed_label_image_belongs_to_one_frame(tmp_path):
    path = tmp_path / "seed.npy"
    image = np.zeros(MOVIE_SHAPE[1:], np.uint8)
    image[5, 5] = 1
    np.save(path, image)
    seed = read_seed_labels(path, MOVIE_SHAPE)
    assert seed.frames == [0] and seed.labels.shape == (96, 80)
    assert read_seed_labels(path, MOVIE_SHAPE, frames=[2]).frames == [2]
    with pytest.raises(PromptFileError, match="single .* image, which belongs to one frame, but 2 frames"):
        read_seed_labels(path, MOVIE_SHAPE, frames=[0, 1])


@pytest.mark.parametrize("shape", [(96, 81), (3, 96, 80), (4, 80, 96)])
def test_seed_labels_of_the_wrong_shape(tmp_path, shape):
    path = _labels(tmp_path / "seed.tif", shape)
    with pytest.raises(PromptFileError) as info:
        read_seed_labels(path, MOVIE_SHAPE, hint="the hint")
    assert str(info.value) == (f"seed labels {path} have shape {shape}, which does not fit the movie: expected a "
                               "(Y, X) image of (96, 80) or a (T, Y, X) stack of (4, 96, 80); the hint")


def test_seed_label_frame_out_of_range(tmp_path):
    path = _labels(tmp_path / "seed.tif", MOVIE_SHAPE, frames_with_labels=(1,))
    with pytest.raises(PromptFileError, match=r"label frame 4 \(--label-frames\) is out of range: the movie has 4 "
                                              r"frame\(s\) \(0..3\)"):
        read_seed_labels(path, MOVIE_SHAPE, frames=[1, 4])


def test_seed_labels_without_labels_or_not_integers(tmp_path):
    path = _labels(tmp_path / "seed.tif", MOVIE_SHAPE, frames_with_labels=(1,))
    with pytest.raises(PromptFileError, match=r"hold no labels on frames \[2\]"):
        read_seed_labels(path, MOVIE_SHAPE, frames=[2])
    empty = _labels(tmp_path / "empty.tif", MOVIE_SHAPE)
    with pytest.raises(PromptFileError, match=r"hold no labels on frames \[\]"):
        read_seed_labels(empty, MOVIE_SHAPE)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.ones(MOVIE_SHAPE, np.float32))
    with pytest.raises(PromptFileError, match="float32 values; labels must be integers"):
        read_seed_labels(floats, MOVIE_SHAPE)
