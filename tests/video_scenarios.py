"""Drive our TrackingSession and the reference SAM2VideoPredictor through the same prompts.

Both see the same decoded 8-bit RGB frames: the reference reads them from a JPEG folder (its only
input path), we get the arrays PIL decodes from those very files, with contrast limits (0, 255).
Our calls use napari (row, col) coordinates; the reference gets (x, y).

The scenarios at the end run on any device: the CPU in the test suite (tests/test_parity_video.py), CUDA in
benchmarks/gpu_check.py. Each returns its :class:`Pair`, whose ``diffs`` hold every logit map's max |diff|.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from reference_support import fix_reference_bf16_memory_bug, max_abs_diff, reference_with_random_weights

from napari_sam2 import TrackingSession, build_model


def synthetic_movie(num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    """(T, size, size, 3) uint8: a textured background with two bright blobs drifting across it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    background = 40 + 20 * np.sin(6 * xx + 3 * yy)
    frames = []
    for t in range(num_frames):
        img = background.copy()
        for cy, cx, r, speed in ((0.35, 0.3, 0.12, 0.03), (0.65, 0.7, 0.09, -0.02)):
            cy_t, cx_t = cy + speed * t, cx + 0.5 * speed * t
            img += 150 * np.exp(-(((yy - cy_t) ** 2 + (xx - cx_t) ** 2) / (2 * r * r)))
        rgb = np.stack([img, 0.8 * img + 10, 0.6 * img + 30], axis=-1)
        rgb += rng.normal(0, 4, rgb.shape)
        frames.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_jpeg_folder(movie: np.ndarray, folder: Path) -> np.ndarray:
    """Save frames as 0.jpg, 1.jpg, ... and return the arrays PIL decodes from them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    decoded = []
    for t, frame in enumerate(movie):
        path = folder / f"{t}.jpg"
        Image.fromarray(frame).save(path, quality=95)
        decoded.append(np.array(Image.open(path).convert("RGB")))
    return np.stack(decoded)


class Pair:
    """Our session and the reference predictor on the same movie, weights and prompts."""

    def __init__(self, config: str, image_size: int, movie: np.ndarray, tmp_path: Path, seed: int = 0,
                 fix_bf16_bug: bool = False, device: str = "cpu") -> None:
        self.reference, state_dict = reference_with_random_weights(config, image_size=image_size, seed=seed,
                                                                   device=device)
        if fix_bf16_bug:
            fix_reference_bf16_memory_bug(self.reference)
        self.reference.fill_hole_area = 0  # the reference cannot fill holes on the CPU; nor do we here
        frames = write_jpeg_folder(movie, tmp_path / "jpg")
        with torch.no_grad():
            self.state = self.reference.init_state(video_path=str(tmp_path / "jpg"))
        model = build_model(config, image_size=image_size, device=device)
        model.load_state_dict(state_dict, strict=True)
        self.ours = TrackingSession(model, frames, contrast_limits=(0, 255), fill_hole_area=0, precision="fp32")
        self.diffs: list[float] = []

    def _compare(self, ours, theirs) -> float:
        frame, ids, logits = ours
        ref_frame, ref_ids, ref_logits = theirs
        assert frame == ref_frame and list(ids) == list(ref_ids)
        diff = max_abs_diff(logits, ref_logits[:, 0])
        self.diffs.append(diff)
        return diff

    def points(self, frame: int, obj_id: int, rowcol, labels, clear_old_points: bool = True) -> float:
        rowcol = np.asarray(rowcol, dtype=np.float32)
        ours = self.ours.add_points(frame, obj_id, rowcol, labels, clear_old_points=clear_old_points)
        theirs = self.reference.add_new_points_or_box(self.state, frame, obj_id, points=rowcol[:, ::-1].copy(),
                                                      labels=np.asarray(labels, np.int32),
                                                      clear_old_points=clear_old_points)
        return self._compare(ours, theirs)

    def box(self, frame: int, obj_id: int, y0x0y1x1) -> float:
        y0, x0, y1, x1 = y0x0y1x1
        ours = self.ours.add_box(frame, obj_id, (y0, x0, y1, x1))
        theirs = self.reference.add_new_points_or_box(self.state, frame, obj_id,
                                                      box=np.array([x0, y0, x1, y1], np.float32))
        return self._compare(ours, theirs)

    def mask(self, frame: int, obj_id: int, mask: np.ndarray) -> float:
        ours = self.ours.add_mask(frame, obj_id, mask)
        theirs = self.reference.add_new_mask(self.state, frame, obj_id, mask)
        return self._compare(ours, theirs)

    def clear(self, frame: int, obj_id: int) -> float:
        ours = self.ours.clear_prompts(frame, obj_id)
        theirs = self.reference.clear_all_prompts_in_frame(self.state, frame, obj_id)
        return self._compare(ours, theirs)

    def propagate(self, start=None, direction: str = "forward", max_frames=None) -> list[int]:
        """Propagate both; return the frames visited. 'both' = reference forward, then reverse from start - 1
        (the reference's reverse run from frame 0 covers nothing, so 'both' needs start >= 2 here)."""
        ours = list(self.ours.propagate(start=start, direction=direction, max_frames=max_frames))
        runs = {"forward": [(start, False)], "backward": [(start, True)]}
        if direction == "both":
            runs["both"] = [(start, False), (None if start is None else start - 1, True)]
        theirs = []
        for ref_start, reverse in runs[direction]:
            if reverse and ref_start is not None and ref_start < 0:
                continue
            with torch.no_grad():
                theirs += list(self.reference.propagate_in_video(
                    self.state, start_frame_idx=ref_start, max_frame_num_to_track=max_frames, reverse=reverse))
        assert [o[0] for o in ours] == [t[0] for t in theirs]
        for o, t in zip(ours, theirs):
            self._compare(o, t)
        return [o[0] for o in ours]

    @property
    def max_diff(self) -> float:
        return max(self.diffs)


# ---------------------------------------------------------------------- scenarios
def click_then_propagate(tmp_path: Path, device: str = "cpu") -> Pair:
    """SAM 2.1 tiny at 1024: one click, three frames."""
    pair = Pair("sam2.1_hiera_t", 1024, synthetic_movie(3, 1024), tmp_path, device=device)
    pair.points(0, 1, [[360, 300]], [1])
    assert pair.propagate() == [0, 1, 2]
    return pair


def box_then_propagate(tmp_path: Path, device: str = "cpu") -> Pair:
    """SAM 2.0 tiny at 1024: one box, three frames."""
    pair = Pair("sam2_hiera_t", 1024, synthetic_movie(3, 1024, seed=1), tmp_path, device=device)
    pair.box(0, 1, (250, 200, 470, 420))
    assert pair.propagate() == [0, 1, 2]
    return pair


def objects_clicks_corrections_and_ranges(tmp_path: Path, device: str = "cpu") -> Pair:
    """Several objects, negative clicks added to a frame, a correction on a tracked frame followed by
    re-propagation, backward and limited-range propagation, clearing a frame, and both directions."""
    pair = Pair("sam2.1_hiera_t", 256, synthetic_movie(8, 256), tmp_path, fix_bf16_bug=True, device=device)
    pair.points(0, 1, [[90, 77]], [1])
    pair.box(2, 2, (140, 150, 200, 210))  # object 2 appears on frame 2; frames 0-1 come from its future memory
    pair.points(0, 1, [[120, 100]], [0], clear_old_points=False)
    assert pair.propagate() == list(range(8))
    pair.points(5, 1, [[100, 90]], [1])  # correction on a tracked frame
    correction_logits = pair.ours.frame_logits(5)[1][0].copy()
    assert pair.propagate() == list(range(8))
    # The correction is a conditioning frame now: re-propagation keeps it instead of recomputing.
    np.testing.assert_array_equal(pair.ours.frame_logits(5)[1][0], correction_logits)
    assert pair.propagate(start=7, direction="backward") == list(range(7, -1, -1))
    assert pair.propagate(start=2, max_frames=3) == [2, 3, 4, 5]
    pair.clear(5, 1)
    assert pair.propagate(start=3, direction="both") == [3, 4, 5, 6, 7, 2, 1, 0]
    return pair


def mask_prompts_refinement_and_removal(tmp_path: Path, device: str = "cpu") -> Pair:
    """A mask prompt and clicks on one frame, refining the conditioning frame, removing an object."""
    movie = synthetic_movie(6, 256, seed=2)
    pair = Pair("sam2.1_hiera_s", 256, movie, tmp_path, fix_bf16_bug=True, device=device)
    yy, xx = np.mgrid[:256, :256]
    pair.mask(2, 3, (yy - 100) ** 2 + (xx - 80) ** 2 < 30**2)
    pair.points(2, 4, [[180, 190], [200, 170]], [1, 1])
    pair.propagate(start=2, direction="both")
    pair.points(2, 4, [[150, 150]], [0], clear_old_points=False)  # refine the conditioning frame itself
    pair.propagate()
    pair.ours.remove_object(3)
    pair.reference.remove_object(pair.state, 3)
    assert pair.propagate(start=0) == list(range(6))
    return pair


def long_movie_pointer_window_and_memory_reencoding(tmp_path: Path, device: str = "cpu") -> Pair:
    """20 frames: more than the 16 object pointers, and a backward run from the middle after a forward
    run, which needs spatial memories our session dropped and re-encodes on demand."""
    pair = Pair("sam2_hiera_t", 128, synthetic_movie(20, 128, seed=3), tmp_path, device=device)
    pair.points(0, 1, [[45, 38]], [1])
    pair.points(4, 2, [[84, 90]], [1])
    pair.propagate(start=4)
    for obj in pair.ours._objects.values():
        assert sum(r.maskmem is not None for r in obj.tracked.values()) <= 12  # 6 around the start, 6 around the end
    assert pair.propagate(start=10, direction="backward") == list(range(10, -1, -1))
    return pair


SCENARIOS: dict[str, Callable[[Path, str], Pair]] = {
    "sam2.1 t @1024, click": click_then_propagate,
    "sam2.0 t @1024, box": box_then_propagate,
    "objects/corrections @256": objects_clicks_corrections_and_ranges,
    "masks/refine/remove @256": mask_prompts_refinement_and_removal,
    "sam2.0 20 frames @128": long_movie_pointer_window_and_memory_reencoding,
}
