"""``fewshot ls``: one line per run directory under a folder, read from the run's files
alone (meta.json, metrics.jsonl, config.yaml); a run whose files cannot be read still gets
a line with what could be read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare import algorithm_label
from .errors import RunDirError
from .rundir import RunDir
from .sweepdir import SweepDir, is_sweep_dir


@dataclass
class Listed:
    """One line of ``fewshot ls``."""

    name: str
    algorithm: str
    task: str
    status: str
    iterations: int | None
    best: str
    started: str
    commit: str = "-"


def commit_label(meta: dict[str, Any]) -> str:
    """The commit a run's code came from (meta.json's ``provenance.git``), short, with ``+``
    when the checkout had uncommitted changes; ``-`` when it did not run from a checkout."""
    git = (meta.get("provenance") or {}).get("git") if isinstance(meta, dict) else None
    if not isinstance(git, dict) or not isinstance(git.get("commit"), str):
        return "-"
    return git["commit"][:8] + ("+" if git.get("dirty") else "")


def find_runs(root: str | Path) -> list[RunDir]:
    """Every run directory directly under ``root`` (or ``root`` itself), by name, and the
    members of every sweep directory there."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such folder (fewshot ls reads run directories from "
                          "a folder such as runs/)")
    runs = []
    for p in sorted([root, *root.iterdir()] if not is_sweep_dir(root) else [root]):
        if p.is_dir() and (p / "config.yaml").is_file() and (p / "meta.json").is_file():
            runs.append(RunDir(p))
        elif p.is_dir() and is_sweep_dir(p):
            try:
                members = SweepDir(p).runs()
            except RunDirError:
                continue
            runs.extend(r for r in members if (r.path / "meta.json").is_file())
    return runs


def best_validation(rows: list[dict[str, Any]]) -> str:
    """The best validation score in the metrics: accuracy for classification, else the
    lowest median loss."""
    acc = [r["val_accuracy"] for r in rows if isinstance(r.get("val_accuracy"), (int, float))]
    if acc:
        return f"{100 * max(acc):.2f}%"
    med = [r.get("val_loss_median", r.get("val_loss")) for r in rows]
    med = [v for v in med if isinstance(v, (int, float)) and v == v]
    return f"{min(med):.4g}" if med else "-"


def list_runs(root: str | Path) -> list[Listed]:
    """One entry per run under ``root``; a run whose files cannot be read is listed with
    what could be read."""
    out = []
    for run in find_runs(root):
        try:
            meta = run.read_meta()
        except Exception:  # noqa: BLE001 - a damaged meta.json still gets a line
            meta = {}
        try:
            rows = run.read_metrics()
        except Exception:  # noqa: BLE001
            rows = []
        try:
            status = run.status()
        except Exception:  # noqa: BLE001
            status = "unreadable"
        it = meta.get("iteration")
        if it is None and rows:
            it = rows[-1].get("iteration")
        started = str(meta.get("started", "-")).replace("T", " ")[5:16] or "-"
        algorithm = str(meta.get("algorithm", "?"))
        try:
            algorithm = algorithm_label(run.read_config())
        except Exception:  # noqa: BLE001 - meta.json's kind then
            pass
        name = run.path.name
        if is_sweep_dir(run.path.parent) and run.path.parent != Path(root):
            name = f"{run.path.parent.name}/{name}"  # a sweep's member
        out.append(Listed(name, algorithm,
                          str(meta.get("task", "?")), status, it, best_validation(rows),
                          started, commit_label(meta)))
    return out
