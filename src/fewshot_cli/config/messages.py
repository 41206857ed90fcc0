"""One error line per invalid config: the key path of pydantic's first error as the user
wrote it, what was expected and what was found, with a did-you-mean hint for an unknown key.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from .base import Section
from .quoting import quote
from .schema import _DEFAULT_KIND, _KIND_CLASSES, _SECTION_CLASSES, Config

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _key_part(part: Any) -> str:
    """One part of a key path as the user would write it; an odd key (spaces, newlines, a
    very long name, not a string) is quoted, cut to a few dozen characters."""
    if isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
        return part
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)  # a list index
    return quote(part, 40)


def _section_class(section: str, data: dict[str, Any]) -> type[Section] | None:
    """The class of ``section`` as ``data`` (the config, kinds filled in) chooses it."""
    if section in _SECTION_CLASSES:
        return _SECTION_CLASSES[section]
    if section in _KIND_CLASSES:
        raw = data.get(section)
        kind = raw.get("kind") if isinstance(raw, dict) else None
        return _KIND_CLASSES[section].get(kind if isinstance(kind, str) else
                                          _DEFAULT_KIND[section])
    return None


def error_loc(err: dict[str, Any]) -> list[str]:
    """The key path of a pydantic error as the user wrote it."""
    loc = [_key_part(p) for p in err["loc"]]
    # Discriminated unions put the chosen kind into the location; drop it.
    if len(loc) >= 2 and loc[0] in _KIND_CLASSES and loc[1] in _KIND_CLASSES[loc[0]]:
        loc = [loc[0], *loc[2:]]
    return [p for p in loc if not p.startswith("function-")]


def format_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    """One pydantic error of validating ``data`` as a line naming the key (no source)."""
    loc = error_loc(err)
    key = ".".join(loc) if loc else "(top level)"
    kind = err["type"]
    found = err.get("input")
    if kind == "extra_forbidden":
        name = loc[-1]
        if len(loc) == 1:
            choices = list(Config.model_fields)
        else:
            cls = _section_class(loc[0], data)
            choices = list(cls.model_fields) if cls else []
        hint = difflib.get_close_matches(name, choices, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown key '{key}'{suggestion}; valid keys: {', '.join(choices)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        options = ", ".join(_KIND_CLASSES.get(loc[0], {}))
        tag = (err.get("ctx") or {}).get("tag", found)
        return f"{key}.kind: expected one of {options}, found {quote(tag)}"
    msg = err["msg"][:200]
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    if " found " in msg:  # our own validators already say what they found
        return f"{key}: {msg}"
    return f"{key}: {msg}, found {quote(found)}"
