"""Reading and preprocessing the next frames of a propagation while the model works on the current one.

Frames may come from slow storage (a memory-mapped TIFF on a network share, a chunked zarr or a lazy dask
array) and need intensity mapping and resizing before the image encoder sees them. That work does not depend
on the model, so one background thread does it for the frames a propagation will visit next.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import torch


class FramePrefetcher:
    """Prepares model inputs of upcoming frames in one background thread, at most ``depth`` ahead.

    ``load(frame)`` must return the frame's model input; a frame that was not prefetched is loaded by the
    caller as usual (:meth:`take` returns None). Errors of a prefetched frame (a NaN frame, say) are raised
    by :meth:`take` for that frame, at the same step as without prefetching.
    """

    def __init__(self, load: Callable[[int], torch.Tensor], depth: int = 2) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"prefetch depth must be an integer >= 0, got {depth!r}")
        self._load = load
        self.depth = depth
        self._executor: ThreadPoolExecutor | None = None
        self._pending: OrderedDict[int, Future] = OrderedDict()

    def schedule(self, frames: Iterable[int], keep: int | None = None) -> None:
        """Start preparing ``frames`` (the next ones needed, in order); only the first ``depth`` are kept,
        plus ``keep`` (the frame needed now) if it is already being prepared."""
        wanted = list(dict.fromkeys(frames))[:self.depth]
        for frame in [f for f in self._pending if f not in wanted and f != keep]:
            self._pending.pop(frame).cancel()
        for frame in wanted:
            if frame not in self._pending:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam2-prefetch")
                self._pending[frame] = self._executor.submit(self._load_inference, frame)

    def _load_inference(self, frame: int) -> torch.Tensor:
        # Inference mode is per thread: without it here, prefetched frames would be normal tensors and the
        # caller's inference tensors, and a compiled image encoder would keep one graph for each kind.
        with torch.inference_mode():
            return self._load(frame)

    def take(self, frame: int) -> torch.Tensor | None:
        """The prepared input of ``frame`` (waiting for it if needed), or None if it was not scheduled."""
        future = self._pending.pop(frame, None)
        return None if future is None else future.result()

    def cancel(self) -> None:
        """Forget every scheduled frame (a frame being read finishes in the background and is discarded)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    @property
    def scheduled(self) -> list[int]:
        """Frames scheduled and not yet taken, in order."""
        return list(self._pending)
