"""End-to-end parity of TrackingSession with the reference SAM2VideoPredictor (fp32, CPU).

Both are built from one random state dict and fed the same decoded frames and prompts; every logit map
either returns is compared. The reference runs with ``add_all_frames_to_correct_as_cond=True`` (our
semantics) and ``fill_hole_area=0`` (it cannot fill holes on the CPU; we then don't either).
"""

from __future__ import annotations

import numpy as np
import pytest
from video_scenarios import Pair, synthetic_movie

pytestmark = pytest.mark.reference
TOLERANCE = 1e-3


def _report(pair: Pair, name: str) -> None:
    print(f"{name}: {len(pair.diffs)} logit maps compared, max |diff| = {pair.max_diff:.3g}")
    assert pair.max_diff <= TOLERANCE


def test_sam21_at_1024_click_then_propagate(tmp_path):
    pair = Pair("sam2.1_hiera_t", 1024, synthetic_movie(3, 1024), tmp_path)
    pair.points(0, 1, [[360, 300]], [1])
    assert pair.propagate() == [0, 1, 2]
    _report(pair, "sam2.1 t @1024")


def test_sam20_at_1024_box_then_propagate(tmp_path):
    pair = Pair("sam2_hiera_t", 1024, synthetic_movie(3, 1024, seed=1), tmp_path)
    pair.box(0, 1, (250, 200, 470, 420))
    assert pair.propagate() == [0, 1, 2]
    _report(pair, "sam2.0 t @1024")


def test_objects_clicks_corrections_and_ranges(tmp_path):
    """Several objects, negative clicks added to a frame, a correction on a tracked frame followed by
    re-propagation, backward and limited-range propagation, clearing a frame, and both directions."""
    pair = Pair("sam2.1_hiera_t", 256, synthetic_movie(8, 256), tmp_path, fix_bf16_bug=True)
    pair.points(0, 1, [[90, 77]], [1])
    pair.box(2, 2, (140, 150, 200, 210))  # object 2 appears on frame 2; frames 0-1 come from its future memory
    pair.points(0, 1, [[120, 100]], [0], clear_old_points=False)
    assert pair.propagate() == list(range(8))
    corrected = pair.points(5, 1, [[100, 90]], [1])  # correction on a tracked frame
    correction_logits = pair.ours.frame_logits(5)[1][0].copy()
    assert pair.propagate() == list(range(8))
    # The correction is a conditioning frame now: re-propagation keeps it instead of recomputing.
    np.testing.assert_array_equal(pair.ours.frame_logits(5)[1][0], correction_logits)
    assert pair.propagate(start=7, direction="backward") == list(range(7, -1, -1))
    assert pair.propagate(start=2, max_frames=3) == [2, 3, 4, 5]
    pair.clear(5, 1)
    assert pair.propagate(start=3, direction="both") == [3, 4, 5, 6, 7, 2, 1, 0]
    assert corrected <= TOLERANCE
    _report(pair, "objects/corrections @256")


def test_mask_prompts_refinement_and_removal(tmp_path):
    movie = synthetic_movie(6, 256, seed=2)
    pair = Pair("sam2.1_hiera_s", 256, movie, tmp_path, fix_bf16_bug=True)
    yy, xx = np.mgrid[:256, :256]
    pair.mask(2, 3, (yy - 100) ** 2 + (xx - 80) ** 2 < 30**2)
    pair.points(2, 4, [[180, 190], [200, 170]], [1, 1])
    pair.propagate(start=2, direction="both")
    pair.points(2, 4, [[150, 150]], [0], clear_old_points=False)  # refine the conditioning frame itself
    pair.propagate()
    pair.ours.remove_object(3)
    pair.reference.remove_object(pair.state, 3)
    assert pair.propagate(start=0) == list(range(6))
    _report(pair, "masks/refine/remove @256")


def test_sam20_long_movie_pointer_window_and_memory_reencoding(tmp_path):
    """20 frames: more than the 16 object pointers, and a backward run from the middle after a forward
    run, which needs spatial memories our session dropped and re-encodes on demand."""
    pair = Pair("sam2_hiera_t", 128, synthetic_movie(20, 128, seed=3), tmp_path)
    pair.points(0, 1, [[45, 38]], [1])
    pair.points(4, 2, [[84, 90]], [1])
    pair.propagate(start=4)
    for obj in pair.ours._objects.values():
        assert sum(r.maskmem is not None for r in obj.tracked.values()) <= 12  # 6 around the start, 6 around the end
    assert pair.propagate(start=10, direction="backward") == list(range(10, -1, -1))
    _report(pair, "sam2.0 20 frames @128")
