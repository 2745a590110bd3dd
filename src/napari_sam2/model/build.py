"""Building a SAM 2 model and loading official (or fine-tuned) checkpoints into it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..device import pick_device
from .configs import get_config
from .sam2 import SAM2Model

_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the requested model; the message says why."""


def build_model(config: str, checkpoint: str | os.PathLike | None = None,
                device: torch.device | str | None = None, image_size: int = 1024) -> SAM2Model:
    """Build a SAM 2 / 2.1 model in eval mode.

    ``config`` is one of ``sam2.1_hiera_{t,s,b+,l}``, ``sam2_hiera_{t,s,b+,l}`` or the long forms
    (``sam2.1_hiera_tiny`` ...). ``checkpoint`` is a ``.pt`` file in the official layout (a dict with key
    ``"model"``, or a bare state dict), loaded strictly; ``None`` leaves random weights (for tests).
    ``device=None`` picks CUDA, then MPS, then the CPU. ``image_size`` other than 1024 is allowed (it is
    what the official weights were trained at; smaller sizes are faster and coarser).
    """
    cfg = get_config(config)
    model = SAM2Model(cfg, image_size=image_size)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.to(pick_device(device)).eval()


def load_checkpoint(model: SAM2Model, path: str | os.PathLike) -> None:
    """Load an official-layout checkpoint strictly, or raise :class:`CheckpointError` naming the file,
    the expected config and the first missing / unexpected / mis-shaped keys."""
    load_state_dict_strict(model, read_state_dict(path), source=str(path))


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The state dict in a ``.pt`` file (official layout ``{"model": ...}`` or bare), read safely
    (``weights_only``) onto the CPU; :class:`CheckpointError` says why a file is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise CheckpointError(
            f"could not read checkpoint {path}: {type(exc).__name__}: {exc}. The file is damaged, truncated "
            "or not a PyTorch checkpoint; delete it and download it again.") from exc
    state_dict = loaded.get("model", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (expected a dict of tensors, or one "
                              "under the key 'model')")
    return state_dict


def load_state_dict_strict(model: SAM2Model, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model`` (any device) only if keys and shapes match exactly; otherwise
    raise :class:`CheckpointError` naming ``source``, the model's config and the differences."""
    problems = describe_mismatch(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match config {model.config.name} "
                              f"(image_size {model.image_size}): {problems}")
    model.load_state_dict(state_dict, strict=True)


def describe_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """A short description of how two state dicts differ in keys and shapes ('' when they agree)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshaped = [f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("mis-shaped keys (checkpoint != model)", misshaped)):
        if keys:
            more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    return "; ".join(parts)
