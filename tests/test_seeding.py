"""Seeding from a segmentation in batches: the results of mask prompts given one by one, at a fraction of the cost,
with every mask prompt kept as its bounding-box crop (napari axes: frames (Y, X), points (row, col))."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numerics import assert_same_computation
from session_support import small_model

from napari_sam2 import TrackingSession
from napari_sam2.engine.compact_mask import CompactMask
from napari_sam2.engine.mask_input import axis_span, model_masks
from napari_sam2.engine.memory_bank import commit_pending_prompts
from napari_sam2.engine.object_state import FramePrompt, TrackedObject
from napari_sam2.engine.seeding import image_masks, label_prompts
from napari_sam2.engine.session_file import encode_mask_rle, save_session
from napari_sam2.model.resize import resize_bilinear


def discs(shape: tuple[int, int], count: int, radius: float, seed: int = 0) -> np.ndarray:
    """(Y, X) uint16 label image of ``count`` discs (labels 1..count at random centres; later ones on top)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.uint16)
    for label in range(1, count + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < (radius * rng.uniform(0.6, 1.2)) ** 2] = label
    return labels


def movie_of(shape: tuple[int, int], frames: int = 3) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (300 + rng.normal(0, 40, (frames, *shape))).astype(np.uint16)


@pytest.fixture(scope="module")
def model():
    return small_model()  # image size 128


# ---------------------------------------------------------------------------------------------- compact masks
def sample_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    full_rows = np.zeros((6, 7), bool)
    full_rows[2:4] = True  # runs that wrap from one row's last pixel to the next row's first
    wrap = np.zeros((5, 4), bool)
    wrap[1, 3] = wrap[2, 0] = True
    corners = np.zeros((9, 8), bool)
    corners[0, 0] = corners[-1, -1] = True
    return [np.zeros((5, 7), bool), np.ones((5, 7), bool), full_rows, wrap, corners, rng.random((16, 12)) > 0.5,
            rng.random((40, 33)) > 0.97, np.ones((1, 9), bool), np.eye(6, dtype=bool), discs((50, 60), 1, 9) > 0,
            np.zeros((0, 4), bool)]


@pytest.mark.parametrize("mask", sample_masks())
def test_compact_mask_rebuilds_the_mask_and_its_run_lengths(mask):
    compact = CompactMask.of(mask)
    np.testing.assert_array_equal(compact.full(), mask)
    assert compact.full().dtype == bool and compact.shape == mask.shape
    assert compact.rle() == encode_mask_rle(mask)  # the session file's encoding, without the full mask
    assert not compact.crop.flags.writeable
    assert compact == CompactMask.of(mask.copy()) and CompactMask.of(compact) is compact


def test_compact_mask_keeps_the_bounding_box_only():
    mask = np.zeros((2048, 2048), bool)
    mask[disc_slice := (slice(1000, 1040), slice(300, 340))] = discs((40, 40), 1, 20, seed=3) > 0
    compact = CompactMask.of(mask)
    assert compact.nbytes <= 40 * 40 < mask.nbytes // 2000  # 1.6 KB instead of 4 MiB
    row0, col0, row1, col1 = compact.bounds
    assert disc_slice[0].start <= row0 and row1 <= disc_slice[0].stop and col0 >= 300 and col1 <= 340
    with pytest.raises(ValueError, match="does not fit"):
        CompactMask.cropped(np.ones((3, 3), bool), (9, 0), (10, 10))


def test_frame_prompt_keeps_the_compact_mask_and_gives_the_full_one():
    mask = np.zeros((30, 20), bool)
    mask[5:9, 3:7] = True
    prompt = FramePrompt(np.zeros((0, 2)), np.zeros(0, np.int64), mask=mask)
    assert prompt.kind == "mask" and prompt.compact_mask.crop.shape == (4, 4)
    shown = prompt.mask
    np.testing.assert_array_equal(shown, mask)
    shown[0, 0] = True  # a copy: the prompt is unchanged
    np.testing.assert_array_equal(prompt.mask, mask)
    assert prompt == FramePrompt(np.zeros((0, 2)), np.zeros(0, np.int64), mask=CompactMask.of(mask))
    assert prompt != FramePrompt(np.zeros((0, 2)), np.zeros(0, np.int64), mask=shown)
    click = FramePrompt(np.array([[3.0, 4.0]]), np.array([1]))
    assert click.mask is None and click.kind == "points" and click != prompt
    assert click == FramePrompt(np.array([[3.0, 4.0]]), np.array([1]))


# ---------------------------------------------------------------------------------------------- model input
def full_frame_input(mask: np.ndarray, size: int) -> torch.Tensor:
    """The model input of one mask as computed before windows: the whole frame resized."""
    model_mask = torch.from_numpy(mask)[None, None].float()
    if model_mask.shape[-2:] != (size, size):
        model_mask = (resize_bilinear(model_mask, (size, size), antialias=True) >= 0.5).float()
    return model_mask


SHAPES = [((256, 256), 128), ((384, 384), 128), ((512, 128), 128), ((64, 96), 128), ((32, 32), 128),
          ((128, 128), 128), ((96, 80), 128), ((200, 256), 128), ((1024, 1024), 512)]


@pytest.mark.parametrize(("shape", "size"), SHAPES)
def test_windowed_resize_gives_the_full_frame_numbers(shape, size):
    rng = np.random.default_rng(size + shape[0])
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    masks = [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) > 0.995]
    for _ in range(8):  # cells anywhere, also cut by the frame's edges and corners
        cy, cx = rng.integers(-4, shape[0] + 4), rng.integers(-4, shape[1] + 4)
        masks.append((yy - cy) ** 2 / rng.uniform(2, 30) ** 2 + (xx - cx) ** 2 / rng.uniform(2, 30) ** 2 < 1)
    batch = model_masks([CompactMask.of(m) for m in masks], size, torch.device("cpu"))
    assert batch.shape == (len(masks), 1, size, size) and batch.dtype == torch.float32
    for index, mask in enumerate(masks):
        assert torch.equal(batch[index:index + 1], full_frame_input(mask, size)), f"mask {index}"
        compact = CompactMask.of(mask)
        if compact.empty or shape == (size, size):
            continue
        # Before the threshold too: the window's resized values are the frame's, bit for bit.
        row0, col0, row1, col1 = compact.bounds
        y0, y1, oy0, oy1 = axis_span(row0, row1, shape[0], size)
        x0, x1, ox0, ox1 = axis_span(col0, col1, shape[1], size)
        frame = resize_bilinear(torch.from_numpy(mask)[None, None].float(), (size, size), antialias=True)
        window = resize_bilinear(torch.from_numpy(mask[y0:y1, x0:x1])[None, None].float(), (oy1 - oy0, ox1 - ox0),
                                 antialias=True)
        assert torch.equal(window, frame[..., oy0:oy1, ox0:ox1])
        outside = frame.clone()
        outside[..., oy0:oy1, ox0:ox1] = 0
        assert not outside.any()


def test_windows_where_they_are_exact():
    assert axis_span(100, 140, 1024, 512) == (94, 146, 47, 73)  # 2:1, aligned to even pixels, 5 pixels of margin
    assert axis_span(0, 10, 1024, 512) == (0, 16, 0, 8)
    assert axis_span(10, 20, 64, 128) == (8, 22, 16, 44)  # 1:2
    assert axis_span(10, 20, 96, 128) == (0, 96, 0, 128)  # 3:4: the whole axis
    assert axis_span(10, 20, 128, 128) == (10, 20, 10, 20)


# ---------------------------------------------------------------------------------------------- label images
def label_masks(labels: np.ndarray, frames: list[int], ids, frame_shape, num_frames: int):
    """The plain oracle: (frame, id, full bool mask) for every wanted non-zero label, frame by frame."""
    return [(t, int(i), labels[t] == i) for t in frames for i in np.unique(labels[t])
            if i != 0 and (ids is None or int(i) in ids)]


def test_label_prompts_are_the_label_masks():
    labels = np.zeros((3, 60, 50), np.uint32)
    labels[0] = discs((60, 50), 7, 8)
    labels[2] = discs((60, 50), 4, 12, seed=5) * 1000  # large, sparse ids
    labels[2, -1, -1] = 70000  # one pixel in the corner
    for frames, ids in (([0, 2], None), ([2], [4000, 70000, 5]), ([1], None)):
        got = label_prompts(labels, frames, ids, (60, 50), 3)
        expected = label_masks(labels, frames, ids, (60, 50), 3)
        assert [(t, i) for t, i, _ in got] == [(t, i) for t, i, _ in expected]
        for (_, _, compact), (_, _, mask) in zip(got, expected, strict=True):
            np.testing.assert_array_equal(compact.full(), mask)
    assert [label for label, _ in image_masks(np.eye(4, dtype=bool))] == [1]


@pytest.mark.parametrize(("labels", "frames", "message"), [
    (np.full((3, 20, 10), -1, np.int32), [1], r"non-negative integers .* int32 with negative values on frame 1"),
    (np.zeros((3, 20, 10), np.float32), [0], r"non-negative integers .* float32 on frame 0"),
    (np.zeros((4, 20, 10), np.uint8), [0], r"labels must be \(Y, X\) = \(20, 10\) or \(T, Y, X\) = \(3, 20, 10\)"),
    (np.zeros((20, 10), np.uint8), [0, 1], r"a \(Y, X\) label image belongs to one frame, but 2 frames"),
    (np.zeros((10, 20)), [0], r"got shape \(10, 20\)"),
])
def test_label_prompts_refuse_bad_labels_saying_why(labels, frames, message):
    with pytest.raises(ValueError, match=message):
        label_prompts(labels, frames, None, (20, 10), 3)


# ---------------------------------------------------------------------------------------------- sessions
@torch.inference_mode()
def one_by_one(session: TrackingSession, frame: int, obj_id: int, mask: np.ndarray) -> None:
    """A mask prompt as it was applied before this change: the full mask resized, one pass of the SAM heads,
    a full-resolution copy kept."""
    runtime = session._runtime
    features = runtime.features.get(frame)
    heads = runtime.model.mask_as_output(features.feat, features.high_res, full_frame_input(mask, runtime.image_size))
    result = runtime.stored_result(heads.low_res_masks, heads.obj_ptr, heads.object_score, from_prompt=True)
    obj = session._objects.get(obj_id) or TrackedObject(obj_id)
    obj.record_prompt(frame, FramePrompt(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), mask=mask.copy()))
    obj.pending[frame] = result
    session._objects.setdefault(obj_id, obj)


def assert_same_objects(a: TrackingSession, b: TrackingSession) -> None:
    """Same objects in the same order, identical prompt records, results within the parity standard."""
    assert a.obj_ids == b.obj_ids
    for obj_id in a.obj_ids:
        x, y = a._objects[obj_id], b._objects[obj_id]
        assert x.prompt_steps.keys() == y.prompt_steps.keys() and x.pending.keys() == y.pending.keys()
        for frame, steps in x.prompt_steps.items():
            assert steps == y.prompt_steps[frame], f"object {obj_id} frame {frame}"
        for frame, result in x.pending.items():
            other = y.pending[frame]
            what = f"object {obj_id} frame {frame}"
            assert_same_computation(result.raw_logits, other.raw_logits, what=f"{what} logits")
            assert_same_computation(result.obj_ptr, other.obj_ptr, what=f"{what} pointer")
            assert_same_computation(result.object_score, other.object_score, what=f"{what} score")
            assert result.from_prompt and other.from_prompt


@pytest.mark.parametrize("shape", [(256, 256), (96, 80)])  # windows (2:1) and whole frames (not a ratio)
def test_add_labels_gives_the_one_by_one_results(model, shape):
    labels = np.zeros((3, *shape), np.uint16)
    labels[0] = discs(shape, 21, shape[0] / 12)
    labels[2] = discs(shape, 3, shape[0] / 8, seed=4)
    labels[2][labels[2] == 2] = 40
    movie = movie_of(shape)
    batched = TrackingSession(model, movie)
    batched.add_points(2, 3, [[shape[0] / 2, shape[1] / 2]], [1])  # replaced by the label's mask
    ids = batched.add_labels(labels, frames=[0, 2])
    assert ids == sorted(set(np.unique(labels[[0, 2]])) - {0})
    reference = TrackingSession(model, movie)
    reference.add_points(2, 3, [[shape[0] / 2, shape[1] / 2]], [1])
    for t, obj_id, mask in label_masks(labels, [0, 2], None, shape, 3):
        one_by_one(reference, t, obj_id, mask)
    assert_same_objects(batched, reference)
    for obj_id in ids:  # the public contract: prompts hold the bool (Y, X) mask as given
        for t, prompt in batched.prompts(obj_id).items():
            np.testing.assert_array_equal(prompt.mask, labels[t] == obj_id)
    for t in (0, 2):
        assert_same_computation(batched.frame_logits(t)[1], reference.frame_logits(t)[1], what=f"frame {t}")
    # The batches really differ per object (not one result copied).
    assert not torch.equal(batched._objects[1].pending[0].obj_ptr, batched._objects[2].pending[0].obj_ptr)


def test_add_labels_batch_size_does_not_change_the_results(model):
    labels = discs((256, 256), 9, 20)
    sessions = []
    for batch_size in (1, 4, 16):
        session = TrackingSession(model, movie_of((256, 256)), object_batch_size=batch_size)
        session.add_labels(labels, frames=1)
        sessions.append(session)
    assert_same_objects(sessions[0], sessions[1])
    assert_same_objects(sessions[0], sessions[2])


def test_a_failing_batch_leaves_the_session_as_it_was(model, monkeypatch):
    session = TrackingSession(model, movie_of((256, 256)), object_batch_size=4)
    session.add_points(0, 1, [[50, 50]], [1])
    before = session.frame_logits(0)[1].copy()
    runtime = session._runtime
    calls = []
    stored_results = runtime.stored_results

    def overflow_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("fp16 overflow")
        return stored_results(*args, **kwargs)

    monkeypatch.setattr(runtime, "stored_results", overflow_on_second_batch)
    with pytest.raises(FloatingPointError):
        session.add_labels(discs((256, 256), 10, 20), frames=0)
    assert session.obj_ids == [1] and session.prompts(1)[0].kind == "points"
    np.testing.assert_array_equal(session.frame_logits(0)[1], before)


@torch.inference_mode()
def test_batched_memory_encoding_gives_the_one_by_one_memories(model):
    labels = np.zeros((4, 256, 256), np.uint16)
    labels[0] = discs((256, 256), 19, 20)
    labels[2] = discs((256, 256), 5, 20, seed=2)
    runs = []
    for batched in (True, False):
        session = TrackingSession(model, movie_of((256, 256), frames=4))
        session.add_labels(labels, frames=[0, 2])
        session.add_points(1, 3, [[128, 128]], [1])  # a click prompt on another frame
        if batched:
            commit_pending_prompts(session._runtime, session._objects.values(), batch_size=8)
        else:  # as before: one memory-encoder pass per prompt
            runtime = session._runtime
            for obj in session._objects.values():
                for frame, result in obj.pending.items():
                    result.maskmem = runtime.result_memory(result, runtime.features.get(frame))
            commit_pending_prompts(runtime, session._objects.values())
        runs.append(session)
    batched, reference = runs
    assert batched.obj_ids == reference.obj_ids
    for obj_id in batched.obj_ids:
        x, y = batched._objects[obj_id], reference._objects[obj_id]
        assert not x.pending and x.cond.keys() == y.cond.keys()
        for frame, result in x.cond.items():
            memory, expected = result.maskmem, y.cond[frame].maskmem
            assert memory.dtype == torch.bfloat16 and memory.shape == expected.shape == (1, 64, 8, 8)
            assert memory.untyped_storage().nbytes() == memory.numel() * 2  # its own tensor, not a batch view
            # Stored as bfloat16: a float32 rounding difference may move a value by one bf16 step.
            step = float(expected.float().abs().max()) * 2 ** -7
            assert_same_computation(memory, expected, what=f"object {obj_id} frame {frame} memory", atol=step)
    tracked = [[logits for _, _, logits in session.propagate(0, "forward", max_frames=3)] for session in runs]
    for frame, (x, y) in enumerate(zip(*tracked, strict=True)):
        assert_same_computation(x, y, what=f"frame {frame} tracked from batched memories")


def test_restored_mask_prompts_go_in_batches_in_order(model):
    shape = (256, 256)
    labels = discs(shape, 6, 24)
    original = TrackingSession(model, movie_of(shape))
    original.add_labels(labels, frames=0)
    original.add_points(0, 2, [[10, 10]], [0], clear_old_points=False)  # refines the mask's result
    original.add_mask(1, 7, labels == 3)
    original.add_points(1, 8, [[100, 100]], [1])
    original.add_mask(1, 8, labels == 4)  # replaces the click
    history = [(frame, obj_id, prompt) for obj_id in original.obj_ids
               for frame, steps in original.prompt_history(obj_id).items() for prompt in steps]
    restored = TrackingSession(model, movie_of(shape))
    restored.restore_prompts(history)
    sequential = TrackingSession(model, movie_of(shape), object_batch_size=1)
    sequential.restore_prompts(history)
    assert_same_objects(restored, original)
    assert_same_objects(restored, sequential)
    assert restored.prompt_history(2)[0][1].refines_result


def test_saved_masks_are_the_run_lengths_of_the_full_masks(model, tmp_path):
    shape = (256, 256)
    labels = discs(shape, 5, 30)
    session = TrackingSession(model, movie_of(shape))
    session.add_labels(labels, frames=2)
    path = save_session(session, tmp_path / "seeded.session.json")
    saved = json.loads(path.read_text())["objects"]
    assert [entry["obj_id"] for entry in saved] == [1, 2, 3, 4, 5]
    for entry in saved:
        (item,) = entry["prompts"]
        assert item["frame"] == 2 and item["type"] == "mask"
        assert item["mask_rle"] == encode_mask_rle(labels == entry["obj_id"])
