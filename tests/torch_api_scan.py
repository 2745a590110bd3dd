"""Which torch names a Python source uses, and whether each use is guarded against an older torch (AST only).

A use is a maximal attribute chain rooted at a torch import (``torch.cuda.is_available``, ``F.interpolate``
with ``import torch.nn.functional as F``, ``nn.Linear`` with ``from torch import nn``), a ``getattr(chain,
"name")`` on one, or a call form listed in :data:`CALL_FORMS` (a positional argument or a keyword). It is
guarded when it sits inside a ``try`` that catches AttributeError / TypeError / ImportError / RuntimeError /
Exception, in a branch of an ``if`` / conditional expression / ``and`` / ``or`` whose test calls ``hasattr`` or
``getattr`` on a torch name or compares something named like a version, or when it is a ``getattr`` with a default. What is
not seen: attributes of tensors and modules (``x.pin_memory()``), names reached through a parameter or a
variable that holds torch, and values (which device type an autocast is for).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

GUARDING_EXCEPTIONS = {"AttributeError", "TypeError", "ImportError", "ModuleNotFoundError", "RuntimeError",
                       "Exception", "BaseException"}
# Call forms that appeared after the names themselves: chain -> keyword, or "*" for a positional argument.
CALL_FORMS = {
    "torch.is_autocast_enabled": "*",  # a device type: torch 2.4 (CUDA only, no argument, before)
    "torch.nn.functional.scaled_dot_product_attention": "enable_gqa",  # 2.5
    "torch.cuda.is_bf16_supported": "including_emulation",  # 2.5
    "torch.load": "mmap",  # 2.1
}


@dataclass(frozen=True)
class Use:
    """One use of a torch name: the full dotted name, where, and whether an older-torch guard covers it."""

    name: str
    path: str
    line: int
    guarded: bool


def torch_uses(source: str, path: str = "<source>") -> list[Use]:
    """Every use of a torch name in ``source`` (see the module docstring for what counts)."""
    tree = ast.parse(source)
    aliases = _torch_aliases(tree)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(parents.get(node), ast.Attribute):
            name = _dotted(node, aliases)
            if name is not None:
                uses.append(Use(name, path, node.lineno, _guarded(node, parents, aliases)))
        elif isinstance(node, ast.Call):
            uses.extend(_call_uses(node, aliases, parents, path))
    return uses


def package_uses(root: Path) -> list[Use]:
    """Every torch use in the ``*.py`` files under ``root``."""
    return [use for file in sorted(root.rglob("*.py")) for use in torch_uses(file.read_text(), str(file))]


def _torch_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the torch module or attribute it stands for, from the file's imports."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    aliases[alias.asname or "torch"] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _call_uses(call: ast.Call, aliases: dict[str, str], parents: dict, path: str) -> list[Use]:
    """``getattr(torch.x, "y"[, default])`` as a use of torch.x.y, and the listed newer call forms."""
    uses = []
    func = call.func
    if isinstance(func, ast.Name) and func.id == "getattr" and len(call.args) >= 2:
        base = call.args[0]
        owner = _dotted(base, aliases) if isinstance(base, ast.Attribute) else aliases.get(getattr(base, "id", ""))
        attr = call.args[1]
        if owner is not None and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
            uses.append(Use(f"{owner}.{attr.value}", path, call.lineno, len(call.args) > 2 or _guarded(call, parents, aliases)))
    name = _dotted(func, aliases) if isinstance(func, ast.Attribute) else aliases.get(getattr(func, "id", ""))
    form = CALL_FORMS.get(name or "")
    if form == "*" and call.args or form and form != "*" and any(k.arg == form for k in call.keywords):
        uses.append(Use(f"{name}({form}{'' if form == '*' else '='})", path, call.lineno,
                        _guarded(call, parents, aliases)))
    return uses


def _guarded(node: ast.AST, parents: dict, aliases: dict[str, str]) -> bool:
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body and any(map(_catches_missing, parent.handlers)):
            return True
        if (isinstance(parent, (ast.If, ast.IfExp, ast.While)) and child is not parent.test
                and _checks(parent.test, aliases)):
            return True
        if isinstance(parent, ast.BoolOp) and any(_checks(v, aliases)
                                                  for v in parent.values[: parent.values.index(child)]):
            return True
        child, parent = parent, parents.get(parent)
    return False


def _catches_missing(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in GUARDING_EXCEPTIONS for t in types)


def _checks(test: ast.AST, aliases: dict[str, str]) -> bool:
    """Whether a condition asks about the installed torch: hasattr / getattr on a torch name, or a comparison
    of something named like a version."""
    for node in ast.walk(test):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and node.args and _is_torch(node.args[0], aliases)):
            return True
        if isinstance(node, ast.Compare):
            names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
            names += [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)]
            if any("version" in n.lower() for n in names):
                return True
    return False


def _is_torch(node: ast.expr, aliases: dict[str, str]) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id in aliases
