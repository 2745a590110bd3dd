"""The movie sheet of ``napari-sam2 batch``: rows read relative to the sheet, checked with the CLI's own checks
before anything runs, and turned into the exact ``track`` arguments. Movies are tiny (T, Y, X[, C]) files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2.batch_sheet import MovieRow, SheetError, movie_stem, read_sheet, rows_from_records

POINTS = "index,axis-0,axis-1,axis-2,positive,obj_id\n0,0.0,10.0,12.0,True,1\n"


@pytest.fixture
def files(tmp_path):
    """A plate folder: a (4, 32, 32) TYX movie in two wells, a (4, 32, 32, 2) two-channel movie, a .npy movie,
    clicks, a label image and a session file."""
    plate = tmp_path / "plate"
    for well in ("A1", "A2"):
        (plate / well).mkdir(parents=True)
        tifffile.imwrite(plate / well / "pos1.ome.tif", np.zeros((4, 32, 32), np.uint16), metadata={"axes": "TYX"})
    tifffile.imwrite(plate / "two_channels.tif", np.zeros((4, 32, 32, 2), np.uint16), metadata={"axes": "TYXC"})
    np.save(plate / "stack.npy", np.zeros((3, 32, 32), np.float32))
    (plate / "clicks.csv").write_text(POINTS)
    tifffile.imwrite(plate / "seeds.tif", np.zeros((32, 32), np.uint16))
    (plate / "session.json").write_text("{}")
    return plate


def write_sheet(folder, text: str):
    path = folder / "sheet.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_are_read_relative_to_the_sheet(files, tmp_path, monkeypatch):
    sheet = write_sheet(files, "\ufeffMovie, Prompts ,start,channel,direction,frames,axes,out,\n"
                               "A1/pos1.ome.tif,clicks.csv,2,,backward,3,,,\n"
                               "\n"
                               "two_channels.tif,auto,,1,,,,runs/two.tif\n"
                               "stack.npy,session.json,,,,,tyx,\n")
    monkeypatch.chdir(tmp_path)  # not the sheet's folder
    rows = read_sheet(sheet)
    assert [row.row for row in rows] == [1, 3, 4]  # data rows, blank line skipped but counted
    first, second, third = rows
    assert first == MovieRow(row=1, movie=files / "A1" / "pos1.ome.tif", prompts=files / "clicks.csv", start=2,
                             direction="backward", frames=3)
    assert second.prompts == "auto" and second.channel == 1 and second.direction == "forward"
    assert third.axes == "TYX" and third.prompts == files / "session.json"
    out = tmp_path / "results"
    assert first.output_path(out) == out / "pos1_labels.tif"  # .ome.tif is one suffix
    assert second.output_path(out) == out / "runs" / "two.tif"
    assert third.output_path(out) == out / "stack_labels.tif"


def test_track_args_are_what_the_track_command_parses(files, tmp_path):
    rows = read_sheet(write_sheet(files, "movie,prompts,start,frames,direction,channel,axes\n"
                                         "A1/pos1.ome.tif,clicks.csv,1,2,both,,TYX\n"
                                         "two_channels.tif,auto,,,,0,\n"))
    movie = str(files / "A1" / "pos1.ome.tif")
    assert rows[0].track_args("sam2.1_hiera_small") == [
        movie, "--prompts", str(files / "clicks.csv"), "--out", "pos1_labels.tif", "--model", "sam2.1_hiera_small",
        "--axes", "TYX", "--start", "1", "--frames", "2", "--direction", "both"]
    assert rows[1].track_args(None, tmp_path) == [str(files / "two_channels.tif"), "--prompts", "auto", "--out",
                                                  str(tmp_path / "two_channels_labels.tif"), "--channel", "0"]
    parsed = cli._parser().parse_args(["track", *rows[0].track_args("model.pt", tmp_path)])
    assert (str(parsed.input), parsed.prompts, parsed.out) == (movie, [files / "clicks.csv"],
                                                               tmp_path / "pos1_labels.tif")
    assert (parsed.model, parsed.axes, parsed.start, parsed.frames, parsed.direction) == ("model.pt", "TYX", 1, 2,
                                                                                         "both")


def test_fingerprint_changes_with_the_row_the_prompt_file_and_the_checkpoint(files):
    sheet = write_sheet(files, "movie,prompts\nA1/pos1.ome.tif,clicks.csv\n")
    checkpoint = files / "model.pt"
    checkpoint.write_bytes(b"weights")
    (row,) = read_sheet(sheet)
    before = row.fingerprint(str(checkpoint))
    assert json.loads(json.dumps(before)) == before
    assert read_sheet(sheet)[0].fingerprint(str(checkpoint)) == before  # same files, same row: the same
    assert row.fingerprint("sam2.1_hiera_tiny") != before
    write_sheet(files, "movie,prompts,start\nA1/pos1.ome.tif,clicks.csv,1\n")
    assert read_sheet(sheet)[0].fingerprint(str(checkpoint)) != before
    state = os.stat(files / "clicks.csv")
    os.utime(files / "clicks.csv", ns=(state.st_atime_ns, state.st_mtime_ns + 10**9))  # touched or copied
    assert row.fingerprint(str(checkpoint)) == before  # the same prompts: a done movie stays done
    (files / "clicks.csv").write_text(POINTS.replace("10.0,12.0", "11.0,12.0"))  # an edited prompt file
    assert row.fingerprint(str(checkpoint)) != before
    after_edit = row.fingerprint(str(checkpoint))
    checkpoint.write_bytes(b"retrained weights")
    assert row.fingerprint(str(checkpoint)) != after_edit


ERRORS = [
    ("movie,prompts,colour\nstack.npy,auto,red\n", "unknown column 'colour'"),
    ("prompts\nauto\n", "no 'movie' column"),
    ("movie,prompts\nstack.npy,auto\nmissing.tif,auto\n", r"row 2, column 'movie': .*missing\.tif does not exist"),
    ("movie,prompts\nstack.npy,\n", r"row 1, column 'prompts': no prompts given; write 'auto'"),
    ("movie,prompts\nstack.npy,gone.csv\n", r"row 1, column 'prompts': .*gone\.csv does not exist"),
    ("movie,prompts\nstack.npy,clicks.txt\n", r"row 1, column 'prompts': cannot tell what kind of prompt file"),
    ("movie,prompts,axes\nstack.npy,auto,TY\n", r"row 1, column 'axes': .* has 3 axes"),
    ("movie,prompts,axes\nA1/pos1.ome.tif,auto,YXT\n", r"row 1, column 'axes': axes YXT does not match the file"),
    ("movie,prompts\ntwo_channels.tif,auto\n", r"row 1, column 'channel': .*has 2 channels; give the channel"),
    ("movie,prompts,channel\ntwo_channels.tif,auto,2\n", r"row 1, column 'channel': .*integer in 0\.\.1, got 2"),
    ("movie,prompts,channel\nstack.npy,auto,0\n", r"row 1, column 'channel': .*has no channel axis"),
    ("movie,prompts,channel\nstack.npy,auto,first\n", r"row 1, column 'channel': expected a whole number >= 0"),
    ("movie,prompts,start\nstack.npy,auto,3\n", r"row 1, column 'start': 3 is out of range: the movie has 3 frame"),
    ("movie,prompts,start\nstack.npy,auto,-1\n", r"row 1, column 'start': expected a whole number >= 0, got '-1'"),
    ("movie,prompts,frames\nstack.npy,auto,0\n", r"row 1, column 'frames': expected a whole number >= 1, got '0'"),
    ("movie,prompts,direction\nstack.npy,auto,sideways\n", r"row 1, column 'direction': 'sideways' is not one of"),
    ("movie,prompts\nA1/pos1.ome.tif,auto\nA2/pos1.ome.tif,auto\n",
     r"row 2, column 'out': it writes pos1_labels\.tif, which clashes with row 1's pos1_labels\.tif"),
    ("movie,prompts,out\nstack.npy,auto,a/x.tif\nA1/pos1.ome.tif,auto,a/./x.tif\n",
     r"row 2, column 'out': it writes a/x\.tif, which clashes with row 1's a/x\.tif"),
    ("movie,prompts,out\nstack.npy,auto,a/x.tif\nA1/pos1.ome.tif,auto,A/X.TIF\n",  # one file on macOS, Windows
     r"row 2, column 'out': it writes A/X\.TIF, which clashes with row 1's a/x\.tif \(names are compared without"),
    ("movie,prompts,out\nstack.npy,auto,x.tif\nA1/pos1.ome.tif,auto,x.geff\n",  # both write x_divisions.csv
     r"row 2, column 'out': it writes x_divisions\.csv, which clashes with row 1's x_divisions\.csv"),
    ("movie,prompts,out\nstack.npy,auto,ctc\nA1/pos1.ome.tif,auto,ctc/pos1.tif\n",  # inside row 1's CTC folder
     r"row 2, column 'out': it writes ctc/pos1\.tif, which clashes with row 1's ctc\b"),
    ("movie,prompts,out\nstack.npy,auto,Summary.csv\n",
     r"row 1, column 'out': it writes Summary\.csv, which clashes with the batch's own summary"),
    ("movie,prompts\nstack.npy,auto,extra\n", r"row 1: 3 values but the header names 2 columns"),
    ("movie,prompts,,\nstack.npy,auto,,\nstack.npy,auto,,x\n", r"row 2: a value under a column without a name"),
    ("movie,prompts\n\n", r"sheet\.csv has no movie rows"),
    ("", "is empty"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[message[:32] for _, message in ERRORS])
def test_a_bad_sheet_is_refused_naming_the_row_and_column(files, text, message):
    with pytest.raises(SheetError, match=message) as caught:
        read_sheet(write_sheet(files, text))
    assert "\n" not in str(caught.value)  # one line


def test_rows_from_records_are_checked_like_a_sheet(files):
    rows = rows_from_records([{"movie": "stack.npy", "prompts": "auto", "start": 2},
                              {"movie": files / "two_channels.tif", "prompts": "clicks.csv", "channel": 1,
                               "out": None}], base=files)
    assert (rows[0].movie, rows[0].start, rows[1].channel, rows[1].out) == (files / "stack.npy", 2, 1, None)
    with pytest.raises(SheetError, match=re.escape("row 2: unknown column 'start_frame'")):
        rows_from_records([{"movie": "stack.npy", "prompts": "auto"},
                           {"movie": "stack.npy", "prompts": "auto", "start_frame": 1}], base=files)
    with pytest.raises(SheetError, match=r"^row 1, column 'start': 9 is out of range"):
        rows_from_records([{"movie": "stack.npy", "prompts": "auto", "start": 9}], base=files)


def test_rows_read_from_a_sheet_keep_their_numbers_when_checked_again(files):
    rows = read_sheet(write_sheet(files, "movie,prompts\nstack.npy,auto\n\nA1/pos1.ome.tif,auto\n"))
    assert [row.row for row in rows] == [1, 3]  # the blank line counted
    assert rows_from_records(rows, base=files) == rows
    with pytest.raises(SheetError, match=r"^row 3, column 'out': it writes stack_labels\.tif, which clashes with "
                                         r"row 1's"):  # rows of two sheets share numbers: numbered by position
        rows_from_records([*rows, *rows], base=files)
    broken = [rows[0], MovieRow(row=3, movie=files / "gone.tif", prompts="auto")]
    with pytest.raises(SheetError, match=r"^row 3, column 'movie'"):
        rows_from_records(broken, base=files)


def test_rows_from_a_dataframe_with_gaps_and_a_mix_of_dicts_and_rows(files):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"movie": ["stack.npy", "two_channels.tif"], "prompts": ["auto", "clicks.csv"],
                              "channel": [float("nan"), 1.0], "start": [pandas.NA, 1], "out": [None, "b.tif"]})
    rows = rows_from_records(frame, base=files)  # a missing value is an empty cell; 1.0 (a gap's float) is 1
    assert [(row.channel, row.start, row.out) for row in rows] == [(None, None, None), (1, 1, Path("b.tif"))]
    mixed = rows_from_records([rows[0], {"movie": "A1/pos1.ome.tif", "prompts": "auto"}], base=files)
    assert mixed[0] == rows[0] and mixed[1].movie == files / "A1" / "pos1.ome.tif"


@pytest.mark.parametrize(("records", "message"), [
    ("sheet.csv", "expected a sheet's path, a DataFrame or a list of rows (dicts or MovieRow), got str"),
    ({"movie": "stack.npy"}, "got dict"),
    ([{"movie": "stack.npy", "prompts": "auto"}, ("stack.npy", "auto")], "row 2: expected a dict of the sheet's"),
    ([], "no movie rows given: give one dict (or MovieRow) per movie"),
])
def test_rows_from_records_refuse_what_is_not_rows(files, records, message):
    with pytest.raises(SheetError, match=re.escape(message)):
        rows_from_records(records, base=files)


@pytest.mark.parametrize(("name", "stem"), [("w.ome.tif", "w"), ("w.OME.TIFF", "w"), ("w.tif", "w"),
                                             ("plate.zarr", "plate"), ("m.npy", "m"), ("a.b.tif", "a.b")])
def test_movie_stem(tmp_path, name, stem):
    assert movie_stem(tmp_path / name) == stem
