"""Which links of a session's lineage fit a label stack, for the widget's exports and its Tracks layer.

Qt-free, numpy only. The user may edit the output Labels layer after a division (erase a daughter, paint the parent
on a later frame): the exports would then refuse the whole lineage (``ParentsError``). The widget keeps the links that
still fit (both objects have pixels, the parent's last frame comes before the daughter's first) and names the others
in one warning. Labels are (T, Y, X), frames indices along the tracked axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..label_tracks import label_frames


def object_frames(labels: Any, obj_ids: set[int]) -> dict[int, tuple[int, int]]:
    """(first, last) frame of each of ``obj_ids`` that has pixels in ``labels`` (one pass, a frame at a time)."""
    bounds: dict[int, tuple[int, int]] = {}
    wanted = np.asarray(sorted(obj_ids), dtype=np.int64)
    for t, frame in enumerate(label_frames(labels)):
        present = np.intersect1d(np.unique(frame), wanted).tolist()
        for obj_id in present:
            first = bounds.get(obj_id, (t, t))[0]
            bounds[obj_id] = (first, t)
    return bounds


def fitting_links(labels: Any, parents: Mapping[int, int]) -> tuple[dict[int, int], dict[int, str]]:
    """Split ``parents`` ({child: parent}) into the links that fit ``labels`` and those that do not, with why."""
    if not parents:
        return {}, {}
    bounds = object_frames(labels, {*parents, *parents.values()})
    kept: dict[int, int] = {}
    dropped: dict[int, str] = {}
    for child, parent in sorted(parents.items()):
        missing = [obj for obj in (child, parent) if obj not in bounds]
        if missing:
            dropped[child] = f"object {missing[0]} has no pixels"
        elif bounds[parent][1] >= bounds[child][0]:
            dropped[child] = (f"{parent} is on frame {bounds[parent][1]}, not before {child}'s first frame "
                              f"{bounds[child][0]}")
        else:
            kept[child] = parent
    return kept, dropped


def describe_dropped(parents: Mapping[int, int], dropped: Mapping[int, str]) -> str:
    """One line naming the links left out, e.g. "links left out (they no longer fit the labels): 8 -> 3 (object 8
    has no pixels)"; empty when none were."""
    if not dropped:
        return ""
    items = "; ".join(f"{child} -> {parents[child]} ({why})" for child, why in sorted(dropped.items()))
    return f"links left out (they no longer fit the labels): {items}"
