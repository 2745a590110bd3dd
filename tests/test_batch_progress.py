"""The batch's progress bar: failures counted, running movies named (at most a few, the rest counted), a late
event of a finished movie not shown again, and what the batch waits for while no movie runs."""

from __future__ import annotations

from pathlib import Path

from napari_sam2.batch_progress import SHOWN_RUNNING, BatchProgress
from napari_sam2.batch_sheet import MovieRow


def frame(row: int, done: int, total: int = 40, batch: str = "b") -> tuple[float, dict]:
    return (0.0, {"batch": batch, "row": row, "movie": f"/plate/w{row}.ome.tif", "event": "frame", "done": done,
                  "total": total})


def postfix(bar: BatchProgress) -> str:
    return bar._bar.postfix or ""


def test_the_postfix_follows_the_running_movies():
    bar = BatchProgress(total=10, initial=0, disabled=False)
    handle = bar.event_handler("b")
    try:
        bar.waiting("waiting for workers: 3 job(s) submitted, none started yet (check the queue: squeue)")
        assert "3 job(s) submitted" in postfix(bar)
        handle(frame(1, 5))
        handle(frame(2, 7, batch="another batch on the scheduler"))
        assert postfix(bar) == "w1 5/40"  # a running movie replaces the waiting message; others' events ignored
        for row in range(2, SHOWN_RUNNING + 3):
            handle(frame(row, 1))
        assert postfix(bar).endswith("+2 running") and postfix(bar).count("/40") == SHOWN_RUNNING
        bar.finished(MovieRow(row=1, movie=Path("/plate/w1.ome.tif"), prompts="auto"), {"status": "failed"})
        handle(frame(1, 6))  # late: its worker's last event, after the movie was collected
        assert postfix(bar).startswith("1 failed, w2 1/40") and "w1 " not in postfix(bar)
        assert bar._bar.n == 1
    finally:
        bar.close()
