"""The dock widget's file actions: save and load a session, export labels (TIFF, Cell Tracking Challenge, GEFF), add
a Tracks layer with the session's lineage graph (kept up to date as divisions are curated). The lineage exported
and shown is the session's, less the links that no longer fit the layer (e.g. a daughter erased by hand): those
are left out, named in one warning (:mod:`.lineage_fit`).

A mixin of :class:`~napari_sam2.plugin.widget.SAM2TrackingWidget`. Exports read the output Labels layer's tracked
plane, (T, Y, X) with (row, col) = (y, x), one frame at a time. Loading a session retires the running job and
replaces the session once that job has finished.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QFileDialog

from ..engine.session_file import save_session
from ..exports import lineage_tracks, write_ctc, write_label_tiff
from ..geff_files import write_geff
from .job_runner import Job
from .lineage_fit import describe_dropped, fitting_links
from .prompt_layers import add_session_prompts, read_prompts, set_prompt_defaults


class FileActions:
    """Session files, exports and the Tracks layer."""

    # ------------------------------------------------------------------ sessions

    def save_session(self, path: str | Path) -> Path:
        """Save every object's prompts to a session file (JSON)."""
        if self.controller.session is None:
            raise RuntimeError("nothing to save yet: give a prompt first")
        if self.runner.working:
            raise RuntimeError(f"busy ({self.runner.running_name}): save the session once it has finished")
        return save_session(self.controller.session, path)

    def load_session(self, path: str | Path) -> Job | None:
        """Re-create a saved session on the current image (same shape) and write its prompted frames. The running job
        is stopped first; the old session's prompt layers stay in the viewer as they were, new ones show the loaded
        prompts."""
        controller = self.controller
        if controller.model is None or controller.target is None or self.labels_layer is None:
            raise RuntimeError("load a model and pick the image (and output layer) before loading a session")
        if self._retarget_pending:
            raise RuntimeError("the image is being switched: load the session once it is done")
        self.runner.retire()
        model, frames, dtype = controller.model, controller.target.frames, controller.label_dtype

        def done(result: Any) -> None:
            session, writes = result
            controller.set_target(controller.target)  # the old session and what it was given end here
            controller.session = session
            self._drop_prompt_layers(keep_for_later=False)
            self._ensure_layers()
            self._write_all(writes)
            for obj_id in session.obj_ids:
                self.objects.add_id(obj_id, select=False)
            current = self.objects.current_id or 1
            add_session_prompts(session, controller.target, self.points_layer, self.shapes_layer)
            set_prompt_defaults(self.points_layer, obj_id=current, positive=not self.negative_check.isChecked())
            set_prompt_defaults(self.shapes_layer, obj_id=current)
            controller.mark_prompts_sent(read_prompts(controller.target, self.points_layer, self.shapes_layer))
            self._prompts_dirty = False
            self.refresh_lineage()  # (saved with the session: links, proposals)
            low, high = session.source.mapping.low, session.source.mapping.high
            self._say(f"Session loaded: objects {session.obj_ids}, intensities {low:g}..{high:g} as saved. "
                      "Propagate to track them.")

        self._say(f"Loading the session {Path(path).name}…")
        return self._submit(Job("load session", lambda _: controller.loaded(path, frames, model, dtype),
                                on_result=done, on_end=self._end_busy_job), busy=True)

    # ------------------------------------------------------------------ exports

    def _label_stack(self) -> Any:
        writer = self.controller.writer
        if writer is None:
            raise RuntimeError("no output Labels layer to export; pick or create one")
        return writer.tracked_planes()

    def export_tiff(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the output Labels layer's tracked plane, (T, Y, X), as an OME-TIFF."""
        return write_label_tiff(path, self._label_stack(), overwrite=overwrite)

    def export_ctc(self, directory: str | Path, overwrite: bool = False) -> list:
        """Write the output Labels layer's tracked plane as a Cell Tracking Challenge result folder, with the
        session's lineage as the tracks' parents (``res_track.txt``; links that do not fit the layer are left out,
        with a warning in the status line)."""
        labels = self._label_stack()
        parents, note = self._fitting_parents(labels)
        written = write_ctc(directory, labels, overwrite=overwrite, parents=parents)
        self._said_exported(f"{len(written)} tracks written to {directory}.", note)
        return written

    def export_geff(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the output Labels layer's tracked plane and the session's lineage as a GEFF zarr folder (links that
        do not fit the layer are left out, with a warning in the status line)."""
        labels = self._label_stack()
        parents, note = self._fitting_parents(labels)
        written = write_geff(path, labels, parents, overwrite=overwrite)
        self._said_exported(f"Tracks and lineage written to {written}.", note)
        return written

    def _parents(self) -> dict[int, int]:
        session = self.controller.session
        return session.lineage() if session is not None else {}

    def _fitting_parents(self, labels: Any) -> tuple[dict[int, int], str]:
        """The session's links that fit ``labels``, and the one-line note naming those left out ("" if none)."""
        parents = self._parents()
        kept, dropped = fitting_links(labels, parents)
        return kept, describe_dropped(parents, dropped)

    def _said_exported(self, text: str, note: str) -> None:
        """Status line after an export; a warning too when links were left out (``note``)."""
        if note:
            note = f"{note[0].upper()}{note[1:]}."
            show_warning(note)
        self._say(f"{text} {note}".strip())

    def _tracks_of_labels(self) -> tuple[np.ndarray, dict[int, list[int]], str]:
        """napari Tracks (data, graph) of the output layer with the session's lineage, and a note naming the links
        that no longer fit the labels (e.g. a daughter erased by hand): those are left out of the graph."""
        labels = self._label_stack()
        parents, note = self._fitting_parents(labels)
        data, graph = lineage_tracks(labels, parents)
        return data, graph, f" {note[0].upper()}{note[1:]}." if note else ""

    def add_tracks_layer(self) -> Any:
        """Add a napari Tracks layer with each object's centroid (row, col) per frame and the lineage graph (a
        daughter's track points at its parent's); it follows accepted / rejected divisions, links and unlinks. The
        prompt layer stays the active layer, so clicks keep reaching SAM 2."""
        try:
            data, graph, note = self._tracks_of_labels()
        except RuntimeError as error:
            self._fail(error)
            return None
        target = self.controller.target
        if not len(data):
            self._fail("the output Labels layer is empty: nothing to track yet")
            return None
        active = self.viewer.layers.selection.active
        scale = np.asarray(target.layer.scale)
        keep = [target.track_axis, target.layer.ndim - 2, target.layer.ndim - 1]
        layer = self.viewer.add_tracks(data, graph=graph, name=f"{self.labels_layer.name} tracks", scale=scale[keep])
        self.tracks_layer = layer
        if active is not None and active in self.viewer.layers:
            self._activate(active)
        n_tracks = len(np.unique(data[:, 0]))
        self._say(f"Tracks layer {layer.name!r} added: {n_tracks} track{'s' if n_tracks != 1 else ''}, "
                  f"{len(data)} points, {len(graph)} division link{'s' if len(graph) != 1 else ''}. It follows the "
                  f"divisions you curate and each propagation.{note}")
        return layer

    def refresh_tracks(self) -> None:
        """Bring the Tracks layer (if the user still has it) up to date with the labels and the lineage."""
        layer = self.tracks_layer
        if layer is None or layer not in self.viewer.layers or self.controller.writer is None:
            self.tracks_layer = None
            return
        data, graph, note = self._tracks_of_labels()
        if not len(data):
            return  # (napari's Tracks cannot be emptied; the old tracks stay until there are new ones)
        layer.data = data  # (resets the graph)
        layer.graph = graph
        if note:
            self._say(note.strip())

    # ------------------------------------------------------------------ dialogs

    def _on_save_session(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", "session.json", "Session (*.json)")
        if path:
            self._guarded(lambda: self._say(f"Session saved to {self.save_session(path)}."))

    def _on_load_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load session", "", "Session (*.json)")
        if path:
            self._guarded(lambda: self.load_session(path))

    def _on_export_tiff(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export labels as TIFF", "labels.ome.tif", "TIFF (*.tif *.tiff)")
        if path:
            self._guarded(lambda: self._say(f"Labels written to {self.export_tiff(path, overwrite=True)}."))

    def _on_export_ctc(self) -> None:
        directory = QFileDialog.getExistingDirectory(self, "Export a Cell Tracking Challenge result folder")
        if directory:
            self._guarded(lambda: self.export_ctc(directory, overwrite=True))

    def _on_export_geff(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export tracks and lineage as GEFF", "tracks.geff",
                                              "GEFF (*.geff *.zarr)")
        if path:
            self._guarded(lambda: self.export_geff(path, overwrite=True))

    def _guarded(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as error:  # noqa: BLE001 - file errors are shown, not raised into Qt
            self._fail(error)
