"""Loading a config: YAML from a file, ``--set`` overrides applied, then validated into a
:class:`~.schema.Config`; every failure is a :class:`~fewshot_cli.errors.ConfigError` with
one line naming the file (or the ``--set`` at fault) and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .messages import error_loc, format_error
from .overrides import apply_overrides, parse_override
from .quoting import one_line, quote
from .schema import _DEFAULT_KIND, _KIND_CLASSES, Config


def _fill_kinds(data: dict[str, Any]) -> dict[str, Any]:
    """Default ``task.kind`` to sinusoid, ``model.kind`` to the task's usual network and
    ``algorithm.kind`` to maml."""
    data = dict(data)
    task = data.get("task")
    if task is None:
        task = data["task"] = {}
    if isinstance(task, dict) and "kind" not in task:
        data["task"] = task = {"kind": "sinusoid", **task}
    kind = task.get("kind") if isinstance(task, dict) else None
    task_cls = _KIND_CLASSES["task"].get(kind) if isinstance(kind, str) else None
    model = data.get("model")
    if model is None:
        model = {}
    if isinstance(model, dict) and "kind" not in model:
        regression = task_cls is not None and task_cls.problem == "regression"
        data["model"] = {"kind": "mlp" if regression else "conv4", **model}
    algorithm = data.get("algorithm")
    if algorithm is None:
        algorithm = {}
    if isinstance(algorithm, dict) and "kind" not in algorithm:
        data["algorithm"] = {"kind": _DEFAULT_KIND["algorithm"], **algorithm}
    return data


def switch_kinds(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``data`` with each section whose kind a ``--set SECTION.kind=NEW`` changes rebuilt
    for NEW: the keys NEW's section also has are kept, the other options of the old kind
    dropped. A section without a ``kind`` of its own follows: a model whose kind the task
    implies is rebuilt when ``--set task.kind`` changes that. Returns it and one note per
    section that lost keys.

    Keys the old kind does not know either (typos) are kept, so they are still errors, and
    so is a key of the old kind that an override sets again (overrides apply after this).
    """
    wanted: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 2 and path[0] in _KIND_CLASSES and path[1] == "kind":
            wanted[path[0]] = value  # the last one counts, as in apply_overrides
    if not wanted:
        return data, []
    switched = dict(data)
    for section, new in wanted.items():
        raw = data.get(section)
        if isinstance(raw, dict) or raw is None:
            switched[section] = {**(raw or {}), "kind": new}
    before, after = _fill_kinds(data), _fill_kinds(switched)
    data, notes = dict(data), []
    for section, classes in _KIND_CLASSES.items():
        raw = data.get(section)
        old, new = (s[section].get("kind") if isinstance(s[section], dict) else None
                    for s in (before, after))
        if not (isinstance(raw, dict) and isinstance(old, str) and isinstance(new, str)
                and old in classes and new in classes and old != new):
            continue
        known, kept = classes[old].model_fields, classes[new].model_fields
        dropped = [k for k in raw if k in known and k not in kept]
        if dropped:
            data[section] = {k: v for k, v in raw.items() if k not in dropped}
            what = "an option" if len(dropped) == 1 else "options"
            why = "" if section in wanted else f", which follows {_leader(wanted)}"
            notes.append(f"{section}.kind={new}{why}: dropped {', '.join(dropped)} "
                         f"(not {what} of {new})")
    return data, notes


def _leader(wanted: dict[str, Any]) -> str:
    """The ``--set`` a section without a kind of its own followed (the task's)."""
    return ", ".join(f"{k}.kind={v}" for k, v in wanted.items())


def validate(data: dict[str, Any], source: str, overrides: list[str] | None = None) -> Config:
    """Validate a raw mapping; ``source`` names it in error messages, unless the key at
    fault was set by one of ``overrides`` (``--set``), which is then named instead."""
    for section, classes in _KIND_CLASSES.items():
        raw = data.get(section)
        kind = raw.get("kind", "") if isinstance(raw, dict) else ""
        # pydantic formats a discriminator as text: a nest of YAML aliases would expand
        if not isinstance(kind, str):
            raise ConfigError(one_line(f"{source}: {section}.kind: expected one of "
                                       f"{', '.join(classes)}, found {quote(kind)}"))
    data = _fill_kinds(data)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = error_loc(first)
        for text in overrides or []:
            path, _ = parse_override(text)
            if loc[: len(path)] == path or (loc and path[: len(loc)] == loc):
                source = f"--set {quote(text, 60)}"
        raise ConfigError(one_line(f"{source}: {format_error(first, data)}")) from None


def load_config(path: str | Path, overrides: list[str] | None = None,
                notes: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it.

    A ``--set SECTION.kind=X`` that changes a section's kind rebuilds the section for X
    (:func:`switch_kinds`); what it dropped is appended to ``notes``, one line per section,
    for the caller to show.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty (expected at least a task: section; "
                          "see configs/ for examples)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(data).__name__}")
    data, dropped = switch_kinds(data, overrides or [])
    data = apply_overrides(data, overrides or [])
    cfg = validate(data, str(path), overrides)
    if notes is not None:
        notes.extend(dropped)
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
