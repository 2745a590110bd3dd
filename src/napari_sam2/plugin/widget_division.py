"""Manual division in the dock widget: select the parent, go to the frame, press "Divide here", then click (or paint
and send, Shift-M) each of the two daughters on that frame as any new object; both are then linked to the parent
(``session.link``), which ends the frame before. Esc or a second press cancels (the daughters drawn so far go, the
parent's pixels they covered come back); so does Undo of the finished division (the daughters it drew go too). A
division under way ends when its session is replaced (restart, another image, a loaded file) or its parent
removed. A one-line status message says what to do at each step.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`, through
:class:`~napari_sam2.plugin.widget_lineage.LineageActions` (which writes the step, :meth:`_lineage_job`). Frames are
indices along the tracked axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DIVIDE_TEXT = "Divide here"


@dataclass
class ManualDivision:
    """A manual division under way in ``session``: the parent, the frame its daughters start on, the daughters
    drawn so far and the object waiting for its first prompt there."""

    session: Any
    parent: int
    frame: int
    daughters: list[int] = field(default_factory=list)
    pending: int | None = None


class ManualDivisionActions:
    """Divide here, the daughters' prompts, cancel."""

    # ------------------------------------------------------------------ manual division

    def divide_here(self) -> bool:
        """Start dividing the selected object on the current frame (its two daughters are clicked or painted next);
        pressed again while a division is under way, cancel it. True when a division was started."""
        if self._dividing is not None:
            self.cancel_division()
            return False
        parent, session = self.objects.current_id, self.controller.session
        if parent is None or session is None or parent not in session.obj_ids:
            self._say("Select the object that divides (one the model already has) in the list first.")
            return False
        frame = self.current_frame()
        later = [f for f in session.prompted_frames(parent) if f >= frame]
        start, _ = session.object_span(parent)
        problem = ("no frame comes before frame 0: go to the first frame of the daughters" if frame == 0 else
                   f"object {parent} starts on frame {start}: divide it on a later frame"
                   if start is not None and frame <= start else
                   f"object {parent} has prompts on frames {', '.join(map(str, later))}, at or after frame {frame}: "
                   "remove them first (the parent ends the frame before its daughters start)" if later else "")
        if problem:
            self._fail(problem)
            return False
        if self._refuse_while_working("divide"):
            return False
        self._dividing = ManualDivision(session, parent, frame)
        self.divide_button.setText("Cancel division (Esc)")
        self._next_daughter()
        return True

    def _next_daughter(self) -> None:
        division = self._dividing
        division.pending = self.new_object()
        which = "second" if division.daughters else "first"
        self._say(f"Dividing object {division.parent} on frame {division.frame}: click (or paint, then Shift-M) the "
                  f"{which} daughter, object {division.pending}. Esc or the button cancels.")

    def _after_prompt(self, frame: int, obj_id: int) -> None:
        """A prompt job has given ``obj_id`` a mask on ``frame``: the next step of a manual division, if any."""
        division, session = self._dividing, self.controller.session
        if division is None or obj_id != division.pending or frame != division.frame or session is None:
            return
        if obj_id not in session.obj_ids or frame not in session.prompted_frames(obj_id):
            return  # (its prompts there were removed)
        division.daughters.append(obj_id)
        division.pending = None
        if len(division.daughters) < 2:
            self._next_daughter()
            return
        self._end_manual_division()
        parent, daughters = division.parent, list(division.daughters)

        def link_both(s: Any) -> list[int]:
            for daughter in daughters:
                s.link(daughter, parent)
            return daughters

        def said(ids: list[int]) -> str:
            return (f"Object {parent} divided into {ids[0]} and {ids[1]} on frame {frame}: it ends at frame "
                    f"{frame - 1}. Propagate forward from frame {frame} to track them.")

        # (queued: called back by the daughter's prompt job, which is still running)
        self._lineage_job(f"the division of object {parent}", link_both, parent, frame, said, daughters=daughters,
                          queue=True, drawn=daughters)

    def _end_manual_division(self) -> None:
        """Forget the division under way (its objects stay as they are)."""
        self._dividing = None
        self.divide_button.setText(DIVIDE_TEXT)

    def cancel_division(self) -> None:
        """Cancel the manual division under way (Esc): the daughters drawn so far are removed again."""
        division = self._dividing
        if division is None:
            return
        if self._refuse_while_working("cancel the division"):
            return
        self._end_manual_division()
        self._remove_daughters(division.parent, division.frame, [*division.daughters, division.pending])
        self._say(f"Division cancelled: object {division.parent} goes on as before.")

    def _remove_daughters(self, parent: int, frame: int, daughters: list[int | None], rewrite: bool = True) -> None:
        """Remove the daughters drawn for a manual division (cancelled, or undone); with ``rewrite`` the parent's
        pixels they covered on ``frame`` come back (a cancel: the session still has them; an undone division does
        not, they come back at the next propagation)."""
        for obj_id in daughters:
            if obj_id is not None and obj_id in self.objects:
                self.remove_object(obj_id, quiet=True)
        session = self.controller.session
        if rewrite and session is not None and parent in session.obj_ids:  # where a daughter covered it, it is back
            self._write_all(self.controller.object_writes(session, [frame], [parent], self.controller.label_dtype))
        if parent in self.objects:
            self.objects.select_id(parent)
