"""A sweep directory: what ``fewshot train CONFIG --seeds ... --sweep ...`` writes.

::

    <sweep>/
      sweep.json       the plan: the axes, and one entry per member (its folder, the
                       settings that vary, its last known status)
      configs/<member>.yaml   each member's resolved config (CONFIG, its --set and the
                       member's values), validated before any member started
      logs/<member>.log   each member's own output (stdout and stderr, appended)
      <member>/        an ordinary run directory per combination of the axes' values

Each member is an ordinary run directory, so everything that reads a run reads a
member; ``eval``, ``plot`` and ``compare`` also take the sweep directory itself and
read its members from ``sweep.json``. The status sweep.json records is the last one the
sweep command saw; the member's own meta.json is the authority (:meth:`SweepDir.status`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .files import atomic_write_text
from .rundir import RunDir

#: The layout version of sweep.json.
SWEEP_FORMAT = 1
SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Member:
    """One combination of a sweep's values: its folder name and the settings (dotted
    config key -> YAML text as given) that set it apart (its values of the swept keys)."""

    name: str
    settings: dict[str, str]

    @property
    def overrides(self) -> list[str]:
        """The settings as ``--set`` arguments."""
        return [f"{k}={v}" for k, v in self.settings.items()]


def is_sweep_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a sweep.json."""
    return (Path(path) / SWEEP_FILE).is_file()


class SweepDir:
    """A sweep directory on disk (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def plan_path(self) -> Path:
        return self.path / SWEEP_FILE

    def config_path(self, member: Member) -> Path:
        return self.path / "configs" / f"{member.name}.yaml"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def log_path(self, member: Member) -> Path:
        return self.path / "logs" / f"{member.name}.log"

    def member_path(self, member: Member) -> Path:
        return self.path / member.name

    @classmethod
    def open(cls, path: str | Path) -> SweepDir:
        """An existing sweep directory whose sweep.json can be read; a clear error if not."""
        sweep = cls(path)
        if not sweep.plan_path.is_file():
            raise RunDirError(f"{sweep.path}: not a sweep directory (no {SWEEP_FILE})")
        sweep.read()
        return sweep

    # -- the plan ---------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """sweep.json, checked for the fields every reader needs."""
        try:
            data = json.loads(self.plan_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None) or getattr(e, "msg", None) or e
            raise RunDirError(f"{self.plan_path}: unreadable ({why})") from None
        members = data.get("members") if isinstance(data, dict) else None
        if not isinstance(members, list) or not all(
                isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]
                and "/" not in m["name"] and isinstance(m.get("settings"), dict)
                for m in members):
            raise RunDirError(f"{self.plan_path}: unreadable (not the layout fewshot train "
                              "writes for a sweep)")
        if isinstance(data.get("format"), int) and data["format"] > SWEEP_FORMAT:
            raise RunDirError(f"{self.plan_path}: written by a newer fewshot (format "
                              f"{data['format']}); upgrade to read it")
        return data

    def write(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.plan_path, json.dumps(data, indent=2) + "\n")

    def record(self, name: str, **fields: Any) -> None:
        """Update one member's entry in sweep.json (its status, exit code, ...), under a
        lock: the parts of a ``--shard``-ed sweep may write at the same time."""
        with self._locked():
            data = self.read()
            for m in data["members"]:
                if m["name"] == name:
                    m.update(fields)
            self.write(data)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.path / ".lock").open("a") as f:
            try:
                import fcntl

                fcntl.flock(f, fcntl.LOCK_EX)
            except (ImportError, OSError):  # no advisory locks here: write unlocked
                pass
            yield

    def members(self) -> list[Member]:
        """The members, in the plan's order."""
        return [Member(m["name"], {str(k): str(v) for k, v in m["settings"].items()})
                for m in self.read()["members"]]

    def axes(self) -> dict[str, list[str]]:
        """The swept keys and their values (YAML text), in the order given."""
        axes = self.read().get("axes")
        return ({str(k): [str(v) for v in vs] for k, vs in axes.items()}
                if isinstance(axes, dict) else {})

    # -- the members' run directories --------------------------------------------------
    def runs(self) -> list[RunDir]:
        """The members that have a run directory (a member not started yet has none)."""
        return [RunDir(self.member_path(m)) for m in self.members()
                if (self.member_path(m) / "config.yaml").is_file()]

    def status(self, member: Member) -> str:
        """A member's status: its run directory's (``killed`` for one no process holds),
        or ``pending`` when it has none yet."""
        path = self.member_path(member)
        if not (path / "config.yaml").is_file():
            return "pending"
        return RunDir(path).status()
