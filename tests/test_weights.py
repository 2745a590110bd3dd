"""Model names, checkpoint download and cache, config inference and load_model, all without the internet.

Downloads come from a local HTTP server that serves a random-weight checkpoint in the official layout;
test models are registered in KNOWN_MODELS next to the official ones.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from checkpoint_files import TINY_CHECKPOINT_NAME, sha256_of

from napari_sam2 import CheckpointError
from napari_sam2.device import pick_device
from napari_sam2.model.configs import CONFIGS
from napari_sam2.model.sam2 import SAM2Model
from napari_sam2.weights import (
    KNOWN_MODELS,
    ModelInfo,
    WeightsError,
    cached_models,
    default_cache_dir,
    describe_model,
    fetch_checkpoint,
    find_model,
    infer_config,
    load_model,
    needs_download,
    resolve_model,
)

SERVED_NAME = TINY_CHECKPOINT_NAME


class _Server:
    """A quiet local HTTP server over one folder that records the paths it was asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def count(self, name: str) -> int:
        return self.requests.count(f"/{name}")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def served(tiny_checkpoint):
    """The one random tiny SAM 2.1 checkpoint (shared with the CLI tests): its path, SHA-256 and state dict."""
    path = tiny_checkpoint
    state_dict = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return {"path": path, "sha256": sha256_of(path), "state_dict": state_dict}


@pytest.fixture(scope="session")
def server(served):
    srv = _Server(served["path"].parent)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def sam20_file(served, tmp_path_factory):
    """A SAM 2.0 tiny checkpoint: the 2.1 one without the two keys only SAM 2.1 has."""
    state_dict = {k: v for k, v in served["state_dict"].items()
                  if k not in ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias")}
    path = tmp_path_factory.mktemp("sam20") / "my_sam2_tiny.pt"
    torch.save({"model": state_dict}, path)
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test may touch the user's real cache folder."""
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(cache))
    return cache


@pytest.fixture
def register(monkeypatch, served, server):
    """Register a test model served locally (hash and URL overridable) and return its ModelInfo."""
    def _register(name: str = "test_tiny", url: str | None = None, sha256: str | None = None) -> ModelInfo:
        info = ModelInfo(name, "sam2.1_hiera_t", url or server.url(SERVED_NAME), sha256 or served["sha256"])
        monkeypatch.setitem(KNOWN_MODELS, name, info)
        return info
    return _register


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_weights_equal(model: SAM2Model, state_dict: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in state_dict.items())


# ------------------------------------------------------------------------------------------- registry
def test_known_models_are_the_eight_official_checkpoints():
    assert len(KNOWN_MODELS) == 8
    assert {info.config for info in KNOWN_MODELS.values()} == set(CONFIGS)
    for name, info in KNOWN_MODELS.items():
        assert info.name == name and info.filename == f"{name}.pt"
        assert info.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/")
        assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)
    tiny = KNOWN_MODELS["sam2.1_hiera_tiny"]
    assert tiny.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    assert tiny.sha256 == "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"
    large20 = KNOWN_MODELS["sam2_hiera_large"]
    assert large20.url == "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"
    assert large20.sha256 == "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b"


@pytest.mark.parametrize("spelling, name", [
    ("sam2.1_hiera_tiny", "sam2.1_hiera_tiny"), ("sam2.1_hiera_t", "sam2.1_hiera_tiny"),
    ("SAM2.1-hiera-tiny", "sam2.1_hiera_tiny"), ("sam2_hiera_b+", "sam2_hiera_base_plus"),
    ("sam2.1_hiera_large.pt", "sam2.1_hiera_large"), ("sam2-hiera-small", "sam2_hiera_small"),
])
def test_find_model_accepts_config_spellings(spelling, name):
    assert find_model(spelling).name == name


def test_find_model_lists_known_names():
    with pytest.raises(ValueError, match="sam2.1_hiera_tiny.*sam2_hiera_large"):
        find_model("sam3_hiera_tiny")


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("NAPARI_SAM2_CACHE")
    assert "napari-sam2" in str(default_cache_dir())


# ------------------------------------------------------------------------------------------- download
def test_downloads_once_then_uses_the_cache(register, server, served, tmp_path, isolated_cache, capsys,
                                            caplog):
    info = register()
    cache = tmp_path / "arg-cache"
    before = server.count(SERVED_NAME)
    with caplog.at_level(logging.INFO, logger="napari_sam2"):
        model = load_model("test_tiny", device="cpu", cache_dir=cache, progress=False)
    assert server.count(SERVED_NAME) == before + 1
    assert (cache / info.filename).is_file() and sha256_of(cache / info.filename) == served["sha256"]
    _assert_weights_equal(model, served["state_dict"])
    assert model.source == "test_tiny" and model.config.name == "sam2.1_hiera_t" and not model.training
    assert describe_model(model) == "test_tiny (config sam2.1_hiera_t) on cpu (fp32)"
    assert "napari-sam2: test_tiny (config sam2.1_hiera_t) on cpu (fp32)" in capsys.readouterr().err
    assert "test_tiny (config sam2.1_hiera_t) on cpu (fp32)" in caplog.text

    assert fetch_checkpoint("test_tiny", cache_dir=cache, progress=False) == (cache / info.filename).resolve()
    assert server.count(SERVED_NAME) == before + 1  # cached: not downloaded again

    # Without cache_dir, NAPARI_SAM2_CACHE decides (the autouse fixture points it at a fresh folder).
    assert fetch_checkpoint(info, progress=False) == (isolated_cache / info.filename).resolve()
    assert fetch_checkpoint(info, progress=False) == (isolated_cache / info.filename).resolve()
    assert server.count(SERVED_NAME) == before + 2

    listing = {i.name: path for i, path in cached_models(cache)}
    assert listing["test_tiny"] == cache / info.filename
    assert listing["sam2.1_hiera_tiny"] is None and len(listing) == 9


def test_corrupted_cached_file_is_downloaded_again(register, server, served, tmp_path):
    info = register()
    cache = tmp_path / "cache"
    cache.mkdir()
    damaged = bytearray(served["path"].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (cache / info.filename).write_bytes(damaged)
    before = server.count(SERVED_NAME)
    path = fetch_checkpoint(info, cache_dir=cache, progress=False)
    assert server.count(SERVED_NAME) == before + 1
    assert sha256_of(path) == served["sha256"]


def test_hash_mismatch_names_both_hashes_and_keeps_nothing(register, served, tmp_path):
    wrong = "0123456789abcdef" * 4
    info = register(sha256=wrong)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError) as error:
        fetch_checkpoint(info, cache_dir=cache, progress=False)
    assert str(error.value) == "The download of test_tiny had the wrong SHA-256 and was deleted; try again"
    instructions = error.value.instructions
    assert wrong in instructions and served["sha256"] in instructions and info.url in instructions
    assert list(cache.iterdir()) == []
    # A damaged earlier copy is not left behind either.
    (cache / info.filename).write_bytes(b"partial download")
    with pytest.raises(WeightsError) as error:
        fetch_checkpoint(info, cache_dir=cache, progress=False)
    assert "damaged cached copy" in error.value.instructions and "removed" in error.value.instructions
    assert list(cache.iterdir()) == []


def test_offline_error_is_one_short_line_with_instructions_apart(register, tmp_path):
    info = register(url=f"http://127.0.0.1:{_closed_port()}/sam2.1_hiera_tiny.pt")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError) as error:
        load_model("test_tiny", device="cpu", cache_dir=cache, progress=False)
    assert str(error.value) == "Could not download test_tiny: no internet connection (ConnectionError)"
    assert isinstance(error.value, CheckpointError) and isinstance(error.value, ValueError)
    instructions = error.value.instructions
    target = (cache / "sam2.1_hiera_tiny.pt").resolve()
    assert info.url in instructions and info.sha256 in instructions and str(target) in instructions
    assert f"the cache folder {target.parent}" in instructions and "NAPARI_SAM2_CACHE" in instructions
    assert "--model PATH" in instructions and "load_model(path)" in instructions
    assert "does not have the expected SHA-256" not in instructions
    # With a damaged copy in the cache the instructions say so, and the copy is left for the user to replace.
    (cache / info.filename).write_bytes(b"half a file")
    with pytest.raises(WeightsError) as error:
        fetch_checkpoint(info, cache_dir=cache, progress=False)
    assert "\n" not in str(error.value)
    assert f"The cached file {target} is there but does not have the expected SHA-256" in error.value.instructions
    assert (cache / info.filename).read_bytes() == b"half a file"


def test_missing_file_on_server_is_reported_with_status(register, server, tmp_path):
    info = register(url=server.url("gone.pt"))
    with pytest.raises(WeightsError) as error:
        fetch_checkpoint(info, cache_dir=tmp_path / "cache", progress=False)
    assert str(error.value) == "Could not download test_tiny: HTTP 404 (the file is not, or no longer, at this address)"
    assert info.url in error.value.instructions
    assert not list((tmp_path / "cache").iterdir())


def test_weights_error_without_instructions():
    assert WeightsError("short").instructions == "" and str(WeightsError("short", "long")) == "short"


def test_needs_download_only_for_a_known_model_not_validly_cached(register, served, server, tmp_path,
                                                                  isolated_cache):
    info = register()
    cache = tmp_path / "cache"
    assert needs_download("test_tiny", cache_dir=cache)
    assert needs_download("test_tiny")  # the NAPARI_SAM2_CACHE folder is empty too
    assert not needs_download(served["path"]) and not needs_download(str(served["path"]))  # a local file
    assert not needs_download("sam3_hiera_tiny") and not needs_download(tmp_path)  # refused by load_model anyway
    before = server.count(SERVED_NAME)
    fetch_checkpoint(info, cache_dir=cache, progress=False)
    assert not needs_download("test_tiny", cache_dir=cache)
    assert needs_download("test_tiny")  # another cache folder
    assert server.count(SERVED_NAME) == before + 1  # asking downloads nothing
    damaged = bytearray((cache / info.filename).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (cache / info.filename).write_bytes(damaged)
    assert needs_download("test_tiny", cache_dir=cache)  # pooch would download it again
    assert needs_download("sam2.1_hiera_tiny", cache_dir=cache)  # official names too


# ------------------------------------------------------------------------------------------- config inference
@pytest.mark.parametrize("config", list(CONFIGS))
def test_infer_config_for_every_official_architecture(config):
    with torch.device("meta"):
        model = SAM2Model(CONFIGS[config])
    assert infer_config(model.state_dict()) == config
    assert infer_config({"model": model.state_dict()}) == config


def test_infer_config_rejects_other_architectures(served):
    sam1 = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
            "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(2304, 768),
            "mask_decoder.iou_token.weight": torch.zeros(1, 256)}
    with pytest.raises(CheckpointError, match="not a SAM 2 / 2.1 checkpoint: it looks like a SAM 1"):
        infer_config(sam1)
    shallow = {k: v for k, v in served["state_dict"].items() if not k.startswith("image_encoder.trunk.blocks.11.")}
    with pytest.raises(CheckpointError, match="11 blocks and embed dim 96 matches no official config.*config="):
        infer_config(shallow)


# ------------------------------------------------------------------------------------------- local files
def test_load_from_path_infers_config_and_picks_device(served, sam20_file, capsys):
    model = load_model(served["path"], progress=False)
    assert model.config.name == "sam2.1_hiera_t" and model.source == str(served["path"].resolve())
    assert model.device.type == pick_device(None).type
    _assert_weights_equal(model, served["state_dict"])
    err = capsys.readouterr().err
    assert err.startswith("napari-sam2: ") and str(served["path"].resolve()) in err
    assert f"on {model.device} (fp32)" in err

    model20 = load_model(str(sam20_file), device="cpu", verbose=False)
    assert model20.config.name == "sam2_hiera_t" and not hasattr(model20, "no_obj_embed_spatial")
    assert capsys.readouterr().err == ""


def test_damaged_and_foreign_files_give_specific_errors(served, tmp_path):
    truncated = tmp_path / "truncated.pt"
    with open(served["path"], "rb") as handle:
        truncated.write_bytes(handle.read(8 << 20))
    with pytest.raises(CheckpointError, match="damaged, truncated"):
        load_model(truncated, device="cpu", verbose=False)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        load_model(garbage, device="cpu", verbose=False)
    sam1 = tmp_path / "sam_vit_b.pt"
    torch.save({"image_encoder.blocks.0.attn.qkv.weight": torch.zeros(2304, 768)}, sam1)
    with pytest.raises(CheckpointError, match="SAM 1"):
        load_model(sam1, device="cpu", verbose=False)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(served['path']))} does not match config "
                                              "sam2.1_hiera_s.*missing keys: image_encoder.trunk.blocks.12"):
        load_model(served["path"], device="cpu", config="sam2.1_hiera_s", verbose=False)


def test_unknown_name_and_missing_file(tmp_path, register):
    with pytest.raises(ValueError, match="neither a known model nor an existing file.*sam2.1_hiera_tiny"):
        load_model("sam3_hiera_tiny")
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match=f"{re.escape(str(missing))} does not exist.*sam2_hiera_large"):
        load_model(missing)
    with pytest.raises(ValueError, match="not a checkpoint file"):
        load_model(tmp_path)
    register()
    with pytest.raises(ValueError, match="has config sam2.1_hiera_t, not sam2_hiera_t"):
        load_model("test_tiny", config="sam2_hiera_t")


def test_resolve_model_names_what_load_model_would_load_without_loading(tmp_path):
    checkpoint = tmp_path / "sam2.1_hiera_small"  # a file spelled as a known name: the file wins
    checkpoint.write_bytes(b"weights")
    assert resolve_model(checkpoint) == checkpoint
    info = resolve_model("sam2.1_hiera_small")
    assert info.name == "sam2.1_hiera_small" and not isinstance(info, Path)
    for wrong, message in ((tmp_path, "is not a checkpoint file (a folder?)"),
                           ("sam3", "'sam3' is neither a known model nor an existing file"),
                           (tmp_path / "gone.pt", "does not exist); known models: ")):
        with pytest.raises(ValueError, match=re.escape(message)):
            resolve_model(wrong)


def test_describe_model_without_source():
    model = SAM2Model(CONFIGS["sam2_hiera_t"], image_size=256)
    assert describe_model(model) == "random weights (config sam2_hiera_t) on cpu (fp32), image size 256"

