"""Divisions in the dock widget: review the session's proposals, divide by hand, link / unlink, undo those steps.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`. The session owns the lineage
(``TrackingSession.lineage``, ``division_proposals``, ...); the widget lists the pending proposals
(:class:`~napari_sam2.plugin.division_review.DivisionReview`), shows a chosen one (its frame, and its two parts in a
temporary "division preview" Labels layer), and writes what a decision changes through the Labels writer: from the
division frame on the parent's pixels go and the daughters' appear, one undo step of the Labels layer; no other
object's pixels and no edit of the user change. Every lineage step is kept (:mod:`.lineage_steps`) so that Undo in
the Divisions box takes back the lineage and the Labels step together (:mod:`.widget_lineage_undo`, also after
Ctrl-Z in the Labels layer). Manual division ("Divide here") is :mod:`.widget_division`, Link / Unlink
:mod:`.widget_links`. Frames are indices along
the tracked axis; masks are (Y, X) with (row, col) = (y, x).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .division_review import describe_proposal
from .job_runner import Job, JobEnd
from .label_ids import next_free_label
from .lineage_steps import LineageStep, frames_holding, plane_changes
from .widget_division import ManualDivision, ManualDivisionActions
from .widget_lineage_undo import LineageUndo
from .widget_links import LinkActions

PREVIEW_NAME = "division preview"


class LineageActions(ManualDivisionActions, LinkActions, LineageUndo):
    """Division proposals, manual division, link / unlink and their undo."""

    def _init_lineage(self) -> None:
        self._lineage_steps: list[LineageStep] = []
        self._dividing: ManualDivision | None = None
        self._preview: Any = None  # the "division preview" Labels layer while a proposal is shown
        self._watched: Any = None  # the Labels layer whose redraws are checked for an undone lineage step
        self._reverting = False
        self.tracks_layer: Any = None  # the Tracks layer added by add_tracks_layer (kept up to date)

    def _connect_lineage_controls(self) -> None:
        self.divisions.chosen.connect(self.review_proposal)
        self.divisions.accept_requested.connect(self.accept_proposal)
        self.divisions.reject_requested.connect(self.reject_proposal)
        self.divide_button.clicked.connect(self.divide_here)
        self.unlink_button.clicked.connect(lambda: self.unlink_object())
        self.link_button.clicked.connect(lambda: self.link_selected(self.link_parent_spin.value()))
        self.undo_lineage_button.clicked.connect(self.undo_lineage)

    # ------------------------------------------------------------------ what is shown

    def refresh_lineage(self, tracks: bool = True) -> None:
        """Show the session's lineage: pending proposals, each object's parent, the Tracks layer (``tracks``)."""
        session = self.controller.session
        proposals = session.division_proposals() if session is not None else []
        self.divisions.set_proposals(proposals)
        if self._preview is not None and self.divisions.current_row is None:
            self._remove_preview()
        self.objects.set_parents(session.lineage() if session is not None else {})
        if self._lineage_steps and self._lineage_steps[-1].session is not session:
            self._lineage_steps.clear()  # steps of an earlier session (restart, another image, a loaded file)
        division = self._dividing
        if division is not None and (division.session is not session or division.parent not in session.obj_ids):
            self._end_manual_division()  # its session was replaced, or its parent removed
        self.undo_lineage_button.setEnabled(bool(self._lineage_steps))
        if tracks:
            self.refresh_tracks()

    def _list_new_proposals(self, proposals: Sequence[Any]) -> None:
        """List proposals a running propagation has just made (the session itself is busy: not read)."""
        listed = {(p.frame, p.parent): p for p in [*self.divisions.proposals, *proposals]}
        self.divisions.set_proposals([listed[key] for key in sorted(listed)])

    def lineage_after_run(self, divisions: str, proposals: list[Any]) -> None:
        """After a propagation: list what it proposed (or, in "auto", the daughters it made); tracks follow."""
        session = self.controller.session
        if divisions == "auto" and proposals and session is not None:
            self.objects.add_ids(session.obj_ids)
        self.refresh_lineage()

    def review_proposal(self, row: int) -> Any:
        """Show proposal ``row``: its frame (the viewer's slider of the tracked axis) and its two parts in the
        temporary "division preview" layer; returns the proposal."""
        proposal = self.divisions.proposals[row]
        self.show_frame(proposal.frame)
        self._show_preview(proposal)
        self._centre_on(proposal)
        self.scroll.ensureWidgetVisible(self.divisions.accept_button, 0, 10)  # (Accept / Reject in view)
        self._say(f"Proposal {describe_proposal(proposal)}: its parts are in the {PREVIEW_NAME!r} layer. Accept or "
                  "Reject it.")
        return proposal

    def _show_preview(self, proposal: Any) -> None:
        first, second = (np.asarray(part, dtype=bool) for part in proposal.parts)
        data = np.zeros(first.shape, np.uint8)
        data[first], data[second] = 1, 2
        layer = self.labels_layer
        name = f"{PREVIEW_NAME} (frame {proposal.frame}, object {proposal.parent})"
        if self._preview is not None and self._preview in self.viewer.layers:
            self._preview.data, self._preview.name = data, name
            return
        active = self.viewer.layers.selection.active
        geometry = {} if layer is None else {"scale": layer.scale[-2:], "translate": layer.translate[-2:]}
        self._preview = self.viewer.add_labels(data, name=name, opacity=1.0, **geometry)
        self._preview.contour = max(1, round(min(first.shape) / 200))  # outlines: the parts over the labels
        if active is not None and active in self.viewer.layers:
            self._activate(active)  # clicks keep reaching SAM 2

    def _centre_on(self, proposal: Any) -> None:
        """Move the view (not the zoom) so that the proposal's parts are in the middle of the canvas."""
        rows, cols = np.nonzero(np.asarray(proposal.parts[0]) | np.asarray(proposal.parts[1]))
        layer = self.labels_layer
        if layer is None or not rows.size or self.viewer.dims.ndisplay != 2:
            return
        here = [float(v) for v in self.viewer.dims.point[-layer.ndim:]]
        world = layer.data_to_world(layer.world_to_data(here)[:-2].tolist() + [rows.mean(), cols.mean()])
        _camera(self.viewer).center = tuple(float(v) for v in np.asarray(world)[-2:])

    def _remove_preview(self) -> None:
        preview, self._preview = self._preview, None
        if preview is not None and preview in self.viewer.layers:
            self.viewer.layers.remove(preview)

    # ------------------------------------------------------------------ decisions

    def _proposal(self, row: int | None) -> Any:
        row = self.divisions.current_row if row is None else row
        if row is None or not 0 <= row < len(self.divisions.proposals):
            self._say("Choose a division proposal in the list first.")
            return None
        return self.divisions.proposals[row]

    def accept_proposal(self, row: int | None = None) -> Job | None:
        """Accept proposal ``row`` (default: the chosen one): the parent ends the frame before, the daughters (its
        two parts as new objects, or the two cells it names) start there; the Labels layer follows (one undo step).
        Returns the job (None when nothing was started; the status says why)."""
        proposal = self._proposal(row)
        if proposal is None:
            return None
        parent, frame = proposal.parent, proposal.frame

        def said(daughters: list[int]) -> str:
            return (f"Division accepted: object {parent} ends at frame {frame - 1}; daughters "
                    f"{' and '.join(map(str, daughters))} start on frame {frame}. Propagate forward from frame "
                    f"{frame} to track them; Undo (Divisions box) takes it back.")

        return self._lineage_job(f"accept the division of object {parent}", lambda s: s.accept_division(proposal),
                                 parent, frame, said, daughters=proposal.daughters or ())

    def reject_proposal(self, row: int | None = None) -> bool:
        """Reject proposal ``row`` (default: the chosen one): nothing changes but the list, and the session does
        not propose it again. False when nothing was done (the status says why)."""
        proposal = self._proposal(row)
        session = self.controller.session
        if proposal is None or session is None or self._refuse_while_working("reject the division"):
            return False
        state = session.lineage_state()
        try:
            session.reject_division(proposal)
        except (KeyError, ValueError) as error:
            self._fail(error)
            return False
        self._push_step(LineageStep(f"the rejection of object {proposal.parent}'s division on frame "
                                    f"{proposal.frame}", session, state))
        self._remove_preview()
        self.refresh_lineage()
        self._say(f"Rejected: object {proposal.parent} goes on past frame {proposal.frame - 1} (not proposed again "
                  "there).")
        return True

    # ------------------------------------------------------------------ steps and their undo

    def _lineage_job(self, name: str, step: Callable[[Any], list[int]], parent: int | None, first: int,
                     said: Callable[[list[int]], str], daughters: Sequence[int] = (),
                     queue: bool = False, focus: bool = True, drawn: Sequence[int] = ()) -> Job | None:
        """Run a lineage ``step(session) -> daughters`` in the worker (a division may run the model on its parts),
        then write the parent's pixels from frame ``first`` on and the daughters' (the existing objects
        ``daughters``: also before it, where they end) as one undo step, and keep the step. ``focus``: the parent
        is written also where the user painted it (a division ends it there); ``drawn``: objects drawn for the step
        (a manual division's daughters), removed when it is undone. Refused while a job runs unless
        ``queue`` (then it waits for that job). Objects the step creates get ids above every label of the layer."""
        controller, writer = self.controller, self.controller.writer
        session = controller.session
        if session is None or writer is None or (not queue and self._refuse_while_working(name)):
            return None
        dtype = controller.label_dtype
        parents = [] if parent is None else [parent]
        frames: list[int] = []
        state: list[Any] = []

        def begin() -> None:  # (GUI thread, once nothing else runs: the layer and the lineage as the step finds them)
            frames[:] = sorted({first, *frames_holding(writer.read_frame, parents, first, writer.n_frames),
                                *frames_holding(writer.read_frame, daughters, 0, first)})
            state[:] = [session.lineage_state()]
            self._seed_new_ids(session)

        def work(_context: Any) -> tuple[list[int], list[int], list[Any]]:
            before = set(session.obj_ids)
            try:
                daughters = [int(i) for i in step(session)]
            except Exception:
                session.restore_lineage(state[0])  # a step refused half-way leaves the lineage as it was
                raise
            writes = controller.object_writes(session, frames, [*parents, *daughters], dtype,
                                              focus=parent if focus else None)
            return daughters, [i for i in daughters if i not in before], writes

        def done(result: tuple[list[int], list[int], list[Any]]) -> None:
            daughters, new_ids, writes = result
            planes = {write.frame: np.array(writer.read_frame(write.frame)) for write in writes}
            self._write_all(writes)
            self.objects.add_ids(daughters)
            self._push_step(LineageStep(name, session, state[0], tuple(new_ids),
                                        plane_changes(planes, writer.read_frame), (*parents, *daughters),
                                        tuple(drawn), first))
            self._remove_preview()
            self.refresh_lineage()
            self._say(said(daughters))

        def end(result: JobEnd) -> None:
            self._end_busy_job(result)
            if result.current and result.status != "done":
                self.refresh_lineage()

        self._say(f"{name[0].upper()}{name[1:]}…")
        return self._submit(Job(name, work, on_start=begin, on_result=done, on_end=end), busy=True)

    def _seed_new_ids(self, session: Any) -> None:
        """Objects the session creates itself (daughters, re-seeded cells) get ids above every label of the output
        layer and every listed object, so that none takes the value of a label painted there (GUI thread)."""
        layer = self.labels_layer
        floor = max(next_free_label(layer) if layer is not None else 1, max(self.objects.ids, default=0) + 1)
        session.new_ids_from(floor)

    def _end_auto_divisions(self, session: Any, proposals: Sequence[Any]) -> None:
        """After an "auto" run (done or cancelled; GUI thread): each parent it divided loses its pixels from the
        division frame to the last frame, also on frames the run did not visit (the run wrote only its own)."""
        writer = self.controller.writer
        if writer is None or session is None:
            return
        lineage = session.lineage()
        writes = []
        for proposal in proposals:
            parent, frame = proposal.parent, proposal.frame
            if parent not in session.obj_ids or session.object_span(parent)[1] != frame - 1:
                continue  # not accepted (left for review), or removed meanwhile
            daughters = [child for child, p in lineage.items() if p == parent]
            frames = frames_holding(writer.read_frame, [parent], frame, writer.n_frames)
            writes += self.controller.object_writes(session, frames, [parent, *daughters],
                                                    self.controller.label_dtype, focus=parent)
        for write in writes:
            self._write(write)

def describe_proposals(divisions: str, proposals: list[Any]) -> str:
    """The end of a run's status line: how many divisions it proposed (or accepted, in "auto")."""
    if not proposals:
        return ""
    count = len(proposals)
    plural = "s" if count != 1 else ""
    if divisions == "auto":
        return f" {count} division{plural} accepted at once."
    return f" {count} division proposal{plural} to review in the Divisions box."


def division_writes(controller: Any, session: Any, accepted: list[Any], written: dict[int, set[int]],
                    dtype: np.dtype) -> list[Any]:
    """What the divisions a run accepted at once ("auto", worker thread) changed in the frames it wrote
    (``written``: frame -> the ids written there): each parent ends the frame before its division, its daughters
    begin there (results of theirs the run wrote before it go). Each such frame once, with its parents and
    daughters as the session has them now."""
    children: dict[int, list[int]] = {}
    for child, parent in session.lineage().items():
        children.setdefault(parent, []).append(child)
    ids_of: dict[int, set[int]] = {}
    for proposal in accepted:
        daughters = set(children.get(proposal.parent, []))
        for frame, present in written.items():
            ended = daughters if frame < proposal.frame else {proposal.parent}
            if frame == proposal.frame or present & ended:
                ids_of.setdefault(frame, set()).update({proposal.parent, *daughters})
    return [write for frame, ids in sorted(ids_of.items())
            for write in controller.object_writes(session, [frame], sorted(ids), dtype)]


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
