"""The headless CLI end to end: ``napari-sam2`` run as a subprocess on small files with a test checkpoint.

Each tracking run loads the (random-weight, official-layout) tiny checkpoint at the official 1024 input
size, so a run costs ~10-20 s on 2 CPU cores; the runs are shared between tests where possible.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ctc_support import score, write_gt
from session_support import cells_movie

from napari_sam2 import TrackingSession, load_model

POINTS_CSV = """index,axis-0,axis-1,axis-2,positive,obj_id
0,0.0,30.0,25.0,True,1
1,0.0,75.0,60.0,True,2
2,0.0,60.0,40.0,False,2
3,2.0,36.0,29.0,True,1
"""


def run_cli(*args: str | Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NAPARI_SAM2_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "napari_sam2.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)


def two_cell_movie(num_frames: int = 4) -> np.ndarray:
    movie = cells_movie(num_frames).astype(np.float64)
    yy, xx = np.mgrid[:96, :80]
    for t in range(num_frames):
        movie[t] += 2500 * np.exp(-((yy - 75 + t) ** 2 + (xx - 60) ** 2) / 120)
    return movie.astype(np.uint16)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_checkpoint):
    """Input files, one CLI run writing a label TIFF + a session, and the Python API's labels for the same job."""
    root = tmp_path_factory.mktemp("cli")
    movie = two_cell_movie()
    tifffile.imwrite(root / "movie.tif", movie, compression="zlib", photometric="minisblack", metadata={"axes": "TYX"})
    (root / "points.csv").write_text(POINTS_CSV)
    run = run_cli("track", root / "movie.tif", "--prompts", root / "points.csv", "--out", root / "labels.tif",
                  "--model", tiny_checkpoint, "--save-session", root / "session.json", "--device", "cpu",
                  cache=root / "cache")

    model = load_model(tiny_checkpoint, device="cpu", verbose=False)
    session = TrackingSession(model, movie)
    session.add_points(0, 1, [[30, 25]], [1])
    session.add_points(0, 2, [[75, 60], [60, 40]], [1, 0])
    session.add_points(2, 1, [[36, 29]], [1])
    list(session.propagate())
    return {"root": root, "movie": movie, "run": run, "expected": np.asarray(session.label_stack()),
            "checkpoint": tiny_checkpoint}


def test_track_writes_the_python_api_labels_as_compressed_tiff(work):
    run, root = work["run"], work["root"]
    assert run.returncode == 0, run.stderr
    assert "(config sam2.1_hiera_t) on cpu (fp32)" in run.stderr  # device and dtype are shown
    assert "tracked 2 object(s) over 4 frame(s)" in run.stderr
    assert "4/4" in run.stderr  # the progress bar ran to the end
    with tifffile.TiffFile(root / "labels.tif") as tif:
        assert tif.series[0].axes == "TYX"
        assert tif.pages[0].compression != tifffile.COMPRESSION.NONE
        labels = tif.asarray()
    assert labels.dtype == np.uint16 and labels.shape == (4, 96, 80)
    np.testing.assert_array_equal(labels, work["expected"])
    assert set(np.unique(labels)) == {0, 1, 2}  # both objects found, background left


def test_saved_session_gives_the_same_tracking_in_ctc_format(work):
    root = work["root"]
    out = root / "ctc"
    run = run_cli("track", root / "movie.tif", "--prompts", root / "session.json", "--out", out, "--quiet",
                  "--model", work["checkpoint"], cache=root / "cache")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mask000.tif", "mask001.tif", "mask002.tif", "mask003.tif",
                                                     "res_track.txt"]
    expected = work["expected"]
    masks = np.stack([tifffile.imread(out / f"mask{t:03d}.tif") for t in range(4)])
    np.testing.assert_array_equal(masks, expected)  # no object disappears here, so track labels = object ids
    assert (out / "res_track.txt").read_text().split("\n")[:2] == ["1 0 3 0", "2 0 3 0"]

    write_gt(root / "gt", expected)  # independent ground truth; scored by py-ctcmetrics
    scores = score(out, root / "gt")
    assert scores["Valid"] == 1 and scores["SEG"] == 1.0 and scores["TRA"] == 1.0
    perturbed = root / "perturbed"
    perturbed.mkdir()
    for t in range(4):
        frame = tifffile.imread(out / f"mask{t:03d}.tif")
        if t >= 2:
            frame[frame == 2] = 0  # object 2 lost on the last two frames
        tifffile.imwrite(perturbed / f"mask{t:03d}.tif", frame)
    (perturbed / "res_track.txt").write_text("1 0 3 0\n2 0 1 0\n")
    assert score(perturbed, root / "gt")["TRA"] < 1.0


def test_z_stack_from_label_prompts_tracked_both_ways(work, tiny_checkpoint):
    """A (Z, Y, X) .npy tracked along Z from an existing segmentation of the middle slice."""
    root = work["root"]
    stack = two_cell_movie(3)
    np.save(root / "zstack.npy", stack)
    seed = np.zeros(stack.shape, np.uint16)
    yy, xx = np.mgrid[:96, :80]
    seed[1][(yy - 33) ** 2 + (xx - 27) ** 2 <= 64] = 5
    tifffile.imwrite(root / "seed_labels.tif", seed, photometric="minisblack")
    out = root / "z_labels.tif"
    run = run_cli("track", root / "zstack.npy", "--axes", "ZYX", "--prompts", root / "seed_labels.tif",
                  "--direction", "both", "--out", out, "--model", tiny_checkpoint, "--contrast", "250", "3000",
                  cache=root / "cache")
    assert run.returncode == 0, run.stderr
    assert "slice" in run.stderr and "over 3 frame(s)" in run.stderr
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZYX"
        labels = tif.asarray()

    model = load_model(tiny_checkpoint, device="cpu", verbose=False)
    session = TrackingSession(model, stack, contrast_limits=(250, 3000))
    session.add_mask(1, 5, seed[1] == 5)
    list(session.propagate(direction="both"))
    np.testing.assert_array_equal(labels, np.asarray(session.label_stack()))
    assert set(np.unique(labels)) == {0, 5}


def test_existing_output_is_refused_and_kept(work, tmp_path):
    out = tmp_path / "labels.tif"
    out.write_bytes(b"precious")
    run = run_cli("track", work["root"] / "movie.tif", "--prompts", work["root"] / "points.csv", "--out", out,
                  cache=tmp_path / "cache")
    assert run.returncode == 1
    assert "already exists" in run.stderr and "--overwrite" in run.stderr and "Traceback" not in run.stderr
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("prompts, message", [
    ("prompts.txt", "cannot tell what kind of prompt file"),
    ("missing.csv", "does not exist"),
    ("bad.csv", "line 2: cannot tell positive from negative"),
])
def test_bad_prompt_files_fail_before_loading_a_model(work, tmp_path, prompts, message):
    (tmp_path / "prompts.txt").write_text("0 1 2\n")
    (tmp_path / "bad.csv").write_text("index,axis-0,axis-1,axis-2,positive\n0,0,10,10,maybe\n")
    run = run_cli("track", work["root"] / "movie.tif", "--prompts", tmp_path / prompts, "--out",
                  tmp_path / "out.tif", "--model", "sam2.1_hiera_large", cache=tmp_path / "cache")
    assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "cache").exists()  # nothing was downloaded or even tried
    assert not (tmp_path / "out.tif").exists()


def _misfits(root: Path) -> dict[str, Path]:
    """Prompt files that do not fit the (4, 96, 80) test movie, a .npy copy of it and a session of another movie."""
    files = {"outside": root / "outside.csv", "late": root / "late.csv", "labels": root / "small_labels.tif",
             "seed": root / "seed.tif", "npy": root / "movie.npy", "session": root / "other.json"}
    files["outside"].write_text(POINTS_CSV.replace("1,0.0,75.0,60.0", "1,0.0,200.0,60.0"))
    files["late"].write_text(POINTS_CSV.replace("3,2.0,36.0,29.0", "3,7.0,36.0,29.0"))
    tifffile.imwrite(files["labels"], np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    seed = np.zeros((4, 96, 80), np.uint16)
    seed[1, 30:40, 20:30] = 3
    tifffile.imwrite(files["seed"], seed, photometric="minisblack")
    np.save(files["npy"], two_cell_movie())
    files["session"].write_text('{"format": "napari-sam2 session", "version": 1, "movie": {"shape": [4, 64, 64]}, '
                                '"model": {}, "settings": {}, "objects": []}')
    return files


MISFITS = [
    ("outside", "outside.csv, line 3: the click of object 2 at (row, col) = (200, 60) on frame 0 is outside the frame "
                "of shape (Y, X) = (96, 80)"),
    ("late", "late.csv, line 5: the click of object 1 is on frame 7, but the movie has 4 frame(s) (0..3)"),
    ("labels", "small_labels.tif have shape (4, 64, 64), which does not fit the movie: expected a (Y, X) image of "
               "(96, 80) or a (T, Y, X) stack of (4, 96, 80)"),
    ("label frame", "label frame 4 (--label-frames) is out of range: the movie has 4 frame(s) (0..3)"),
    ("start", "--start 4 is out of range: the movie has 4 frame(s) (0..3)"),
    ("session", "other.json was saved for a movie of shape (4, 64, 64) (T, Y, X[, C]), but"),
    ("tiff axes", "--axes YXT does not match the file's axes TYX (shape (4, 96, 80))"),
    ("npy axes", "points.csv, line 2: the click of object 1 at (row, col) = (30, 25) on frame 0 is outside the frame "
                 "of shape (Y, X) = (4, 96); 3 more click(s) do not fit either; with --axes YXT, movie.npy (4, 96, 80) "
                 "is read as 80 frames of 4 x 96 (Y x X) along T: are the axes right?"),
]


@pytest.mark.parametrize("case, expected", MISFITS, ids=[case for case, _ in MISFITS])
def test_prompts_that_do_not_fit_the_movie_fail_in_one_line_before_loading_a_model(work, tmp_path, case, expected):
    root, files = work["root"], _misfits(tmp_path)
    movie, prompts, extra = root / "movie.tif", [root / "points.csv"], []
    if case in ("outside", "late", "labels", "session"):
        prompts = [files[case]]
    elif case == "label frame":
        prompts, extra = [files["seed"]], ["--label-frames", "1", "4"]
    elif case == "start":
        extra = ["--start", "4"]
    elif case == "tiff axes":
        extra = ["--axes", "YXT"]
    elif case == "npy axes":
        movie, extra = files["npy"], ["--axes", "YXT"]
    run = run_cli("track", movie, "--prompts", *prompts, "--out", tmp_path / "out.tif", "--model",
                  "sam2.1_hiera_large", *extra, cache=tmp_path / "cache")
    assert run.returncode == 1
    assert run.stderr.startswith("napari-sam2: error: ") and run.stderr.count("\n") == 1, run.stderr
    assert expected in run.stderr
    assert not (tmp_path / "cache").exists()  # refused before the model: nothing was downloaded or even tried
    assert not (tmp_path / "out.tif").exists()


AUTO_OPTIONS = ["--points-per-side", "1", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def test_auto_prompts_segment_all_then_track_with_reseeding_and_stopping(work, tmp_path):
    """--prompts auto seeds every mask of the --start frame; --reseed-labels adds the cells nothing tracks."""
    from napari_sam2 import AutomaticMaskOptions
    from napari_sam2.engine.reseeding import ReseedOptions

    root, movie = work["root"], work["movie"]
    stack = np.zeros(movie.shape, np.uint16)
    stack[2, 2:12, 2:12] = 4  # a corner cell that enters on frame 2
    tifffile.imwrite(tmp_path / "cellpose.tif", stack, photometric="minisblack")
    out = tmp_path / "auto.tif"
    run = run_cli("track", root / "movie.tif", "--prompts", "auto", "--start", "1", "--frames", "1", *AUTO_OPTIONS,
                  "--reseed-every", "1", "--reseed-labels", tmp_path / "cellpose.tif", "--stop-after-absent", "2",
                  "--out", out, "--model", work["checkpoint"], "--device", "cpu", cache=tmp_path / "cache")
    assert run.returncode == 0, run.stderr

    model = load_model(work["checkpoint"], device="cpu", verbose=False)
    session = TrackingSession(model, movie, stop_after_absent=2)
    ids = session.segment_all(1, AutomaticMaskOptions(points_per_side=1, pred_iou_thresh=0, stability_score_thresh=0))
    list(session.propagate(max_frames=1, reseed=ReseedOptions(every=1, labels=stack)))
    assert ids and f"segment all found {len(ids)} object(s) on frame 1" in run.stderr
    added = len(session.obj_ids) - len(ids)
    assert added == 1  # the corner cell of frame 2
    assert f"re-seeding added {added} object(s)" in run.stderr and "0 object(s) stopped" in run.stderr
    labels = tifffile.imread(out)
    np.testing.assert_array_equal(labels, np.asarray(session.label_stack()))
    assert not labels[0].any() and not labels[3].any()  # only frames 1 and 2 were tracked


REFUSED = [
    (["--prompts", "auto", "PTS"], "--prompts auto segments the --start frame by itself: give no prompt files with it"),
    (["--prompts", "auto", "--start", "9"], "--start 9 is out of range: the movie has 4 frame(s) (0..3)"),
    (["--prompts", "PTS", "--reseed-labels", "STACK"], "--reseed-labels needs --reseed-every K"),
    (["--prompts", "PTS", "--reseed-every", "2", "--reseed-labels", "SMALL"],
     "--reseed-labels SMALL: reseed labels must be a (T, Y, X) label stack of (4, 96, 80), got shape (4, 64, 64)"),
    (["--prompts", "PTS", "--reseed-every", "2", "--reseed-labels", "MISSING"], "MISSING does not exist"),
]


@pytest.mark.parametrize("args, expected", REFUSED, ids=["auto and files", "auto start", "labels alone", "small",
                                                         "missing"])
def test_population_options_that_do_not_fit_fail_in_one_line_before_loading_a_model(work, tmp_path, args, expected):
    files = {"PTS": work["root"] / "points.csv", "STACK": tmp_path / "stack.tif", "SMALL": tmp_path / "small.tif",
             "MISSING": tmp_path / "missing.tif"}
    tifffile.imwrite(files["STACK"], np.zeros((4, 96, 80), np.uint16), photometric="minisblack")
    tifffile.imwrite(files["SMALL"], np.zeros((4, 64, 64), np.uint16), photometric="minisblack")
    args = [str(files.get(a, a)) for a in args]
    for name, path in files.items():
        expected = expected.replace(name, str(path))
    run = run_cli("track", work["root"] / "movie.tif", *args, "--out", tmp_path / "out.tif", "--model",
                  "sam2.1_hiera_large", cache=tmp_path / "cache")
    assert run.returncode == 1
    assert run.stderr.startswith("napari-sam2: error: ") and run.stderr.count("\n") == 1, run.stderr
    assert expected in run.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("flag, value", [("--stop-after-absent", "0"), ("--reseed-every", "x"),
                                         ("--new-object-iou", "0")])
def test_bad_population_numbers_are_refused_by_the_parser(work, tmp_path, flag, value):
    run = run_cli("track", work["root"] / "movie.tif", "--prompts", "auto", flag, value, "--out",
                  tmp_path / "out.tif", cache=tmp_path / "cache")
    assert run.returncode == 2 and f"argument {flag}" in run.stderr and "Traceback" not in run.stderr


def test_offline_without_cached_weights_says_where_to_put_the_file(work, tmp_path):
    run = run_cli("track", work["root"] / "movie.tif", "--prompts", work["root"] / "points.csv", "--out",
                  tmp_path / "out.tif", "--model", "sam2.1_hiera_tiny", cache=tmp_path / "cache")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    error = next(n for n, line in enumerate(lines) if line.startswith("napari-sam2: error: "))
    # One short line, then the instructions for getting the file by hand.
    assert lines[error].startswith("napari-sam2: error: Could not download sam2.1_hiera_tiny: ")
    assert len(lines[error]) < 120
    instructions = "\n".join(lines[error + 1:])
    assert str(tmp_path / "cache" / "sam2.1_hiera_tiny.pt") in instructions
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in instructions
    assert "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69" in instructions


def test_models_lists_known_models_and_the_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sam2.1_hiera_small.pt").write_bytes(b"\0" * 2**20)
    run = run_cli("models", cache=cache)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert str(cache) in lines[0]
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert len(rows) == 8
    assert "cached" in rows["sam2.1_hiera_small"] and str(cache / "sam2.1_hiera_small.pt") in rows["sam2.1_hiera_small"]
    assert "not downloaded" in rows["sam2_hiera_large"] and "072824/sam2_hiera_large.pt" in rows["sam2_hiera_large"]


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("napari-sam2")
    run = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and "track" in run.stdout and "models" in run.stdout
