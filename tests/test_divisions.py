"""Division detection on scripted masks: the split and cells rules alone, and the proposals the lineage keeps.

No model here: masks are drawn with numpy, (Y, X) = (row, col). A mask sequence stands for one object's masks
over frames; each frame's "split" parts are offered to a Lineage as the session does after a tracked frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2 import DivisionOptions, DivisionProposal
from napari_sam2.engine.compact_mask import CompactMask
from napari_sam2.engine.division_finder import DivisionFinder
from napari_sam2.engine.divisions import daughter_pair, inside_fraction, split_parts
from napari_sam2.engine.lineage import Lineage
from napari_sam2.engine.object_state import FramePrompt, TrackedObject

SHAPE = (80, 96)
YY, XX = np.mgrid[:SHAPE[0], :SHAPE[1]]


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def ellipse(cy: float, cx: float, a: float, b: float) -> np.ndarray:
    """Semi-axes ``a`` along rows, ``b`` along columns."""
    return ((YY - cy) / a) ** 2 + ((XX - cx) / b) ** 2 <= 1


def dividing(num_frames: int, split: int, r: float = 9.0) -> list[np.ndarray]:
    """A cell that elongates into a peanut and comes apart on ``split``: two discs whose centres move apart,
    2 * 0.97 r apart (a waist of about half the radius) the frame before, 2.3 r apart on ``split``."""
    frames = []
    for t in range(num_frames):
        half = 0.97 * r * min(1.0, max(0.0, (t - split + 4) / 3)) if t < split else 1.15 * r + 0.5 * (t - split)
        frames.append(disc(40, 48 - half, r) | disc(40, 48 + half, r))
    return frames


def proposed_frames(masks: list[np.ndarray], options: DivisionOptions | None = None) -> list[int]:
    """Frames of the pending proposals after offering each frame's split to a lineage (one object, id 1)."""
    lineage = Lineage()
    for t, mask in enumerate(masks):
        parts = split_parts(mask, options)
        if parts is not None:
            lineage.offer(DivisionProposal(t, 1, parts))
    return [p.frame for p in lineage.sorted_proposals()]


def test_a_mask_that_splits_is_proposed_on_the_frame_it_comes_apart():
    masks = dividing(10, split=6)
    assert split_parts(masks[0]) is None  # one disc
    assert split_parts(masks[3]) is None  # elongating: a neck as wide as the discs
    first, second = split_parts(masks[6])
    assert not (first & second).any() and np.array_equal(first | second, masks[6])
    assert abs(int(first.sum()) - int(second.sum())) <= 2
    assert first[40, 48 - 12] and second[40, 48 + 12]  # the left part first (row-major order of first pixels)
    # the peanut the frame before has a waist under 0.6 of the discs' width: proposed there already; with a
    # lower neck ratio only the frame where the parts are apart is
    assert proposed_frames(masks) == [5]
    assert proposed_frames(masks, DivisionOptions(neck_ratio=0.2)) == [6]


def test_an_elongating_mask_is_never_proposed():
    masks = [ellipse(40, 48, 8, 8 + 4 * t) for t in range(9)]  # up to 8 x 40 semi-axes: 5 : 1
    assert proposed_frames(masks) == []
    assert proposed_frames(masks, DivisionOptions(neck_ratio=0.95, min_area_ratio=0.1, min_coverage=0.1)) == []


def test_a_split_into_unequal_parts_is_not_proposed():
    masks = [disc(40, 30, 11) | disc(40, 30 + 11 + 5 + t, 5) for t in range(6)]  # a bud, then apart
    assert proposed_frames(masks) == []
    # the rule does see two parts: a low enough area ratio and neck ratio accept them
    assert proposed_frames(masks, DivisionOptions(min_area_ratio=0.15, neck_ratio=0.4)) == [0]


def test_touching_daughters_are_proposed():
    touching = disc(40, 38, 10) | disc(40, 58, 10)  # centres two radii apart: one seam pixel wide
    overlapping = disc(40, 39, 10) | disc(40, 57, 10)  # 1.8 radii apart: a neck of 0.44 radius
    for mask in (touching, overlapping):
        first, second = split_parts(mask)
        assert first[40, 30] and second[40, 66] and np.array_equal(first | second, mask)
    assert split_parts(disc(40, 42, 10) | disc(40, 54, 10)) is None  # 1.2 radii apart: one fat cell


def test_thresholds_min_part_area_and_coverage():
    pair = disc(40, 30, 4) | disc(40, 50, 4)  # two parts of 49 pixels
    assert split_parts(pair) is not None
    assert split_parts(pair, DivisionOptions(min_part_area=60)) is None
    three = pair | disc(40, 70, 4)  # a third part: the two largest hold two thirds of the mask
    assert split_parts(three) is None
    assert split_parts(three, DivisionOptions(min_coverage=0.6)) is not None
    assert split_parts(np.zeros(SHAPE, bool)) is None


def test_large_masks_are_examined_at_reduced_resolution_and_parts_come_back_exact():
    small = disc(40, 38, 10) | disc(40, 58, 10)
    big = np.kron(small, np.ones((9, 9), dtype=bool))  # 720 x 864: reduced 9-fold at max_side 96
    first, second = split_parts(big)
    assert first.shape == big.shape and np.array_equal(first | second, big) and not (first & second).any()
    assert abs(int(first.sum()) - int(second.sum())) < 0.02 * big.sum()
    assert split_parts(np.kron(ellipse(40, 48, 8, 40), np.ones((9, 9), dtype=bool))) is None


def test_cells_rule_picks_two_comparable_cells_inside_the_mask():
    parent = CompactMask.of(disc(40, 48, 16))
    left, right = CompactMask.of(disc(40, 40, 7)), CompactMask.of(disc(40, 56, 7))
    far, tiny = CompactMask.of(disc(10, 10, 7)), CompactMask.of(disc(40, 48, 2))
    assert inside_fraction(left, parent) == 1.0 and inside_fraction(far, parent) == 0.0
    assert daughter_pair([parent], [far, left, right]) == (1, 2)
    assert daughter_pair([parent], [far, left]) is None
    assert daughter_pair([parent], [left, tiny]) is None  # not comparable in size
    shifted = CompactMask.of(disc(40, 66, 7))  # half outside this frame's mask, inside the previous one's
    assert daughter_pair([parent], [left, shifted]) is None
    assert daughter_pair([parent, CompactMask.of(disc(40, 60, 14))], [left, shifted]) == (0, 1)


def test_division_options_refuse_bad_values():
    with pytest.raises(ValueError, match="min_area_ratio must be in"):
        DivisionOptions(min_area_ratio=0)
    with pytest.raises(ValueError, match="neck_ratio must be below 1"):
        DivisionOptions(neck_ratio=1)
    with pytest.raises(ValueError, match="min_part_area must be an integer >= 1"):
        DivisionOptions(min_part_area=0.5)
    with pytest.raises(ValueError, match="must be a number"):
        DivisionOptions(cell_inside="half")
    with pytest.raises(ValueError, match="kind is one of"):
        DivisionProposal(3, 1, (np.ones(SHAPE, bool), np.ones(SHAPE, bool)), kind="merge")


class MaskRuntime:
    """Stands in for ModelRuntime where the finder reads masks: each 'result' is a bool (Y, X) mask."""

    class source:  # the attribute the finder reads
        height, width = SHAPE

    def object_box(self, result):
        rows, cols = np.flatnonzero(result.any(axis=1)), np.flatnonzero(result.any(axis=0))
        return None if rows.size == 0 else (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)

    def label_image(self, results, obj_ids, dtype, window=None):
        """As ModelRuntime.label_image with every mask's logits equal: ties go to the first object."""
        row0, col0, row1, col1 = window or (0, 0, *SHAPE)
        labels = np.zeros((row1 - row0, col1 - col0), dtype=dtype)
        for result, obj_id in zip(results[::-1], obj_ids[::-1]):
            if result is not None:
                labels[result[row0:row1, col0:col1]] = obj_id
        return labels


def scripted_object(obj_id: int, tracked: dict[int, np.ndarray], prompted: dict[int, np.ndarray]) -> TrackedObject:
    obj = TrackedObject(obj_id)
    obj.tracked.update(tracked)
    for t, mask in prompted.items():
        obj.cond[t] = mask
        obj.prompt_steps[t] = [FramePrompt(np.zeros((0, 2)), np.zeros(0, np.int64), mask=mask)]
    return obj


def test_finder_proposes_splits_of_tracked_masks_and_cells_that_start_inside_a_mask():
    peanut = disc(40, 38, 10) | disc(40, 58, 10)
    objects = {
        1: scripted_object(1, {4: peanut}, {0: disc(40, 48, 12)}),  # tracked on 4, came apart
        2: scripted_object(2, {4: peanut}, {0: disc(40, 48, 12), 5: peanut}),  # a prompt later: not proposed
        3: scripted_object(3, {3: disc(20, 20, 12), 4: disc(20, 20, 12)}, {0: disc(20, 20, 12)}),
        7: scripted_object(7, {}, {4: disc(20, 13, 6)}),  # two cells that start on frame 4 inside 3's mask
        8: scripted_object(8, {}, {4: disc(20, 27, 6)}),
    }
    lineage = Lineage()
    tracked = [objects[i] for i in (1, 2, 3)]
    found = DivisionFinder().find(MaskRuntime(), objects, tracked, 4, lineage)
    assert [(p.parent, p.kind, p.daughters) for p in found] == [(1, "split", None), (3, "cells", (7, 8))]
    split = found[0]
    assert split.frame == 4 and split.parts[0].shape == SHAPE and np.array_equal(split.parts[0] | split.parts[1],
                                                                                  peanut)
    assert np.array_equal(found[1].parts[1], disc(20, 27, 6))
    lineage.reject(found[0])
    assert [p.parent for p in DivisionFinder().find(MaskRuntime(), objects, tracked, 4, lineage)] == [3]
    # segmented cells (re-seeding's leftovers) inside a mask: a "cells" proposal without daughters
    segmented = [CompactMask.of(disc(40, 38, 9)), CompactMask.of(disc(40, 58, 9))]
    found = DivisionFinder().find(MaskRuntime(), {1: objects[1]}, [objects[1]], 4, Lineage(), segmented)
    assert [(p.parent, p.kind, p.daughters) for p in found] == [(1, "cells", None)]
    assert np.array_equal(found[0].parts[0], disc(40, 38, 9))
    # a segmented cell that another object's own mask holds is that object's cell: the split rule decides
    neighbour = scripted_object(5, {}, {0: disc(40, 58, 9), 4: disc(40, 58, 10)})
    found = DivisionFinder().find(MaskRuntime(), {1: objects[1], 5: neighbour}, [objects[1]], 4, Lineage(),
                                  segmented)
    assert [(p.parent, p.kind) for p in found] == [(1, "split")]


def test_cells_rule_wants_two_separate_cells_not_a_cell_and_its_part():
    parent = CompactMask.of(disc(40, 48, 16))
    whole = CompactMask.of(disc(40, 48, 12))
    left_half, right_half = CompactMask.of(disc(40, 48, 12) & (XX < 48)), CompactMask.of(disc(40, 48, 12) & (XX >= 48))
    nucleus = CompactMask.of(disc(40, 48, 9))
    assert daughter_pair([parent], [whole, right_half]) is None  # the whole cell and its larger half
    assert daughter_pair([parent], [whole, nucleus]) is None  # a cell and its nucleus
    assert daughter_pair([parent], [whole, left_half, right_half]) == (1, 2)  # the halves are the pair
    touching = CompactMask.of(disc(40, 41, 7) | (disc(40, 55, 7) & (XX < 49)))  # a sliver shared with right
    assert daughter_pair([parent], [touching, CompactMask.of(disc(40, 55, 7))]) == (0, 1)
    assert daughter_pair([parent], [touching, CompactMask.of(disc(40, 55, 7))],
                         DivisionOptions(max_pair_overlap=0)) is None
    with pytest.raises(ValueError, match="max_pair_overlap must be a number in"):
        DivisionOptions(max_pair_overlap=1)


def test_proposals_keep_their_parts_compact_and_expand_them_on_read():
    first, second = disc(20, 20, 5), disc(20, 40, 5)
    proposal = DivisionProposal(3, 1, (first, second))
    assert sum(part.nbytes for part in proposal.compact_parts) < 300  # the crops, not two 80 x 96 frames
    parts = proposal.parts
    np.testing.assert_array_equal(parts[0], first)
    np.testing.assert_array_equal(parts[1], second)
    assert not parts[0].flags.writeable and proposal.part_areas == (int(first.sum()), int(second.sum()))
    assert DivisionProposal(3, 1, proposal.compact_parts).part_areas == proposal.part_areas
    with pytest.raises(ValueError, match="masks of one frame"):
        DivisionProposal(3, 1, (first, np.zeros((4, 4), bool)))


def test_a_rejected_split_covers_the_next_frames_while_the_mask_stays_split():
    lineage = Lineage()
    parts = (disc(40, 30, 8), disc(40, 60, 8))
    assert lineage.offer(DivisionProposal(3, 1, parts))
    lineage.reject(lineage.sorted_proposals()[0])
    assert not lineage.offer(DivisionProposal(4, 1, parts))  # still split on the next frame: the same answer
    assert not lineage.offer(DivisionProposal(5, 1, parts))
    assert lineage.offer(DivisionProposal(7, 1, parts))  # frame 6 was not split: a new proposal
    lineage.reject(lineage.sorted_proposals()[0])
    assert lineage.offer(DivisionProposal(8, 1, parts, kind="cells"))  # another rule's evidence is still offered
    cells = Lineage()
    cells.reject(DivisionProposal(3, 2, parts, kind="cells"))
    assert cells.offer(DivisionProposal(4, 2, parts))  # a rejected "cells" pair covers only its frame


def test_a_stale_pending_proposal_goes_when_its_frame_is_looked_at_again():
    lineage = Lineage()
    parts = (disc(40, 30, 8), disc(40, 60, 8))
    lineage.offer(DivisionProposal(2, 1, parts))
    assert not lineage.may_propose(1, 5)  # the earlier pending one blocks later ones
    lineage.drop_pending(2)
    assert lineage.sorted_proposals() == [] and lineage.offer(DivisionProposal(5, 1, parts))


def test_restore_refuses_what_no_edit_makes():
    from napari_sam2 import LineageError
    from napari_sam2.engine.lineage import LineageState

    lineage = Lineage()
    lineage.link(2, 1, 3)
    good = lineage.state()
    prompted = {1: [0], 2: [3], 3: [3]}
    for state, message in [
        (LineageState(parents=((1, 2), (2, 1)), starts=((1, 3), (2, 3))), "make a cycle"),
        (LineageState(parents=((2, 2),), starts=((2, 3),)), "its own parent"),
        (LineageState(parents=((2, 1),), starts=((2, 7),)), "outside the movie's 6 frame"),
        (LineageState(parents=((2, 1),), starts=((2, 0),)), "outside its object's span"),
    ]:
        with pytest.raises(LineageError, match=message):
            lineage.restore(state, prompted, 6)
        assert lineage.state() == good  # nothing changed
    lineage.restore(LineageState(), prompted, 6)
    assert lineage.parents == {}
