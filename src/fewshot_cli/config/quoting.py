"""Bounded quoting of user values for one-line error messages: a value, key or line is cut
to a fixed length, so an error line never quotes a whole file."""

from __future__ import annotations

import reprlib
from typing import Any

MAX_QUOTE = 80
#: The longest error line ``validate`` raises (the file name, key and value quoted in it are
#: cut well before this; this only guards against a combination of long ones).
MAX_LINE = 400


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), cut
    to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error line never quotes a whole file."""
    text = reprlib_repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reprlib_repr(value: Any) -> str:
    """A bounded repr: containers are abbreviated before they are formatted in full."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = MAX_QUOTE, MAX_QUOTE, 6, 6, 3
    return r.repr(value)
