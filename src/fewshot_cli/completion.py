"""Shell completion (``fewshot --install-completion``): config files where a command takes
a config, run directories where it takes a run directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .rundir import is_run_dir
from .sweepdir import is_sweep_dir


def candidates(incomplete: str, wanted: Callable[[Path], bool], depth: int = 3) -> list[str]:
    """Shell completions of the path ``incomplete``: the entries ``wanted`` accepts, and the
    folders holding one (ending in ``/``, to go on from); a lone such folder is opened, so
    that ``fewshot eval <TAB>`` lists the runs in ``runs/``."""
    head, sep, tail = incomplete.rpartition("/")
    prefix = head + sep
    try:
        entries = sorted(os.scandir(os.path.expanduser(prefix or ".")), key=lambda e: e.name)
    except OSError:
        return []
    found, folders = [], []
    for e in entries:
        if not e.name.startswith(tail) or (e.name.startswith(".") and not tail.startswith(".")):
            continue
        if wanted(Path(e.path)):
            found.append(prefix + e.name)
        elif e.is_dir() and _holds(Path(e.path), wanted):
            folders.append(prefix + e.name + "/")
    if not found and len(folders) == 1 and depth > 0:
        return candidates(folders[0], wanted, depth - 1) or folders
    return found + folders


def _holds(folder: Path, wanted: Callable[[Path], bool], limit: int = 2000) -> bool:
    """Whether one of the first ``limit`` entries of ``folder`` is ``wanted`` (a folder of
    many thousand images is not read to its end on every TAB)."""
    try:
        with os.scandir(folder) as entries:
            return any(wanted(Path(e.path)) for _, e in zip(range(limit), entries)
                       if not e.name.startswith("."))
    except OSError:
        return False


def _is_config(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml") and path.is_file()


def complete_config(incomplete: str) -> list[str]:
    """Completions where a command takes a config: ``*.yaml``/``*.yml`` files."""
    return candidates(incomplete, _is_config)


def complete_run_dir(incomplete: str) -> list[str]:
    """Completions where a command takes a run directory (a folder holding config.yaml
    or meta.json) or a sweep directory (sweep.json)."""
    return candidates(incomplete, lambda p: p.is_dir() and (is_run_dir(p) or is_sweep_dir(p)))
