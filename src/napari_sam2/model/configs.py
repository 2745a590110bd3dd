"""The eight official SAM 2 / SAM 2.1 model configurations, as plain Python (no hydra).

Values follow Meta's yaml files (``configs/sam2{,.1}/sam2{,.1}_hiera_{t,s,b+,l}.yaml``) plus the
defaults that those files leave implicit. Only settings that differ between configs live here; the
rest of the architecture is fixed in the modules themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HieraSize:
    """Per-size settings of the Hiera trunk (identical for SAM 2 and SAM 2.1)."""

    embed_dim: int
    num_heads: int
    stages: tuple[int, int, int, int]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, int, int, int]
    window_pos_embed_bkg_spatial_size: tuple[int, int]

    @property
    def backbone_channel_list(self) -> tuple[int, ...]:
        """Stage output channels, deepest first (the order the FPN neck expects)."""
        return tuple(self.embed_dim * 2**i for i in reversed(range(4)))


@dataclass(frozen=True)
class ModelConfig:
    """Everything that distinguishes one official checkpoint's architecture from another."""

    name: str  # canonical short name, e.g. "sam2.1_hiera_t"
    hiera: HieraSize
    version: str  # "2.0" or "2.1"

    @property
    def is_v21(self) -> bool:
        """SAM 2.1 adds a spatial no-object embedding and a temporal encoding of object pointers."""
        return self.version == "2.1"


HIERA_SIZES: dict[str, HieraSize] = {
    "t": HieraSize(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    "s": HieraSize(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "b+": HieraSize(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "l": HieraSize(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}

_LONG_SIZE_NAMES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}

CONFIGS: dict[str, ModelConfig] = {
    f"{prefix}_hiera_{size}": ModelConfig(f"{prefix}_hiera_{size}", hiera, version)
    for prefix, version in (("sam2.1", "2.1"), ("sam2", "2.0"))
    for size, hiera in HIERA_SIZES.items()
}


def canonical_config_name(name: str) -> str:
    """Map any accepted spelling (``sam2.1_hiera_tiny``, ``sam2.1_hiera_t``, ``sam2_hiera_base_plus.pt`` ...)
    to the short canonical name, or raise ``ValueError`` listing the valid names."""
    key = name.strip().lower()
    for suffix in (".pt", ".yaml"):
        key = key.removesuffix(suffix)
    key = key.replace("-", "_")
    prefix, _, size = key.rpartition("_hiera_")
    size = _LONG_SIZE_NAMES.get(size, size)
    candidate = f"{prefix}_hiera_{size}"
    if candidate not in CONFIGS:
        valid = ", ".join(sorted(CONFIGS)) + " (or the long forms like sam2.1_hiera_tiny)"
        raise ValueError(f"unknown SAM 2 model config {name!r}; valid names: {valid}")
    return candidate


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` for a config name in any accepted spelling."""
    return CONFIGS[canonical_config_name(name)]
