"""napari-sam2: SAM 2 / SAM 2.1 video segmentation and tracking for microscopy, in pure PyTorch.

Scripting entry points::

    from napari_sam2 import load_model, TrackingSession, labels_from_logits

Axis order and coordinates follow napari: movies are (T, Y, X[, C]); points are (row, col) = (y, x).
"""

from .engine.frames import FrameError
from .engine.postprocess import labels_from_logits
from .engine.session import TrackingSession, UnknownObjectError
from .engine.session_file import SessionFileError
from .exports import tracks_from_labels, write_ctc, write_label_tiff
from .model.build import CheckpointError, build_model
from .model.configs import CONFIGS, canonical_config_name
from .weights import KNOWN_MODELS, WeightsError, describe_model, load_model

__all__ = [
    "CONFIGS",
    "KNOWN_MODELS",
    "CheckpointError",
    "FrameError",
    "SessionFileError",
    "TrackingSession",
    "UnknownObjectError",
    "WeightsError",
    "build_model",
    "canonical_config_name",
    "describe_model",
    "labels_from_logits",
    "load_model",
    "tracks_from_labels",
    "write_ctc",
    "write_label_tiff",
]
__version__ = "0.1.0"
