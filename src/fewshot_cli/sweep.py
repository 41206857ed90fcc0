"""Planning a sweep: ``--seeds 0,1,2`` and ``--sweep KEY=V1,V2`` (repeatable) become the
cartesian product of their values, one member run per combination.

Every member's config is built and validated before anything is written, so an unknown
key or a bad value is one error and no folder. The plan is then written as a sweep
directory (:mod:`.sweepdir`): each member's resolved config and sweep.json. Running the
members is :mod:`.sweep_run`'s part.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, dump_config, load_config, parse_override, quote
from .errors import ConfigError, RunDirError
from .sweepdir import SWEEP_FORMAT, Member, SweepDir

#: Characters kept in a member's folder name; the others become ``-``.
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


def split_values(text: str) -> list[str]:
    """``5,10,[40,40]`` -> ``["5", "10", "[40,40]"]``: commas inside brackets, braces or
    quotes belong to the value (each value is YAML, as in ``--set``)."""
    parts, depth, quote_char, current = [], 0, "", []
    for ch in text:
        if quote_char:
            quote_char = "" if ch == quote_char else quote_char
        elif ch in "\"'":
            quote_char = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_axes(seeds: str | None, sweeps: list[str]) -> dict[str, list[str]]:
    """The swept keys and their values, in the order given, ``seed`` last (so a setting's
    seeds sit together)."""
    axes: dict[str, list[str]] = {}
    items = [(f"--sweep {s}", s) for s in sweeps]
    if seeds is not None:
        items.append((f"--seeds {seeds}", f"seed={seeds}"))
    for option, text in items:
        if "=" not in text:
            raise ConfigError(f"{option}: expected KEY=V1,V2,... (e.g. algorithm.inner_lr="
                              "0.01,0.1)")
        key = text.split("=", 1)[0].strip()
        if not all(key.split(".")):
            raise ConfigError(f"{option}: expected KEY=V1,V2,... with KEY a config key such "
                              "as seed or task.shots")
        values = split_values(text.split("=", 1)[1])
        if any(v == "" for v in values):
            raise ConfigError(f"{option}: an empty value in {quote(text)}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{option}: a value is repeated in {quote(text)}")
        if key in axes:
            where = "--seeds and --sweep seed=..." if key == "seed" else "twice"
            raise ConfigError(f"{option}: {key} is swept {where}; give its values once")
        axes[key] = values
    return axes


def _labels(axes: dict[str, list[str]]) -> dict[str, str]:
    """Each key's name in member folders: its last part (``shots``) unless two keys share
    it."""
    last = [k.rsplit(".", 1)[-1] for k in axes]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(axes, last)}


def _safe(value: str) -> str:
    """A value as a folder name's part: ``[40,40]`` -> ``40-40``, ``sum/K`` -> ``sum-K``; a
    leading minus sign is kept (``-1``)."""
    text = _UNSAFE.sub("-", value)
    text = text.rstrip("-") if value.startswith("-") else text.strip("-")
    return text or "x"


def members_of(axes: dict[str, list[str]]) -> list[Member]:
    """One member per combination, named by the values that vary (``shots=5_seed=0``)."""
    labels = _labels(axes)
    varying = [k for k, vs in axes.items() if len(vs) > 1] or list(axes)
    out, seen = [], set()
    for combo in itertools.product(*axes.values()):
        settings = dict(zip(axes, combo))
        name = "_".join(f"{labels[k]}={_safe(settings[k])}" for k in varying)
        base, i = name, 1
        while name in seen:  # two values that differ only in unsafe characters
            i += 1
            name = f"{base}-{i}"
        seen.add(name)
        out.append(Member(name, settings))
    return out


@dataclass
class Plan:
    """A validated sweep: the members, their configs, and the command's own settings."""

    axes: dict[str, list[str]]
    members: list[Member]
    configs: dict[str, Config]
    name: str
    source: str
    overrides: list[str]


def plan(config: Path, overrides: list[str], seeds: str | None, sweeps: list[str],
         note: Callable[[str], None]) -> Plan:
    """Build and validate every member's config (CONFIG, ``overrides``, then the member's
    values); the first error names the member. ``note`` gets the config's notes once."""
    axes = parse_axes(seeds, sweeps)
    set_keys = {".".join(parse_override(o)[0]) for o in overrides}
    for key in axes:
        if key in set_keys:
            raise ConfigError(f"{key}: both --set and swept; keep one")
    members = members_of(axes)
    configs: dict[str, Config] = {}
    notes: list[str] = []
    for m in members:
        try:
            configs[m.name] = load_config(config, [*overrides, *m.overrides],
                                          notes if not configs else None)
        except ConfigError as e:
            if not configs:
                raise  # the first member: the error is the config's, not the member's
            raise ConfigError(f"sweep member {m.name}: {e}") from None
    for n in notes:
        note(n)
    first = configs[members[0].name]
    return Plan(axes, members, configs, first.name, str(config), overrides)


def plan_record(p: Plan, command: list[str]) -> dict[str, Any]:
    """sweep.json's content for a new sweep: every member pending."""
    return {"format": SWEEP_FORMAT, "kind": "fewshot-sweep", "name": p.name,
            "config": p.source, "overrides": p.overrides, "axes": p.axes,
            "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "members": [{"name": m.name, "settings": m.settings, "status": "pending"}
                        for m in p.members]}


def sweep_path(p: Plan, runs_root: Path, explicit: Path | None) -> Path:
    """Where a new sweep goes: ``explicit``, else ``runs_root/<name>-sweep-<stamp>``."""
    if explicit is not None:
        return explicit
    return runs_root / f"{p.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"


def create(p: Plan, path: Path, command: list[str], join: bool = False) -> SweepDir:
    """Write the sweep directory: each member's config and sweep.json. With ``join`` (a
    ``--shard``), an existing sweep directory of the same plan is used as it is (another
    part of the sweep wrote it); one of another plan, or any other folder, is an error."""
    sweep = SweepDir(path)
    if path.exists():
        if join and sweep.plan_path.is_file():
            _check_same_plan(sweep, p)
            return sweep
        raise RunDirError(f"{path}: --run-dir must not exist yet (it would be overwritten)"
                          + ("" if join else "; a sweep that exists continues with "
                             f"fewshot train --resume {path}"))
    try:
        (path / "configs").mkdir(parents=True)
        for m in p.members:
            sweep.config_path(m).write_text(dump_config(p.configs[m.name]), encoding="utf-8")
        sweep.write(plan_record(p, command))
    except FileExistsError:  # another part of the sweep created it a moment ago
        if join:
            time.sleep(1.0)
            _check_same_plan(sweep, p)
            return sweep
        raise RunDirError(f"{path}: --run-dir must not exist yet") from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot create the sweep directory ({e.strerror})") from None
    return sweep


def _check_same_plan(sweep: SweepDir, p: Plan) -> None:
    """Parts of one sweep (``--shard``) must agree on its members and their configs."""
    members = sweep.members()
    same = [(m.name, m.settings) for m in members] == [(m.name, m.settings) for m in p.members]
    if same:
        for m in members:
            try:
                text = sweep.config_path(m).read_text(encoding="utf-8")
            except OSError:
                same = False
                break
            same = same and text == dump_config(p.configs[m.name])
    if not same:
        raise RunDirError(f"{sweep.path}: holds a sweep of other members or configs; give "
                          "every part of one sweep the same CONFIG, --set, --seeds and "
                          "--sweep, or another --run-dir")
