"""Writing files so that an interrupted write never leaves a half-written file under the real name."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden sibling path to write to; it replaces ``path`` when the block succeeds and is removed
    when it fails (an exception, Ctrl-C). The file gets normal permissions (it is created by the caller)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
