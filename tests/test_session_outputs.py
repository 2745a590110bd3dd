"""The session's frame results: FrameOutput (unpacks like the old tuple, short repr) and frame_logits
for a subset of objects."""

from __future__ import annotations

import numpy as np
import pytest
from session_support import cells_movie, small_model

from napari_sam2 import FrameOutput, TrackingSession, UnknownObjectError


@pytest.fixture(scope="module")
def session():
    session = TrackingSession(small_model(), cells_movie(3))
    session.add_points(0, 3, [(30, 25)], [1])
    session.add_box(0, 1, (50, 40, 80, 70))
    session.add_points(1, 2, [(60, 50)], [1])
    return session


def test_frame_output_unpacks_indexes_and_has_a_short_repr(session):
    output = session.add_points(0, 3, [(31, 26)], [1])
    assert isinstance(output, FrameOutput) and len(output) == 3
    frame, obj_ids, logits = output
    assert (frame, obj_ids) == (0, [3, 1, 2]) and logits.shape == (3, 96, 80)
    assert output[0] == output.frame == 0 and output[1] is output.obj_ids and output[2] is output.logits
    assert output[-1] is logits and output[:2] == (0, [3, 1, 2])
    assert output.areas() == {obj_id: int((row > 0).sum()) for obj_id, row in zip(obj_ids, logits)}
    text = repr(output)
    assert len(text) < 200 and "\n" not in text
    assert text.startswith("FrameOutput(frame=0, obj_ids=[3, 1, 2], logits=<3x96x80 float32>")
    assert f"3: {output.areas()[3]}" in text and "2: 0" in text  # object 2 has no result on frame 0
    outputs = list(session.propagate(max_frames=1))
    assert all(isinstance(o, FrameOutput) for o in outputs) and [o.frame for o in outputs] == [0, 1]


def test_repr_of_many_objects_stays_short():
    logits = np.ones((40, 2000, 2000), dtype=np.float32)
    text = repr(FrameOutput(7, list(range(1, 41)), logits))
    assert len(text) < 200 and "<40 ids>" in text and "... 34 more" in text


def test_frame_logits_of_some_objects_are_the_rows_of_all(session):
    ids, everything = session.frame_logits(1)
    for subset in ([2], [1, 3], [2, 3, 1]):
        got_ids, got = session.frame_logits(1, obj_ids=subset)
        assert got_ids == subset and got.shape == (len(subset), 96, 80)
        assert np.array_equal(got, everything[[ids.index(i) for i in subset]])
    assert session.frame_logits(1, obj_ids=[])[1].shape == (0, 96, 80)
    with pytest.raises(UnknownObjectError, match="unknown object id 9"):
        session.frame_logits(1, obj_ids=[1, 9])


def test_frame_output_labels_without_dense_logits_match_the_dense_rule(session):
    from napari_sam2 import labels_from_logits

    for output in session.propagate(max_frames=2):
        assert output._logits is None  # nothing dense was built while propagating
        labels = output.label_image()
        assert output._logits is None and labels.dtype == np.uint16 and labels.shape == (96, 80)
        assert output.areas([1]) == {1: int((session.frame_logits(output.frame, [1])[1][0] > 0).sum())}
        np.testing.assert_array_equal(labels, labels_from_logits(output.obj_ids, output.logits, dtype=np.uint16))
        assert np.array_equal(output.label_image(np.uint32), labels.astype(np.uint32))
