"""The progress bar of a batch (``track_many``): movies done, failures so far, the frames of the running movies
(worker events, see ``batch_movie.TOPIC``) or, while no worker has started, what the batch waits for."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from .batch_sheet import movie_stem

SHOWN_RUNNING = 4  # running movies named in the postfix; more are counted ("+12 running")


class BatchProgress:
    """A tqdm bar over movies whose postfix shows the failures so far, the frames of the running movies (fed by
    worker events) or, while no worker is there, what the batch waits for."""

    def __init__(self, total: int, initial: int, disabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, unit="movie", desc="batch", disable=disabled,
                         file=sys.stderr)
        self._running: dict[int, str] = {}
        self._ended: set[int] = set()  # rows finished: a late event (a dead worker's attempt) is not shown again
        self._failed = 0
        self._waiting: str | None = None
        self._lock = threading.Lock()  # events arrive on the client's event loop thread

    def event_handler(self, batch: str):
        def handle(event: tuple[float, dict[str, Any]]) -> None:
            message = event[1]
            if not isinstance(message, dict) or message.get("batch") != batch:
                return  # another batch on the same scheduler
            if message["event"] in ("start", "frame"):
                done, total = message["done"], message["total"]
                with self._lock:
                    if message["row"] in self._ended:
                        return
                    self._running[message["row"]] = f"{movie_stem(Path(message['movie']))} {done}/{total or '?'}"
                    self._show()

        return handle

    def finished(self, row: Any, result: dict[str, Any]) -> None:
        with self._lock:
            self._running.pop(row.row, None)
            self._ended.add(row.row)
            self._failed += result["status"] == "failed"
            self._bar.update(1)
            self._show()

    @property
    def shown(self) -> bool:
        return not self._bar.disable

    def waiting(self, message: str | None) -> None:
        with self._lock:
            if message != self._waiting:
                self._waiting = message
                self._show()

    def _show(self) -> None:
        parts = [f"{self._failed} failed"] if self._failed else []
        running = list(self._running.values())
        if len(running) > SHOWN_RUNNING:
            running = [*running[:SHOWN_RUNNING], f"+{len(running) - SHOWN_RUNNING} running"]
        parts += [self._waiting] if self._waiting and not self._running else running
        self._bar.set_postfix_str(", ".join(parts), refresh=True)

    def close(self) -> None:
        self._bar.close()
