"""Drive our TrackingSession and the reference SAM2VideoPredictor through the same prompts.

Both see the same decoded 8-bit RGB frames: the reference reads them from a JPEG folder (its only
input path), we get the arrays PIL decodes from those very files, with contrast limits (0, 255).
Our calls use napari (row, col) coordinates; the reference gets (x, y).
"""

from __future__ import annotations

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
                 fix_bf16_bug: bool = False) -> None:
        self.reference, state_dict = reference_with_random_weights(config, image_size=image_size, seed=seed)
        if fix_bf16_bug:
            fix_reference_bf16_memory_bug(self.reference)
        self.reference.fill_hole_area = 0  # the reference cannot fill holes on the CPU; nor do we here
        frames = write_jpeg_folder(movie, tmp_path / "jpg")
        with torch.no_grad():
            self.state = self.reference.init_state(video_path=str(tmp_path / "jpg"))
        model = build_model(config, image_size=image_size, device="cpu")
        model.load_state_dict(state_dict, strict=True)
        self.ours = TrackingSession(model, frames, contrast_limits=(0, 255), fill_hole_area=0)
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
