"""The tracking engine: frame streaming, feature caching and the tracking session (no Qt here).

Axes follow napari: movies are (T, Y, X[, C]), points (row, col) = (y, x).
"""

from .divisions import DivisionOptions, DivisionProposal
from .lineage import LineageError
from .outputs import FrameOutput
from .session import TrackingSession, UnknownObjectError
from .session_file import SessionFileError, load_session, save_session

__all__ = ["DivisionOptions", "DivisionProposal", "FrameOutput", "LineageError", "SessionFileError",
           "TrackingSession", "UnknownObjectError", "load_session", "save_session"]
