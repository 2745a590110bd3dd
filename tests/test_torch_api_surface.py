"""The engine against the API surface of the minimum torch it declares, and the fallbacks for newer calls.

What this checks (only torch 2.13 can be installed here, so no test runs the engine on torch 2.4 itself):

* pyproject.toml's torch requirement is the minimum that tests/torch_minimum_api.py describes;
* every torch name the package's sources use (an AST scan, see tests/torch_api_scan.py) is in that file's
  hand-written lists: certainly in the minimum torch, or newer with the release that added it;
* every use of a name newer than the minimum sits behind a guard (try/except, hasattr/getattr, version test);
* the scanner itself flags an unguarded newer name, an unknown name and a newer call form;
* the fallbacks in model/torch_compat.py work on a simulated older torch, inside ``map_blocks`` too.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch_api_scan import package_uses, torch_uses
from torch_minimum_api import AT_MINIMUM, MINIMUM, NEWER, release

import napari_sam2
from napari_sam2.model import cpu_workers, interrupt, torch_compat

PACKAGE = Path(napari_sam2.__file__).parent
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
LINUX_OPENMP = sys.platform.startswith("linux") and "parallel backend: OpenMP" in torch.__config__.parallel_info()


def test_pyproject_requires_the_minimum_the_lists_describe():
    requirement = re.search(r'"torch>=([\d.]+)"', PYPROJECT.read_text())
    assert requirement is not None, "pyproject.toml should require torch>=X.Y"
    assert release(requirement.group(1)) == MINIMUM


def test_every_torch_name_the_package_uses_is_known_to_the_lists():
    uses = package_uses(PACKAGE)
    assert len(uses) > 300  # the scan does see the package
    unknown = sorted({f"{use.name} ({Path(use.path).relative_to(PACKAGE)}:{use.line})" for use in uses
                      if use.name not in AT_MINIMUM and use.name not in NEWER})
    assert not unknown, ("torch names not in tests/torch_minimum_api.py: check in which release each appeared and "
                         f"add it to AT_MINIMUM or NEWER: {unknown}")


def test_names_newer_than_the_minimum_are_used_behind_a_guard():
    newer = {name for name, version in NEWER.items() if release(version) > MINIMUM}
    unguarded = [f"{use.name} (torch {NEWER[use.name]}) at {Path(use.path).relative_to(PACKAGE)}:{use.line}"
                 for use in package_uses(PACKAGE) if use.name in newer and not use.guarded]
    assert not unguarded, f"newer than torch {MINIMUM}, used without a fallback: {unguarded}"


def test_the_lists_name_real_torch_attributes():
    """A typo in a list would hide a use; every listed name exists in the (newer) installed torch."""
    assert not AT_MINIMUM & set(NEWER)
    missing = [name for name in sorted(AT_MINIMUM | {n for n in NEWER if "(" not in n}) if not _resolves(name)]
    assert not missing, f"not in torch {torch.__version__}: {missing}"


def _resolves(name: str) -> bool:
    """Whether torch has ``name``, importing the submodules on the way that are loaded on import only."""
    value = torch
    parts = name.split(".")
    for index, part in enumerate(parts[1:], start=2):
        if not hasattr(value, part):
            try:
                importlib.import_module(".".join(parts[:index]))
            except ImportError:
                return False
        if not hasattr(value, part):
            return False
        value = getattr(value, part)
    return True


SNIPPET = '''
import torch
import torch.nn.functional as F
from torch import nn

def f(x):
    y = F.scaled_dot_product_attention(x, x, x, enable_gqa=True)
    stance = torch.compiler.set_stance
    if hasattr(torch.compiler, "set_stance"):
        torch.compiler.set_stance("eager_on_recompile")
    try:
        mask = torch.nn.attention.flex_attention.create_block_mask
    except AttributeError:
        mask = None
    accelerator = getattr(torch, "accelerator", None)
    return nn.Linear, torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled(), torch.frobnicate
'''


def test_the_scanner_tells_guarded_from_unguarded_uses():
    uses = {(use.name, use.line): use.guarded for use in torch_uses(SNIPPET)}
    assert uses[("torch.nn.functional.scaled_dot_product_attention(enable_gqa=)", 7)] is False
    assert uses[("torch.compiler.set_stance", 8)] is False
    assert uses[("torch.compiler.set_stance", 10)] is True  # under hasattr
    assert uses[("torch.nn.attention.flex_attention.create_block_mask", 12)] is True  # in a try
    assert uses[("torch.accelerator", 15)] is True  # getattr with a default
    assert uses[("torch.is_autocast_enabled(*)", 16)] is False
    assert ("torch.nn.Linear", 16) in uses and ("torch.frobnicate", 16) in uses
    assert sum(name == "torch.is_autocast_enabled(*)" for name, _ in uses) == 1  # the call without argument is old


def test_the_cpu_autocast_state_of_this_torch():
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch_compat.cpu_autocast_state() == (True, torch.float16)
    assert torch_compat.cpu_autocast_state()[0] is False


class Torch23:
    """The autocast queries of torch before 2.4: CPU-specific ones, and ``is_autocast_enabled()`` for CUDA only."""

    is_autocast_cpu_enabled = staticmethod(torch.is_autocast_cpu_enabled)
    get_autocast_cpu_dtype = staticmethod(torch.get_autocast_cpu_dtype)

    @staticmethod
    def is_autocast_enabled() -> bool:
        return torch.is_autocast_enabled("cuda")


@pytest.mark.filterwarnings("ignore:.*is deprecated")
def test_the_cpu_autocast_fallback_reads_the_old_queries():
    read = torch_compat.cpu_autocast_reader(Torch23)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert read() == (True, torch.bfloat16)
    assert read()[0] is False


@pytest.fixture
def fresh_pools(monkeypatch):
    monkeypatch.setattr(cpu_workers, "_pools", {})
    yield
    for pool in cpu_workers._pools.values():
        if pool is not None:
            pool.shutdown(wait=True)


@pytest.mark.skipif(not LINUX_OPENMP, reason="the workers are checked on Linux builds of torch with OpenMP")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: the blocks run in the caller's thread")
@pytest.mark.filterwarnings("ignore:.*is deprecated")
def test_map_blocks_hands_autocast_to_its_workers_through_the_fallback(monkeypatch, fresh_pools):
    monkeypatch.setattr(cpu_workers, "cpu_autocast_state", torch_compat.cpu_autocast_reader(Torch23))

    def modes(_: int) -> tuple[str, torch.dtype]:
        return threading.current_thread().name[:15], (torch.ones(2, 2) @ torch.ones(2, 2)).dtype

    with torch.autocast("cpu", dtype=torch.float16):
        assert set(cpu_workers.map_blocks(modes, [0, 1, 2])) == {("napari-sam2-cpu", torch.float16)}
    assert set(cpu_workers.map_blocks(modes, [0, 1, 2])) == {("napari-sam2-cpu", torch.float32)}


def test_is_compiling_falls_back_to_dynamo_then_to_never(monkeypatch):
    assert torch_compat.is_compiling is torch.compiler.is_compiling  # this torch: the public function
    assert interrupt.is_compiling is torch.compiler.is_compiling
    before_2_3 = torch_compat.is_compiling_function(object())  # no torch.compiler.is_compiling
    assert before_2_3 is importlib.import_module("torch._dynamo").is_compiling and before_2_3() is False
    monkeypatch.delattr(torch, "_dynamo", raising=False)
    monkeypatch.setitem(sys.modules, "torch._dynamo", None)  # importing it fails
    without_dynamo = torch_compat.is_compiling_function(object())
    assert without_dynamo() is False
