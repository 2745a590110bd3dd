"""napari-sam2: SAM 2 / SAM 2.1 video segmentation and tracking for microscopy, in pure PyTorch.

Scripting entry points::

    from napari_sam2 import load_model, TrackingSession, labels_from_logits, save_session, load_session
    from napari_sam2 import track_many  # many movies on dask.distributed (a sheet of movies and prompts)

Axis order and coordinates follow napari: movies are (T, Y, X[, C]); points are (row, col) = (y, x).
"""

import os
import sys
from importlib import import_module
from typing import Any

# On Apple silicon, ops the MPS backend lacks run on the CPU instead of failing. torch reads this variable once,
# when it is first imported: setting it here works only where torch comes after this package (the CLI, napari
# starting the plugin first). What held is recorded for napari_sam2.device.mps_fallback_status, which warns.
_TORCH_IMPORTED_FIRST = "torch" in sys.modules
_MPS_FALLBACK_GIVEN = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")  # the user's own setting, if any
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

# Loaded on first use, so that napari's sample menu and `napari-sam2 --help` do not pay for importing torch.
_EXPORTS = {
    "AutomaticMaskOptions": ".engine.automatic",
    "ReseedOptions": ".engine.reseeding",
    "DivisionOptions": ".engine.divisions",
    "DivisionProposal": ".engine.divisions",
    "LineageError": ".engine.lineage",
    "FrameError": ".engine.frames",
    "FrameOutput": ".engine.outputs",
    "labels_from_logits": ".engine.postprocess",
    "TrackingSession": ".engine.session",
    "UnknownObjectError": ".engine.session",
    "SessionFileError": ".engine.session_file",
    "load_session": ".engine.session_file",
    "save_session": ".engine.session_file",
    "tracks_from_labels": ".exports",
    "write_ctc": ".exports",
    "write_label_tiff": ".exports",
    "lineage_tracks": ".exports",
    "ParentsError": ".exports",
    "write_geff": ".geff_files",
    "read_geff": ".geff_files",
    "CheckpointError": ".model.build",
    "build_model": ".model.build",
    "CONFIGS": ".model.configs",
    "canonical_config_name": ".model.configs",
    "KNOWN_MODELS": ".weights",
    "WeightsError": ".weights",
    "describe_model": ".weights",
    "load_model": ".weights",
    "track_many": ".batch_run",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sam2' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "CONFIGS",
    "KNOWN_MODELS",
    "AutomaticMaskOptions",
    "CheckpointError",
    "DivisionOptions",
    "DivisionProposal",
    "FrameError",
    "FrameOutput",
    "LineageError",
    "ParentsError",
    "ReseedOptions",
    "SessionFileError",
    "TrackingSession",
    "UnknownObjectError",
    "WeightsError",
    "build_model",
    "canonical_config_name",
    "describe_model",
    "labels_from_logits",
    "lineage_tracks",
    "load_model",
    "load_session",
    "read_geff",
    "save_session",
    "track_many",
    "tracks_from_labels",
    "write_ctc",
    "write_geff",
    "write_label_tiff",
]
__version__ = "0.1.0"
