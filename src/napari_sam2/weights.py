"""Official SAM 2 / 2.1 checkpoints: names, download into a local cache, and loading a model by name or file.

``load_model("sam2.1_hiera_tiny")`` downloads the official file once (SHA-256 checked by pooch, cached in
``NAPARI_SAM2_CACHE`` or the user cache folder) and builds the matching model; ``load_model("my.pt")``
reads a local (e.g. fine-tuned) checkpoint and infers its architecture from the weights. Every failure
is a :class:`~napari_sam2.model.build.CheckpointError` whose message says what to do next; a failed
download is a :class:`WeightsError`, one short line plus ``instructions`` for getting the file by hand,
which matters most on offline microscope workstations. :func:`needs_download` tells beforehand whether
loading a model will download anything.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .model.build import (
    CheckpointError,
    build_model,
    load_state_dict_strict,
    read_state_dict,
)
from .model.configs import HIERA_SIZES, canonical_config_name
from .model.sam2 import SAM2Model

CACHE_ENV = "NAPARI_SAM2_CACHE"
DEFAULT_MODEL = "sam2.1_hiera_tiny"

logger = logging.getLogger("napari_sam2")


class WeightsError(CheckpointError):
    """A checkpoint could not be downloaded or failed its hash check.

    ``str(error)`` is one short line (for a status bar, a terminal, a log); ``instructions`` says in full how
    to get the file by hand: its URL and SHA-256, where to put it or how to pass its path, the cache folder.
    """

    def __init__(self, message: str, instructions: str = "") -> None:
        super().__init__(message)
        self.instructions = instructions


@dataclass(frozen=True)
class ModelInfo:
    """One downloadable checkpoint: its name, the config it was trained with, where it lives, its hash."""

    name: str  # e.g. "sam2.1_hiera_tiny"
    config: str  # canonical config name, e.g. "sam2.1_hiera_t"
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        """The file name in the cache (the last part of the URL)."""
        return self.url.rsplit("/", 1)[-1]


def _official(name: str, config: str, folder: str, sha256: str) -> ModelInfo:
    url = f"https://dl.fbaipublicfiles.com/segment_anything_2/{folder}/{name}.pt"
    return ModelInfo(name, config, url, sha256)


KNOWN_MODELS: dict[str, ModelInfo] = {info.name: info for info in (
    _official("sam2.1_hiera_tiny", "sam2.1_hiera_t", "092824",
              "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
    _official("sam2.1_hiera_small", "sam2.1_hiera_s", "092824",
              "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    _official("sam2.1_hiera_base_plus", "sam2.1_hiera_b+", "092824",
              "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    _official("sam2.1_hiera_large", "sam2.1_hiera_l", "092824",
              "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
    _official("sam2_hiera_tiny", "sam2_hiera_t", "072824",
              "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125"),
    _official("sam2_hiera_small", "sam2_hiera_s", "072824",
              "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3"),
    _official("sam2_hiera_base_plus", "sam2_hiera_b+", "072824",
              "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071"),
    _official("sam2_hiera_large", "sam2_hiera_l", "072824",
              "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b"),
)}


def _known_names() -> str:
    return ", ".join(KNOWN_MODELS)


def find_model(name: str) -> ModelInfo:
    """The known checkpoint for a name in any accepted spelling (``sam2.1_hiera_tiny``, ``sam2.1_hiera_t``,
    ``SAM2.1-hiera-tiny.pt`` ...), or ``ValueError`` listing the known names."""
    key = name.strip().lower().replace("-", "_").removesuffix(".pt")
    for info in KNOWN_MODELS.values():
        if info.name.lower() == key:
            return info
    try:
        config = canonical_config_name(name)
    except ValueError:
        config = None
    for info in KNOWN_MODELS.values():
        if info.config == config:
            return info
    raise ValueError(f"unknown model {name!r}; known models: {_known_names()}")


def default_cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$NAPARI_SAM2_CACHE`` if set, else the user cache folder."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    import pooch  # imported lazily: only needed when weights are fetched

    return Path(pooch.os_cache("napari-sam2"))


def _as_info(model: str | ModelInfo) -> ModelInfo:
    return model if isinstance(model, ModelInfo) else find_model(model)


def _cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def fetch_checkpoint(model: str | ModelInfo, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """The path of a known checkpoint in the cache, downloading it first if it is missing or damaged.

    pooch checks the SHA-256 of the cached file on every call and of every download before it is kept,
    so a returned path always holds the official bytes. Failures raise :class:`WeightsError`.
    """
    import pooch
    import requests

    info = _as_info(model)
    cache = _cache_folder(cache_dir)
    target = cache.resolve() / info.filename
    had_file = target.is_file()
    try:
        with _pooch_log_level(logging.INFO if progress else logging.WARNING):
            path = pooch.retrieve(info.url, known_hash=f"sha256:{info.sha256}", fname=info.filename,
                                  path=cache, progressbar=progress)
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "error"
        hint = " (the file is not, or no longer, at this address)" if status == 404 else ""
        raise WeightsError(f"Could not download {info.name}: HTTP {status}{hint}",
                           _manual_steps(info, target, had_file)) from exc
    except requests.exceptions.RequestException as exc:  # offline, refused, DNS, timeout, dropped
        raise WeightsError(f"Could not download {info.name}: {_network_problem(exc)} ({type(exc).__name__})",
                           _manual_steps(info, target, had_file)) from exc
    except ValueError as exc:
        if "does not match the known hash" not in str(exc):
            raise WeightsError(f"Could not fetch {info.name}: {exc}", _manual_steps(info, target, had_file)) from exc
        found = re.search(r"but got ([0-9a-fA-F]+)", str(exc))
        actual = found.group(1) if found else "unknown"
        removed = ""
        if target.is_file():  # a damaged earlier copy that pooch tried to replace: not worth keeping
            target.unlink()
            removed = f" The damaged cached copy {target} was removed too."
        raise WeightsError(
            f"The download of {info.name} had the wrong SHA-256 and was deleted; try again",
            f"The file downloaded from {info.url} has SHA-256 {actual}, expected {info.sha256}; nothing was kept "
            f"in {cache}.{removed} The download was corrupted (try again) or the file on the server changed.\n"
            + _manual_steps(info, target, had_file=False)) from exc
    except OSError as exc:
        raise WeightsError(f"Could not write {info.name} to {cache}: {exc.strerror or exc}",
                           f"Could not write {target}: {exc}. Choose a writable folder with cache_dir= or the "
                           f"{CACHE_ENV} environment variable.") from exc
    return Path(path)


def _network_problem(exc: Exception) -> str:
    """What a failed request most likely means, in a few words."""
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return "the server did not answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "no internet connection"
    return "the download failed"


def _manual_steps(info: ModelInfo, target: Path, had_file: bool) -> str:
    """How to install a known checkpoint by hand (several lines), for :attr:`WeightsError.instructions`."""
    steps = (f"To install {info.name} by hand (e.g. on an offline machine):\n"
             f"  1. download {info.url} on a machine with internet;\n"
             f"  2. check that its SHA-256 is {info.sha256}\n"
             f"     (sha256sum {info.filename}, or on Windows: certutil -hashfile {info.filename} SHA256);\n"
             f"  3. copy it to {target}\n"
             f"     (the cache folder {target.parent}; set {CACHE_ENV} to use a folder that holds {info.filename}),\n"
             f"     or pass the file's path instead of the model name (load_model(path), napari-sam2 track "
             "--model PATH).")
    if had_file and target.is_file():
        steps += (f"\nThe cached file {target} is there but does not have the expected SHA-256 (damaged or "
                  "incomplete); replace it.")
    return steps


def needs_download(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``load_model(name_or_path)`` would download weights (so that a UI can say so beforehand).

    False for an existing file or folder (read, or refused, as it is), for a known model whose cached file
    has the official SHA-256 (hashed here, once per file version), and for names load_model refuses anyway;
    True for a known model that is not cached, or whose cached copy is damaged.
    """
    if Path(name_or_path).expanduser().exists():
        return False
    info = _known_or_none(name_or_path)
    if info is None:
        return False
    target = _cache_folder(cache_dir) / info.filename
    if not target.is_file():
        return True
    stat = target.stat()
    return _sha256(str(target.resolve()), stat.st_size, stat.st_mtime_ns) != info.sha256


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hex SHA-256 of a file as pooch computes it; cached by path, size and modification time (hashing a
    large model takes a second, and a UI may ask before every load)."""
    import pooch

    return pooch.file_hash(path, alg="sha256")


@contextlib.contextmanager
def _pooch_log_level(level: int) -> Iterator[None]:
    """pooch announces every download on stderr; quiet it when the caller asked for no progress output."""
    import pooch

    pooch_logger = pooch.get_logger()
    previous = pooch_logger.level
    pooch_logger.setLevel(level)
    try:
        yield
    finally:
        pooch_logger.setLevel(previous)


def cached_models(cache_dir: str | os.PathLike | None = None) -> list[tuple[ModelInfo, Path | None]]:
    """Every known model with its cached file, or ``None`` when it has not been downloaded.

    Only presence and a non-empty size are checked (hashing GBs would be slow); loading re-checks the hash.
    """
    cache = _cache_folder(cache_dir)
    listing = []
    for info in KNOWN_MODELS.values():
        path = cache / info.filename
        present = path.is_file() and path.stat().st_size > 0
        listing.append((info, path if present else None))
    return listing


_TRUNK = "image_encoder.trunk."
_PATCH_EMBED = _TRUNK + "patch_embed.proj.weight"
_V21_ONLY_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The canonical config name of a SAM 2 / 2.1 state dict, from the Hiera trunk's width and depth and
    the keys that only SAM 2.1 has; :class:`CheckpointError` describes what was found otherwise."""
    if isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    if _PATCH_EMBED not in state_dict:
        raise CheckpointError(f"not a SAM 2 / 2.1 checkpoint: {_describe_foreign(state_dict)}")
    embed_dim = int(state_dict[_PATCH_EMBED].shape[0])
    blocks = {key.split(".")[3] for key in state_dict if key.startswith(_TRUNK + "blocks.")}
    present_v21 = [key for key in _V21_ONLY_KEYS if key in state_dict]
    if len(present_v21) not in (0, len(_V21_ONLY_KEYS)):
        raise CheckpointError(f"not a SAM 2 / 2.1 checkpoint: it has {present_v21[0]} but not all of "
                              f"{', '.join(_V21_ONLY_KEYS)} (SAM 2.1 has all, SAM 2.0 none)")
    prefix = "sam2.1" if present_v21 else "sam2"
    for size, hiera in HIERA_SIZES.items():
        if hiera.embed_dim == embed_dim and sum(hiera.stages) == len(blocks):
            return f"{prefix}_hiera_{size}"
    official = ", ".join(f"{s}: dim {h.embed_dim}, {sum(h.stages)} blocks" for s, h in HIERA_SIZES.items())
    raise CheckpointError(
        f"not an official SAM 2 / 2.1 architecture: a Hiera trunk with {len(blocks)} blocks and embed dim "
        f"{embed_dim} matches no official config ({official}). For a custom architecture pass config=.")


def _describe_foreign(state_dict: Mapping[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    if not keys:
        return "the state dict is empty"
    if any(key.startswith("image_encoder.blocks.") for key in keys):
        kind = "it looks like a SAM 1 checkpoint (ViT image encoder keys such as image_encoder.blocks.0...)"
    elif any(key.startswith("module.") for key in keys):
        kind = "its keys start with 'module.' (saved from a DataParallel wrapper; strip that prefix)"
    else:
        kind = f"it has no {_PATCH_EMBED}"
    shown = ", ".join(keys[:3]) + (f" ... ({len(keys)} keys)" if len(keys) > 3 else "")
    return f"{kind}; first keys: {shown}"


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: torch.device | str | None = None, *,
               config: str | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True,
               verbose: bool = True, image_size: int = 1024) -> SAM2Model:
    """A ready SAM 2 model (eval mode) from a known model name or a checkpoint file.

    An existing file (it wins over a known name of the same spelling) is read once, its config inferred
    unless ``config`` is given, and loaded strictly.
    Otherwise a known name (any spelling :func:`find_model` accepts) is fetched into the cache with its hash
    checked. ``device=None`` picks CUDA, then MPS, then the CPU. The model's ``source`` attribute records
    where the weights came from; :func:`describe_model` says so, and is printed to stderr when ``verbose``.
    """
    found = resolve_model(name_or_path)
    if isinstance(found, Path):
        source = str(found.resolve())
        checkpoint = found
    else:
        info = found
        if config is not None and canonical_config_name(config) != info.config:
            raise ValueError(f"model {info.name} has config {info.config}, not {config}; leave config= out "
                             "for known models")
        source = info.name
        checkpoint = fetch_checkpoint(info, cache_dir=cache_dir, progress=progress)
    state_dict = read_state_dict(checkpoint)
    model_config = canonical_config_name(config) if config is not None else infer_config(state_dict)
    model = build_model(model_config, device=device, image_size=image_size)
    load_state_dict_strict(model, state_dict, source=str(checkpoint))
    model.source = source
    description = describe_model(model)
    logger.info("loaded %s", description)
    if verbose:
        print(f"napari-sam2: {description}", file=sys.stderr)
    return model


def resolve_model(name_or_path: str | os.PathLike) -> Path | ModelInfo:
    """What :func:`load_model` would load, without loading or downloading it: the checkpoint file (an existing
    file wins over a known name of the same spelling) or the known model. A folder or a name that is neither
    raises ``ValueError`` saying what to give instead (a batch checks its model before any worker starts)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ValueError(f"{path} is not a checkpoint file (a folder?); pass the .pt file itself")
    info = _known_or_none(name_or_path)
    if info is None:
        raise ValueError(f"{os.fspath(name_or_path)!r} is neither a known model nor an existing file ({path} "
                         f"does not exist); known models: {_known_names()}")
    return info


def _known_or_none(name: str | os.PathLike) -> ModelInfo | None:
    """The known model a string names; ``None`` for an unknown name or a path object."""
    if not isinstance(name, str):
        return None
    try:
        return find_model(name)
    except ValueError:
        return None


def describe_model(model: SAM2Model) -> str:
    """One line with where the weights came from, the config, and the device with the precision a session
    picks there by default, e.g. ``sam2.1_hiera_tiny (config sam2.1_hiera_t) on cpu (fp32)`` or
    ``... on cuda:0 (NVIDIA H200, bf16 autocast)``; weights not in float32 are named too."""
    from .engine.acceleration import describe_precision, resolve_precision

    source = model.source or "random weights"
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    weights = "" if dtype == "float32" else f", {dtype} weights"
    size = f", image size {model.image_size}" if model.image_size != 1024 else ""
    where = describe_precision(model.device, resolve_precision(None, model.device))
    return f"{source} (config {model.config.name}) on {where}{weights}{size}"
