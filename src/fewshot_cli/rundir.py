"""The run directory: the only state shared between ``train``, ``eval`` and ``plot``.

::

    runs/<name>-<YYYYmmdd-HHMMSS>/
      config.yaml        the resolved config that ran
      meta.json          versions, device, seed, command, status, times
      metrics.jsonl      one JSON object per logged iteration
      checkpoints/       last.pt, best.pt (written atomically)
      eval.json          the latest ``fewshot eval`` (earlier ones in eval-history.jsonl)
      plots/*.png        written by ``fewshot plot``

Every path read or written lives here. Writes that replace a file go through
a temporary file and ``os.replace`` so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import Config, dump_config, validate
from .errors import ConfigError, RunDirError
from .files import atomic_write, atomic_write_text

CHECKPOINTS = ("best", "last")


class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- layout ----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_path(self, which: str) -> Path:
        return self.checkpoint_dir / f"{which}.pt"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def eval_history_path(self) -> Path:
        return self.path / "eval-history.jsonl"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    # -- creation and opening ----------------------------------------------------
    @classmethod
    def create(cls, name: str, root: str | Path = "runs", explicit: str | Path | None = None
               ) -> RunDir:
        """Make a new, empty run directory; an existing one is never reused."""
        if explicit is not None:
            path = Path(explicit)
            if path.exists():
                raise RunDirError(f"{path}: --run-dir must not exist yet (it would be overwritten)")
            try:
                path.mkdir(parents=True)
            except OSError as e:
                raise RunDirError(f"{path}: cannot create run directory ({e.strerror})") from None
            return cls(path)
        root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            path = root / (f"{name}-{stamp}" if i == 0 else f"{name}-{stamp}-{i}")
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
            except OSError as e:
                raise RunDirError(f"{path}: cannot create run directory ({e.strerror})") from None
        raise RunDirError(f"{root}: too many runs named {name}-{stamp}")

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory; a clear error if ``path`` is not one."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"{run.path}: no such run directory")
        if not run.config_path.is_file():
            raise RunDirError(
                f"{run.path}: not a run directory (no config.yaml; expected the folder "
                "`fewshot train` created)"
            )
        return run

    # -- config and meta ---------------------------------------------------------
    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.config_path, dump_config(cfg))

    def read_config(self) -> Config:
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise RunDirError(f"{self.config_path}: cannot read the run's config ({e})") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{self.config_path}: not a fewshot config")
        try:
            return validate(data, str(self.config_path))
        except ConfigError as e:
            raise RunDirError(str(e)) from None

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.meta_path, json.dumps(meta, indent=2) + "\n")

    def update_meta(self, **fields: Any) -> dict[str, Any]:
        meta = self.read_meta()
        meta.update(fields)
        self.write_meta(meta)
        return meta

    # -- metrics -------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete rows; a partially written last line (a live run) is skipped."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    # -- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, which: str, state: dict[str, Any]) -> None:
        atomic_write(self.checkpoint_path(which), lambda f: torch.save(state, f))

    def load_checkpoint(self, which: str, map_location: str | torch.device = "cpu"
                        ) -> dict[str, Any]:
        """Read ``best`` or ``last``; falls back from a missing best to last."""
        path = self.checkpoint_path(which)
        if which == "best" and not path.is_file() and self.checkpoint_path("last").is_file():
            path = self.checkpoint_path("last")
        if not path.is_file():
            raise RunDirError(f"{path}: no checkpoint yet (has training written one?)")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
                ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunDirError(f"{path}: corrupt or unreadable checkpoint ({reason})") from None
        if not isinstance(state, dict) or "algorithm" not in state:
            raise RunDirError(f"{path}: not a fewshot checkpoint")
        return state

    # -- evaluation results ------------------------------------------------------------
    def write_eval(self, result: dict[str, Any]) -> None:
        """Write eval.json; the previous one is appended to eval-history.jsonl first."""
        if self.eval_path.is_file():
            try:
                previous = json.loads(self.eval_path.read_text())
                with self.eval_history_path.open("a") as f:
                    f.write(json.dumps(previous) + "\n")
            except (OSError, json.JSONDecodeError):
                pass
        atomic_write_text(self.eval_path, json.dumps(result, indent=2) + "\n")

    def read_eval(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.eval_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
