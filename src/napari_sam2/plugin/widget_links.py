"""Link and Unlink in the dock widget: make the selected object a daughter of a given parent, or remove its link.

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`, through
:class:`~napari_sam2.plugin.widget_lineage.LineageActions`, whose :meth:`_lineage_job` runs the session's ``link`` /
``unlink`` and writes what they change in the Labels layer as one undo step (the parent's frames from the child's
first frame on, the child's before it). Frames are indices along the tracked axis.
"""

from __future__ import annotations

from .job_runner import Job


class LinkActions:
    """Link the selected object to a parent; unlink it."""

    def link_selected(self, parent: int) -> Job | None:
        """The Link button: make ``parent`` the parent of the selected object (see :meth:`link_objects`)."""
        child = self.objects.current_id
        if child is None:
            self._say("Select the daughter in the object list first, then Link it to its parent's id.")
            return None
        return self.link_objects(child, parent)

    def link_objects(self, child: int, parent: int) -> Job | None:
        """Make ``parent`` the parent of ``child`` (``session.link``): the parent ends the frame before the child's
        first prompt; the Labels layer follows. Returns the job (None when nothing was started)."""
        session = self.controller.session
        frames = session.prompted_frames(child) if session is not None and child in session.obj_ids else []
        if session is not None and parent not in session.obj_ids:
            self._fail(f"object {parent} is not tracked: pick the id of an object the model has as the parent")
            return None
        if not frames:
            self._fail(f"object {child} has no prompt: give it one on its first frame before linking it")
            return None
        first = min(frames)
        return self._lineage_job(f"link object {child} to {parent}", lambda s: (s.link(child, parent), [child])[1],
                                 parent, first, lambda _: f"Object {child} linked to parent {parent}, which ends at "
                                                          f"frame {first - 1}.", daughters=[child])

    def unlink_object(self, child: int | None = None) -> Job | None:
        """Remove the link of ``child`` (default: the selected object) to its parent, or the start it kept when its
        parent was removed; the parent's end is lifted (its frames after come back at the next propagation). One
        undo step with the Labels pixels it changes. Returns the job (None when nothing was started)."""
        session = self.controller.session
        child = self.objects.current_id if child is None else child
        if session is None or child is None or child not in session.obj_ids:
            self._say("Select an object the model has (one with a parent) first.")
            return None
        parent = session.lineage().get(child)
        start = session.object_span(child)[0]
        if parent is None and start is None:
            self._say(f"Object {child} has no parent to unlink from.")
            return None
        first = start if start is not None else min(session.prompted_frames(child), default=0)
        source = f"from {parent}" if parent is not None else "from its removed parent"
        said = (f"Object {child} unlinked {source}; propagate to track "
                f"{parent if parent is not None else child} past its old bound again.")
        return self._lineage_job(f"the unlink of object {child} {source}", lambda s: (s.unlink(child), [])[1],
                                 parent, first, lambda _: said, daughters=[child], focus=False)
