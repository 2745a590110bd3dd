"""napari-sam2: SAM 2 / SAM 2.1 video segmentation and tracking for microscopy, in pure PyTorch.

Scripting entry points::

    from napari_sam2 import build_model, TrackingSession, labels_from_logits

Axis order and coordinates follow napari: movies are (T, Y, X[, C]); points are (row, col) = (y, x).
"""

from .engine.postprocess import labels_from_logits
from .engine.session import TrackingSession, UnknownObjectError
from .engine.frames import FrameError
from .model.build import CheckpointError, build_model
from .model.configs import CONFIGS, canonical_config_name

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "FrameError",
    "TrackingSession",
    "UnknownObjectError",
    "build_model",
    "canonical_config_name",
    "labels_from_logits",
]
__version__ = "0.1.0"
