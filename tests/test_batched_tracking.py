"""Objects tracked in batches give the results of tracking them one by one."""

from __future__ import annotations

import numpy as np
import pytest
from numerics import assert_same_computation
from reference_support import max_abs_diff
from session_support import cells_movie, small_model

from napari_sam2 import TrackingSession


def track(object_batch_size: int) -> tuple[list[np.ndarray], TrackingSession]:
    """Four objects: three clicked on frame 0 (one memory layout), one boxed on frame 2 (another)."""
    session = TrackingSession(small_model(), cells_movie(6), object_batch_size=object_batch_size)
    for obj_id, point in ((1, (30, 25)), (2, (60, 60)), (3, (80, 20))):
        session.add_points(0, obj_id, [point], [1])
    session.add_box(2, 4, (30, 25, 50, 45))
    return [logits for _, _, logits in session.propagate(0, "forward")], session


def test_batched_objects_match_one_by_one():
    one_by_one, _ = track(object_batch_size=1)
    batched, session = track(object_batch_size=16)
    two_at_a_time, _ = track(object_batch_size=2)
    assert len(batched) == 6 and batched[0].shape == (4, 96, 80)
    for frame, (single, batch, pairs) in enumerate(zip(one_by_one, batched, two_at_a_time, strict=True)):
        assert_same_computation(single, batch, what=f"frame {frame}, batches of 16 vs one by one")
        assert_same_computation(single, pairs, what=f"frame {frame}, batches of 2 vs one by one")
    # The objects really differ (the comparison is not between copies of one result).
    assert max_abs_diff(batched[3][0], batched[3][1]) > 1e-2
    # Each object's stored memory is its own tensor, not a view of the batch.
    memories = [obj.tracked[5].maskmem for obj in session._objects.values()]
    assert all(m.shape == (1, 64, 8, 8) and m.untyped_storage().nbytes() == m.numel() * 2 for m in memories)


@pytest.mark.parametrize("size", [0, -1, 1.5, True, None])
def test_object_batch_size_is_checked(size):
    with pytest.raises(ValueError, match="object_batch_size must be an integer >= 1"):
        TrackingSession(small_model(), cells_movie(2), object_batch_size=size)


def test_object_batch_size_default():
    assert TrackingSession(small_model(), cells_movie(2)).object_batch_size == 16  # CPU too
