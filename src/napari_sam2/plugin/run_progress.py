"""Progress and time left of a propagation run (Qt-free).

Why not elapsed / done: a run starts with steps that cost almost nothing (painted masks handed over, the start frame,
which is a prompted frame and is not tracked), and each tracked frame gets slower while the memory bank fills (up to
7 remembered frames). An average over everything since the start therefore promises too little time. The estimate
here uses only tracked frames after the first, and the recent ones: the pace that the rest of the run will have.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

RECENT_STEPS = 3  # tracked frames whose duration sets the pace


class RunProgress:
    """Counts the ``total`` steps of a run; :meth:`step` after each one, ``tracked`` for a frame the model tracked."""

    def __init__(self, total: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = max(int(total), 0)
        self.done = 0
        self._clock = clock
        self.started = clock()
        self._last = self.started
        self._tracked_steps = 0
        self._recent: deque[float] = deque(maxlen=RECENT_STEPS)

    def step(self, tracked: bool = True) -> None:
        now = self._clock()
        if tracked:
            self._tracked_steps += 1
            if self._tracked_steps > 1:  # the first one also paid for starting up (prefetch, first encodes)
                self._recent.append(now - self._last)
        self._last = now
        self.done += 1

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def seconds_left(self) -> float | None:
        """Estimated seconds to the end of the run; None until the pace is known."""
        if not self._recent:
            return None
        pace = sum(self._recent) / len(self._recent)
        return pace * max(self.total - self.done, 0)

    def text(self) -> str:
        """E.g. "12/40 steps, about 35 s left"."""
        left = self.seconds_left()
        tail = "" if left is None or self.done >= self.total else f", about {_duration(left)} left"
        return f"{self.done}/{self.total} steps{tail}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    return f"{seconds / 60:.0f} min"
