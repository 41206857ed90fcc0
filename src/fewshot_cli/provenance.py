"""Where a run came from: the code (version, git commit, uncommitted changes), the
resolved config and the data, recorded in meta.json so that two runs from different code
or data can be told apart afterwards."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from . import __version__

#: Seconds a git query may take before it is given up (the run goes on without it).
GIT_TIMEOUT_S = 5.0


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout this package runs from (``dirty``: a
    tracked file differs from the commit), or None when it does not run from one (an
    installed wheel) or git is not there."""
    here = folder or Path(__file__).resolve().parent
    if _git(here, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None  # the package is not a folder of a checkout
    commit = _git(here, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(here, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a resolved config's canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def record(config: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    """meta.json's ``provenance``: the version, the git state, the config's digest and the
    data's fingerprint (the task source's ``fingerprint()``)."""
    return {"fewshot": __version__, "git": git_state(), "config_sha256": config_digest(config),
            "data": data}


def data_changes(before: Any, now: dict[str, Any] | None) -> list[str]:
    """What differs between two data fingerprints, as ``key: before -> now`` (the keys
    whose values differ); empty when they agree or the run recorded none."""
    if not isinstance(before, dict) or now is None:
        return []
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        elif a != b:
            shown = [v[:12] if isinstance(v, str) and len(v) == 64 else v for v in (a, b)]
            out.append(f"{prefix}: {shown[0]} -> {shown[1]}")

    walk(before, now, "")
    return out
