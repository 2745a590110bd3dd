"""The synthetic samples: really 16-bit, deterministic, and their ground truth has the events they promise
(a division, a touching pair, trackable motion); the npe2 manifest puts them in napari's Open Sample menu."""

import time

import numpy as np
import pytest
from scipy import ndimage

from napari_sam2.sample_data import (
    division_frame,
    sample_time_lapse,
    sample_z_stack,
    synthetic_cells_movie,
    synthetic_z_stack,
)


@pytest.fixture(scope="module")
def movie_and_labels() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_cells_movie()


def ids(frame: np.ndarray) -> set[int]:
    return set(np.unique(frame).tolist()) - {0}


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(mask))


def test_movie_is_16_bit_with_the_requested_shape(movie_and_labels):
    movie, labels = movie_and_labels
    assert movie.dtype == np.uint16 and labels.dtype == np.uint16
    assert movie.shape == labels.shape == (40, 256, 256)
    assert movie.max() > 255 * 40  # 8 bits would not hold it
    background = np.median(movie[labels == 0])
    assert 300 <= background <= 800
    small, small_labels = synthetic_cells_movie(num_frames=6, size=96, seed=3)
    assert small.shape == small_labels.shape == (6, 96, 96)


def test_movie_is_deterministic_by_seed(movie_and_labels):
    movie, labels = movie_and_labels
    again, again_labels = synthetic_cells_movie()
    np.testing.assert_array_equal(movie, again)
    np.testing.assert_array_equal(labels, again_labels)
    other, other_labels = synthetic_cells_movie(seed=1)
    assert not np.array_equal(movie, other)
    assert not np.array_equal(labels, other_labels)


def test_cells_are_bright_where_the_ground_truth_says(movie_and_labels):
    movie, labels = movie_and_labels
    inside, outside = movie[labels > 0].mean(), movie[labels == 0].mean()
    assert inside > 5 * outside
    for t in (0, len(movie) // 2, len(movie) - 1):
        assert 6 <= len(ids(labels[t])) <= 8
        for i in ids(labels[t]):  # every cell, not only on average
            assert movie[t][labels[t] == i].mean() > 5 * np.median(movie[t][labels[t] == 0])


def find_divisions(labels: np.ndarray, near: int = 3) -> list[tuple[int, int, list[int]]]:
    """(first daughter frame, mother, daughters) where a label ends and exactly two never-seen labels
    start the next frame within `near` pixels of its last mask, centred on its last centroid."""
    seen: set[int] = set()
    found = []
    for t in range(len(labels) - 1):
        seen |= ids(labels[t])
        new = ids(labels[t + 1]) - seen
        for mother in ids(labels[t]) - ids(labels[t + 1]):
            mask = labels[t] == mother
            grown = ndimage.binary_dilation(mask, iterations=near)
            daughters = sorted(d for d in new if (grown & (labels[t + 1] == d)).any())
            if len(daughters) == 2:
                middle = (centroid(labels[t + 1] == daughters[0]) + centroid(labels[t + 1] == daughters[1])) / 2
                if np.linalg.norm(middle - centroid(mask)) < near + 1:
                    found.append((t + 1, mother, daughters))
    return found


def test_a_cell_divides_into_two_new_labels(movie_and_labels):
    movie, labels = movie_and_labels
    divisions = find_divisions(labels)
    assert divisions == [(division_frame(len(labels)), 3, [8, 9])]
    # The mother elongates before it splits: its mask gets longer than wide.
    mother = [np.argwhere(labels[t] == 3) for t in (0, division_frame(len(labels)) - 1)]
    spans = [np.sort(np.linalg.eigvalsh(np.cov(m.T))) for m in mother]
    assert spans[1][1] / spans[1][0] > 2 * spans[0][1] / spans[0][0]
    # and pinches just before the split: its mask has a waist, and the image is dimmer there.
    t = division_frame(len(labels)) - 1
    a, b = (centroid(labels[t + 1] == d) for d in (8, 9))
    along = (np.argwhere(labels[t] == 3) - (a + b) / 2) @ ((b - a) / np.linalg.norm(b - a))
    widths = np.bincount(np.rint(along - along.min()).astype(int))
    third = len(widths) // 3
    assert widths[third:-third].min() < 0.5 * widths.max()
    smooth = ndimage.uniform_filter(movie[t].astype(float), 3)
    furrow = min(smooth[tuple(np.rint(a + (b - a) * s).astype(int))] for s in np.linspace(1 / 3, 2 / 3, 7))
    assert furrow < 0.85 * np.percentile(movie[t][labels[t] == 3], 90)


def touching_pairs(frame: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of labels with a pixel of one 4-neighbouring a pixel of the other."""
    pairs = set()
    for a, b in ((frame[:, :-1], frame[:, 1:]), (frame[:-1, :], frame[1:, :])):
        border = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[border].tolist(), b[border].tolist())}
    return pairs


def test_two_cells_touch_in_passing(movie_and_labels):
    _, labels = movie_and_labels
    first = ids(labels[0])  # cells there from the start, not the sister cells just after the division
    touching = [{p for p in touching_pairs(f) if set(p) <= first} for f in labels]
    assert set().union(*touching) == {(1, 2)}
    in_contact = [t for t, pairs in enumerate(touching) if pairs]
    assert len(in_contact) >= 3
    assert in_contact == list(range(in_contact[0], in_contact[-1] + 1))
    assert in_contact[0] > 0 and in_contact[-1] < len(labels) - 1  # they meet, then part


def test_cells_move_little_per_frame_and_are_one_piece(movie_and_labels):
    _, labels = movie_and_labels
    all_ids = sorted(set().union(*(ids(f) for f in labels)))
    largest = 0.0
    moved = {}
    for i in all_ids:
        frames = [t for t in range(len(labels)) if (labels[t] == i).any()]
        assert frames == list(range(frames[0], frames[-1] + 1))  # no gaps
        centres = np.array([centroid(labels[t] == i) for t in frames])
        if len(centres) > 1:
            steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
            largest = max(largest, steps.max())
            moved[i] = np.linalg.norm(centres[-1] - centres[0])
        for t in frames:
            assert ndimage.label(labels[t] == i)[1] == 1, (i, t)
    assert largest < 8
    assert max(moved.values()) > 20  # they do move


def test_generation_is_fast():
    start = time.perf_counter()
    synthetic_cells_movie()
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    synthetic_z_stack()
    assert time.perf_counter() - start < 1.0


def test_z_stack_has_spheroids_through_depth():
    stack, labels = synthetic_z_stack()
    assert stack.dtype == labels.dtype == np.uint16 and stack.shape == labels.shape == (32, 192, 192)
    assert stack.max() > 255 * 40
    assert stack[labels > 0].mean() > 5 * stack[labels == 0].mean()
    np.testing.assert_array_equal(stack, synthetic_z_stack()[0])
    for i in range(1, 6):
        slices = [z for z in range(len(labels)) if (labels[z] == i).any()]
        assert 0 < slices[0] and slices[-1] < len(labels) - 1  # it starts and ends inside the stack
        assert 8 <= len(slices) <= 24
        areas = [(labels[z] == i).sum() for z in slices]
        assert max(areas) > 4 * min(areas)  # the cross-section grows and shrinks


def test_sample_layer_data():
    (movie, image_meta, image_type), (labels, labels_meta, labels_type) = sample_time_lapse()
    assert image_type == "image" and labels_type == "labels" and labels.shape == movie.shape
    assert image_meta["name"] == "synthetic cells (16-bit)" and labels_meta["visible"] is False
    low, high = image_meta["contrast_limits"]
    assert movie.min() <= low < 1000 and 10_000 < high <= movie.max()
    assert image_meta["metadata"]["division_frame"] == division_frame(len(movie))
    (stack, stack_meta, _), (z_labels, _, _) = sample_z_stack()
    assert stack.shape == z_labels.shape and stack_meta["contrast_limits"][1] > stack_meta["contrast_limits"][0]


def test_manifest_is_valid():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-sam2")
    assert manifest.display_name == "SAM 2 tracking"
    assert {s.key for s in manifest.contributions.sample_data} == {"time_lapse", "z_stack"}
    assert [(w.command, w.display_name) for w in manifest.contributions.widgets] == [
        ("napari-sam2.tracking_widget", "Segment and track")]
    # napari's Plugins menu reads "widget (plugin)": the same name twice would say "SAM 2 tracking (SAM 2 tracking)"
    assert all(w.display_name != manifest.display_name for w in manifest.contributions.widgets)


@pytest.mark.parametrize(
    ("key", "name", "shape"), [("time_lapse", "synthetic cells (16-bit)", (40, 256, 256)),
                               ("z_stack", "synthetic Z-stack (16-bit)", (32, 192, 192))]
)
def test_open_sample_in_napari(make_napari_viewer, key, name, shape):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam2", key)
    image, truth = viewer.layers
    assert isinstance(image, Image) and image.name == name
    assert image.data.dtype == np.uint16 and image.data.shape == shape
    assert image.contrast_limits[1] > 255 * 40
    assert isinstance(truth, Labels) and not truth.visible and truth.data.shape == shape


def test_sample_menu_does_not_import_torch_and_every_export_resolves():
    import subprocess
    import sys

    code = ("import sys, napari_sam2, napari_sam2.sample_data as s; s.sample_z_stack(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert all(getattr(napari_sam2, name) is not None for name in napari_sam2.__all__)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
