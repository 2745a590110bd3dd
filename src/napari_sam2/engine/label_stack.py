"""A tracking session's results seen as a (T, Y, X) label stack, computed frame by frame on access."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .session import TrackingSession


class SessionLabels:
    """Lazy, read-only (T, Y, X) label stack of a session (label = obj_id, 0 = background).

    Integer indexing ``stack[t]`` renders frame ``t`` from the session's current results, so exporting a
    long movie never holds more than one label frame. ``np.asarray(stack)`` builds the whole stack.
    """

    def __init__(self, session: TrackingSession) -> None:
        self._session = session

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self._session.num_frames, *self._session.frame_shape)

    @property
    def dtype(self) -> np.dtype:
        return self._session.label_dtype

    @property
    def ndim(self) -> int:
        return 3

    @property
    def max_label(self) -> int:
        """The largest object id (0 without objects): an upper bound of every label in the stack."""
        return max(self._session.obj_ids, default=0)

    def __len__(self) -> int:
        return self._session.num_frames

    def __getitem__(self, frame: int) -> np.ndarray:
        if isinstance(frame, (bool, np.bool_)) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"a session label stack is indexed by one frame number, got {frame!r}")
        return self._session.label_image(int(frame))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        stack = np.stack([self[t] for t in range(len(self))])
        return stack if dtype is None else stack.astype(dtype)
