"""Telling the user what went wrong: a user's mistake is one line, a real bug keeps its traceback (in the log).

Qt-free. A *user mistake* is an error napari-sam2 raised on purpose with a message that says what to do (a ValueError
or RuntimeError raised by napari-sam2's own code, e.g. "object 3 has no pixels on frame 2"), a missing or unreadable
file, or a failed weights download. Anything else (an error raised inside numpy or torch, a TypeError, ...) is a bug
and is logged with its traceback.
"""

from __future__ import annotations

import dis
import logging
from dataclasses import dataclass

logger = logging.getLogger("napari_sam2")

SHORT_LIMIT = 200  # characters of a message shown in the status line; the rest goes to the tooltip and the log


@dataclass(frozen=True)
class Message:
    """``short``: one line for the status bar and the notification; ``details``: everything else (tooltip)."""

    short: str
    details: str = ""


def _raised_by_us(error: BaseException) -> bool:
    """True when a ``raise`` statement of napari-sam2 code raised ``error``: the innermost frame of the traceback is
    ours *and* its instruction is a raise (an error raised inside a C function that our code called, e.g. a shape
    mismatch in torch.cat, also ends in our frame, at the call)."""
    tb = error.__traceback__
    if tb is None:  # never raised (constructed to be shown): ours
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    if not str(tb.tb_frame.f_globals.get("__name__", "")).startswith("napari_sam2"):
        return False
    code, offset = tb.tb_frame.f_code, tb.tb_lasti
    return any(ins.offset == offset and ins.opname == "RAISE_VARARGS" for ins in dis.get_instructions(code))


def is_user_mistake(error: BaseException) -> bool:
    """Whether ``error`` is a user's mistake (see the module docstring) rather than a bug."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, FileExistsError)):
        return True
    if type(error).__module__.startswith("napari_sam2"):  # our own error classes (TargetError, WeightsError, ...)
        return True
    return isinstance(error, (ValueError, RuntimeError)) and _raised_by_us(error)


def message_of(error: BaseException | str) -> Message:
    """The short line and the details of an error or a text."""
    text = str(error).strip() or type(error).__name__
    first, _, rest = text.partition("\n")
    details = str(getattr(error, "instructions", "") or "").strip()
    if len(first) > SHORT_LIMIT:
        cut = first.rfind(" ", 0, SHORT_LIMIT)
        cut = cut if cut > SHORT_LIMIT // 2 else SHORT_LIMIT
        first, rest = first[:cut] + " …", text
    extra = "\n".join(part for part in (rest.strip(), details) if part)
    return Message(first, extra)


def log_error(error: BaseException | str) -> Message:
    """Log ``error``: one line for a user's mistake or a text, the traceback for a bug; returns its message."""
    message = message_of(error)
    if isinstance(error, BaseException) and not is_user_mistake(error):
        logger.error("napari-sam2: %s", message.short, exc_info=error)
    else:
        logger.warning("napari-sam2: %s", message.short)
    return message
