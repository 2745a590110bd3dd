"""Encoding ahead: when the viewer rests on a frame, compute in the background what the next click there needs.

A click on a frame whose image features are not cached pays for the image encoder (seconds on a CPU), and a
correction on a tracked frame also pays for memory attention. While the user looks at a frame before clicking, that
work can already run: after ``delay_ms`` without navigation the widget submits a *speculative* job that asks the
session to precompute the frame (and, for the selected object, its memory-conditioned features). It is the same
computation, so results do not change. Any user action cancels it (navigation here; prompts, propagation and every
other job through the runner), and the engine stops within a fraction of a second (it polls between model blocks).
"""

from __future__ import annotations

import logging
from typing import Any

from qtpy.QtCore import QTimer

from .job_runner import Job, JobEnd

logger = logging.getLogger(__name__)
DWELL_MS = 1000  # how long the viewer must rest on a frame before encoding starts


class DwellPrecompute:
    """Watches the viewer's position for one dock widget and starts speculative encoding on a resting frame."""

    def __init__(self, widget: Any, delay_ms: int | None = DWELL_MS) -> None:
        self._widget = widget
        self.delay_ms = delay_ms
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._start)
        widget.viewer.dims.events.current_step.connect(self._on_navigation)
        self.last_frame: int | None = None  # the frame last precomputed to the end (diagnostics and tests)

    @property
    def pending(self) -> bool:
        """True while waiting for the dwell time to pass."""
        return self._timer.isActive()

    def _on_navigation(self, _event: Any = None) -> None:
        self._widget.runner.cancel_speculative()
        self.restart()

    def restart(self) -> None:
        """Start waiting again (nothing happens without a session: its contrast limits are set at the first prompt)."""
        self._timer.stop()
        if self.delay_ms is not None and self._widget.controller.session is not None:
            self._timer.start(self.delay_ms)

    def stop(self) -> None:
        self._timer.stop()
        self._widget.runner.cancel_speculative()

    def close(self) -> None:
        """Stop for good (the widget closes): no more encoding ahead on navigation."""
        self.stop()
        self.delay_ms = None
        self._widget.viewer.dims.events.current_step.disconnect(self._on_navigation)

    def _start(self) -> None:
        widget = self._widget
        session = widget.controller.session
        if session is None or not widget.runner.idle or widget.controller.target is None:
            return
        frame = widget.current_frame()
        obj_id = widget.objects.current_id  # (an object without results there just gets the encode)

        def work(context: Any) -> bool:
            return session.precompute(frame, obj_id, should_stop=context.should_stop)

        def done(complete: bool) -> None:
            if complete:
                self.last_frame = frame

        def end(result: JobEnd) -> None:
            if result.status == "failed":  # the click there will report it properly
                logger.debug("napari-sam2: encoding frame %s ahead failed: %s", frame, result.error)

        widget.runner.submit(Job("encoding ahead", work, on_result=done, on_end=end, speculative=True))
