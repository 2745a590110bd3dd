"""The session's population methods: seeding many objects at once, and objects that stop being tracked.

Part of :class:`~napari_sam2.engine.session.TrackingSession` (a mixin, so that the session module stays one
sitting's read): ``add_labels`` seeds from a segmentation, ``segment_all`` from SAM 2's automatic mask
generator, and ``stop_after_absent`` / ``stopped_objects`` are the objects that leave. Coordinates follow
napari: label stacks are (T, Y, X), masks (Y, X) = (row, col).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .automatic import AutomaticMaskOptions, generate_masks
from .frames import FrameSource
from .object_state import TrackedObject
from .presence import Presence
from .prompting import apply_mask_prompts
from .runtime import ModelRuntime
from .seeding import label_prompts


class PopulationMethods:
    """Seeding and stopping; mixed into TrackingSession, whose state these read."""

    source: FrameSource
    model: Any
    object_batch_size: int
    _runtime: ModelRuntime
    _objects: dict[int, TrackedObject]
    _presence: Presence
    _new_id_floor: int
    _check_prompt_spans: Callable[[Iterable[tuple[int, int]]], None]  # from the lineage mixin

    frame_shape: tuple[int, int]
    num_frames: int

    @torch.inference_mode()
    def add_labels(self, labels: Any, frames: int | Sequence[int], obj_ids: Sequence[int] | None = None) -> list[int]:
        """Start from an existing segmentation: every label on the given frames becomes a mask prompt for
        the object with that id (label value = obj_id).

        ``labels`` is a (T, Y, X) label stack (e.g. a napari Labels layer's data; only the given
        ``frames`` are read) or, with a single frame, a (Y, X) label image of that frame. ``obj_ids``
        restricts which labels are used (default: all non-zero ones). Everything is checked before the
        session changes. Returns the object ids that received a prompt, sorted.
        """
        frame_list = [frames] if isinstance(frames, (int, np.integer)) else list(frames)
        frame_list = [self.source.check_index(t) for t in frame_list]
        masks = label_prompts(labels, frame_list, obj_ids, self.frame_shape, self.num_frames)
        self._check_prompt_spans((frame, obj_id) for frame, obj_id, _ in masks)  # not outside a lineage span
        # A frame's masks go through the SAM heads object_batch_size at a time; each is kept as its crop.
        apply_mask_prompts(self._runtime, self._objects, masks, self.object_batch_size)
        return sorted({obj_id for _, obj_id, _ in masks})

    @torch.inference_mode()
    def segment_all(self, frame: int, options: AutomaticMaskOptions | None = None,
                    progress: Callable[[int, int], None] | None = None, first_id: int | None = None) -> list[int]:
        """Segment everything SAM 2 finds on ``frame`` (T index) and seed each mask as a new object.

        Runs the automatic mask generator (point grid, batched point prompts, predicted-IoU and stability
        filtering, box NMS, optional crop layers; the reference's defaults, see
        :class:`~napari_sam2.engine.automatic.AutomaticMaskOptions`) on the frame, then takes every mask, best
        first, as a mask prompt of a new object with ids (napari label values) ``first_id``, ``first_id + 1``,
        ...; empty masks are left out. ``first_id`` defaults to one above every existing object id; one that is
        not an integer >= 1, or not above every existing id, is a ValueError (checked before anything runs).
        Returns the new ids; objects already in the session are untouched. ``progress(done, total)`` is called
        after each batch of point prompts. Masks are bool (Y, X) = (row, col) at the frame's resolution.
        """
        frame = self.source.check_index(frame)
        first = self._first_new_id(first_id)
        runtime = self._runtime
        masks = generate_masks(self.model, self.source.normalized(frame), options,
                               features=runtime.features.get(frame), autocast=runtime.autocast, progress=progress)
        found = [mask for mask in masks if mask.area > 0]  # opened thresholds can let an empty mask through
        prompts = [(frame, first + i, mask.mask) for i, mask in enumerate(found)]
        apply_mask_prompts(runtime, self._objects, prompts, self.object_batch_size)
        return [obj_id for _, obj_id, _ in prompts]

    def new_ids_from(self, first: int) -> None:
        """Objects the session creates itself (daughters of :meth:`divide` / :meth:`accept_division`,
        re-seeded cells, :meth:`segment_all` without ``first_id``) get ids >= ``first`` and above every
        existing object: e.g. ``first`` one above every label of a napari Labels layer, so that a new object
        never takes the value of a label painted there (the session does not see the layer)."""
        self._new_id_floor = _checked_id("first", first)

    def _next_new_id(self) -> int:
        """The id of the next object the session creates itself (see :meth:`new_ids_from`)."""
        return max(max(self._objects, default=0) + 1, self._new_id_floor)

    def _first_new_id(self, first_id: int | None) -> int:
        """The first id of new objects: ``first_id`` checked, or :meth:`_next_new_id`."""
        top = max(self._objects, default=0)
        if first_id is None:
            return self._next_new_id()
        _checked_id("first_id", first_id)
        if first_id <= top:
            raise ValueError(f"first_id {first_id} is not above every existing object id (the largest is {top})")
        return int(first_id)

    # ------------------------------------------------------------------ objects that leave
    @property
    def stop_after_absent(self) -> int | None:
        """Absent frames in a row after which an object stops being tracked (None: never); setting None
        revives every stopped object."""
        return self._presence.stop_after_absent

    @stop_after_absent.setter
    def stop_after_absent(self, value: int | None) -> None:
        self._presence.set_limit(value)

    def stopped_objects(self) -> list[int]:
        """Ids of the objects no longer tracked because SAM 2 judged them absent on ``stop_after_absent``
        frames in a row (in :attr:`obj_ids` order). A new prompt for one revives it (it leaves this list at
        once); its results up to the stop are kept."""
        return self._presence.stopped(self._objects)


def _checked_id(name: str, value: Any) -> int:
    """An object id argument: an integer >= 1 (else one ValueError line)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
