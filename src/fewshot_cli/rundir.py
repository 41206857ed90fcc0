"""The run directory: the only state shared between ``train``, ``eval`` and ``plot``.

::

    runs/<name>-<YYYYmmdd-HHMMSS>/
      config.yaml        the resolved config that ran
      meta.json          versions, device, seed, command, status, times
      metrics.jsonl      one JSON object per logged iteration
      checkpoints/       last.pt, best.pt (written atomically), iter-NNNNNNN.pt
                         (the last train.keep_checkpoints periodic ones)
      .lock              held (flock) by the process that is training the run
      eval.json          ``fewshot eval`` results, one per run and protocol (earlier
                         files in eval-history.jsonl)
      plots/*.png        written by ``fewshot plot`` (or .pdf, .svg)

Every path read or written lives here. Writes that replace a file go through
a temporary file and ``os.replace`` so a crash never leaves half a file.
Every JSON file is standard JSON: non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .config import Config, dump_config, validate
from .errors import ConfigError, RunDirError
from .files import atomic_write, atomic_write_text

try:
    import fcntl
except ImportError:  # not POSIX: no lock, a live run cannot be told from a killed one
    fcntl = None  # type: ignore[assignment]

CHECKPOINTS = ("best", "last")
#: Keys the trainer itself writes into metrics.jsonl rows; every other key of a
#: row is a metric the algorithm reported (plots draw those without knowing them).
TRAINER_KEYS = ("iteration", "time", "loss", "meta_lr", "its_per_s")
#: eval.json layout: 2 keeps one result per run and protocol under ``results``
#: (format 1, without this key, was a single result).
EVAL_FORMAT = 2
#: The settings that identify an evaluation protocol: a new eval of the same run with
#: the same values (and the same checkpoint file) replaces that entry of eval.json.
PROTOCOL_KEYS = ("shots", "queries", "steps", "seed", "tasks", "query_batch", "inner_lr")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """Standard JSON (NaN and infinities become null)."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError (full disk, read-only folder) while writing ``path`` becomes one
    RunDirError line naming the file."""
    try:
        yield
    except OSError as e:
        raise RunDirError(f"{path}: cannot write ({e.strerror or e})") from None


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

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

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
        with _writing(self.config_path):
            atomic_write_text(self.config_path, dump_config(cfg))

    def read_config(self) -> Config:
        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, ValueError) as e:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise RunDirError(f"{self.config_path}: cannot read the run's config ({reason})"
                              ) from None
        if not isinstance(data, dict):
            raise RunDirError(f"{self.config_path}: not a fewshot config")
        try:
            return validate(data, str(self.config_path))
        except ConfigError as e:
            raise RunDirError(str(e)) from None

    def read_meta(self) -> dict[str, Any]:
        """meta.json, or {} when it is missing or not a JSON object (edited by hand)."""
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        with _writing(self.meta_path):
            atomic_write_text(self.meta_path, dumps(meta, indent=2) + "\n")

    def update_meta(self, **fields: Any) -> dict[str, Any]:
        meta = self.read_meta()
        meta.update(fields)
        self.write_meta(meta)
        return meta

    # -- lock and status -------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's writer lock (an ``flock`` the kernel drops when the process dies).

        RunDirError when another live process holds it: one writer per run.
        """
        if fcntl is None:
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RunDirError(
                    f"{self.path}: is being trained by another process (pid {holder}); "
                    "only one writer per run") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def is_locked(self) -> bool:
        """Whether a live process is training this run."""
        if fcntl is None or not self.lock_path.exists():
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def status(self) -> str:
        """meta.json's status, except that a ``running`` run no live process holds is
        ``killed`` (SIGKILL, power loss: nothing could write the status)."""
        status = self.read_meta().get("status")
        status = status if isinstance(status, str) else "unknown"
        if status == "running" and not self.is_locked():
            return "killed"
        return status

    # -- metrics -------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        with _writing(self.metrics_path), self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(dumps(row) + "\n")

    def _row_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """``(line, row)`` for every well-formed row: a JSON object with an integer
        ``iteration``. Anything else (a partly written last line of a live run, a line
        edited by hand, bytes that are not UTF-8) is skipped."""
        if not self.metrics_path.is_file():
            return []
        try:
            text = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            raise RunDirError(f"{self.metrics_path}: cannot read ({e.strerror})") from None
        out = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if _is_row(row):
                out.append((line, row))
        return out

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every well-formed row of metrics.jsonl (see :meth:`_row_lines`)."""
        return [row for _, row in self._row_lines()]

    def truncate_metrics(self, iteration: int) -> None:
        """Keep only the rows up to ``iteration`` (resume: no row duplicated or missing)."""
        if not self.metrics_path.is_file():
            return
        kept = "".join(line + "\n" for line, row in self._row_lines()
                       if row["iteration"] <= iteration)
        with _writing(self.metrics_path):
            atomic_write_text(self.metrics_path, kept)

    # -- checkpoints -----------------------------------------------------------------
    def resolve_checkpoint(self, which: str) -> Path:
        """The file for ``best`` or ``last``: a missing best falls back to last (the
        commands warn or refuse first, see :meth:`best_fallback`)."""
        path = self.checkpoint_path(which)
        if which == "best" and not path.is_file() and self.checkpoint_path("last").is_file():
            return self.checkpoint_path("last")
        return path

    def best_fallback(self) -> str | None:
        """What ``best`` reads when best.pt is missing and last.pt exists (a run without a
        validation split, or not validated yet): ``"last.pt (iteration N)"``; else None."""
        if self.checkpoint_path("best").is_file() or not self.checkpoint_path("last").is_file():
            return None
        it = self.read_meta().get("checkpoint_iteration")
        return "last.pt" + (f" (iteration {it})" if isinstance(it, int) else "")

    def load_checkpoint(self, which: str, map_location: Any = "cpu") -> dict[str, Any]:
        """Read ``best`` or ``last`` (see :func:`fewshot_cli.engine.checkpoint.load`)."""
        from .engine import checkpoint

        return checkpoint.load(self.resolve_checkpoint(which), map_location)

    def keep_checkpoint(self, iteration: int, keep: int) -> None:
        """Keep ``last.pt`` as ``iter-NNNNNNN.pt`` too, and only the newest ``keep`` of those."""
        last = self.checkpoint_path("last")
        target = self.checkpoint_dir / f"iter-{iteration:07d}.pt"
        with _writing(target):
            target.unlink(missing_ok=True)
            try:
                os.link(last, target)  # last.pt is replaced by rename: the link stays this one
            except OSError:
                target.write_bytes(last.read_bytes())
            for old in sorted(self.checkpoint_dir.glob("iter-*.pt"))[:-keep]:
                old.unlink(missing_ok=True)

    # -- evaluation results ------------------------------------------------------------
    def write_eval(self, results: dict[str, Any] | list[dict[str, Any]]) -> Path | None:
        """Merge ``results`` (one result per protocol) into eval.json; the previous file is
        appended to eval-history.jsonl first.

        An eval.json that holds no readable evaluation is moved aside first
        (:meth:`keep_unreadable_eval`; where it went is returned). eval.json holds every
        protocol evaluated so far, the run's and its baselines':
        ``{"format": 2, "results": [...], **latest}``. A new result replaces only the entry
        of the same run and protocol (:func:`protocol_key`); the others are kept. The
        top-level fields repeat ``latest``, the first result of this call, in the layout
        of format 1 (one result), which older readers expect.

        The new file is written (to a temporary sibling) before the history grows, so a
        folder that cannot be written (read-only, full disk) fails before either file
        changes; only the final rename comes after the history line.
        """
        new = [results] if isinstance(results, dict) else list(results)
        previous = self.read_eval()
        kept = (self.keep_unreadable_eval() if previous is None and self.eval_path.is_file()
                else None)
        merged = merge_results([] if previous is None else results_of(previous), new)
        data = (dumps({**new[0], "format": EVAL_FORMAT, "results": merged}, indent=2)
                + "\n").encode()

        def write(f: Any) -> None:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if previous is not None:
                with self.eval_history_path.open("a", encoding="utf-8") as h:
                    h.write(dumps(previous) + "\n")

        atomic_write(self.eval_path, write)
        return kept

    def keep_unreadable_eval(self) -> Path:
        """Move an eval.json that holds no readable evaluation aside, as
        ``eval-unreadable-<time>.json``, so that a new evaluation never overwrites bytes
        nobody could read back yet; returns where it went."""
        target = self.path / time.strftime("eval-unreadable-%Y%m%d-%H%M%S.json")
        if target.exists():
            target = target.with_suffix(f".{time.monotonic_ns()}.json")
        with _writing(target):
            os.replace(self.eval_path, target)
        return target

    def read_eval(self) -> dict[str, Any] | None:
        """eval.json as written (either layout), or None when missing or when it holds no
        evaluation (edited by hand)."""
        try:
            data = json.loads(self.eval_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if results_of(data) else None

    def load_results(self) -> list[dict[str, Any]]:
        """Like :meth:`read_results`, but an eval.json that exists and yields no evaluation
        is a RunDirError naming the file and the cause; a missing file has none."""
        path = self.eval_path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except UnicodeDecodeError:
            raise RunDirError(f"{path}: unreadable (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}: unreadable (not JSON: {e.msg} at line {e.lineno}, "
                              f"column {e.colno})") from None
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})"
                              ) from None
        results = results_of(data)
        if not results:
            raise RunDirError(f"{path}: unreadable (no evaluation in it: not the layout "
                              "fewshot eval writes)")
        return results

    def read_results(self) -> list[dict[str, Any]]:
        """Every evaluation result in eval.json, one per run and protocol; an eval.json of
        format 1 (a single result) is one result. Entries that are not evaluations are
        left out; a missing or unreadable file has none."""
        try:
            return self.load_results()
        except RunDirError:
            return []


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like a run directory: a folder holding config.yaml or
    meta.json (what shell completion offers; :meth:`RunDir.open` checks more)."""
    path = Path(path)
    return (path / "config.yaml").is_file() or (path / "meta.json").is_file()


def _is_row(row: Any) -> bool:
    """A metrics.jsonl row: a JSON object whose ``iteration`` is a whole number >= 0."""
    if not isinstance(row, dict):
        return False
    it = row.get("iteration")
    return isinstance(it, int) and not isinstance(it, bool) and 0 <= it < 2**63


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_evaluation(result: Any) -> bool:
    """Whether ``result`` has the shape ``fewshot eval`` writes (what plots read of it)."""
    if not isinstance(result, dict) or not isinstance(result.get("settings"), dict):
        return False
    settings, rows = result["settings"], result.get("per_step")
    if not all(_number(settings.get(k)) for k in ("tasks", "shots")):
        return False
    if settings.get("inner_lr") is not None and not _number(settings["inner_lr"]):
        return False  # None: an algorithm that learns its step sizes
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return False
    metrics = [m for m in ("loss", "accuracy") if m in rows[0]]
    for r in rows:
        if not _number(r.get("step")):
            return False
        for m in metrics:
            stat = r.get(m)
            if not isinstance(stat, dict):
                return False
            mean, ci = stat.get("mean"), stat.get("ci95")
            if not ((mean is None and ci is None) or (_number(mean) and _number(ci))):
                return False
    return "loss" in metrics


def results_of(data: Any) -> list[dict[str, Any]]:
    """The evaluation results in a parsed eval.json of either layout: ``{"results":
    [...]}`` (format 2) or a single result (format 1); entries that are not evaluations
    are left out."""
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        return [r for r in data["results"] if _is_evaluation(r)]
    return [data] if _is_evaluation(data) else []


def result_name(result: dict[str, Any]) -> str:
    """The name a result is stored under: its run directory's name."""
    name = result.get("name")
    if isinstance(name, str) and name:
        return name
    run = result.get("run")
    return Path(run).name if isinstance(run, str) else "?"


def protocol_key(result: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies an entry of eval.json: whose result (the run itself, whatever its
    folder is called now, or a baseline by name), the protocol (:data:`PROTOCOL_KEYS`)
    and the checkpoint file read."""
    settings = result.get("settings") or {}
    baseline = bool(result.get("baseline"))
    return (baseline, result_name(result) if baseline else None,
            *(settings.get(k) for k in PROTOCOL_KEYS), result.get("checkpoint"))


def merge_results(old: list[dict[str, Any]], new: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """``old`` with each entry of ``new`` replacing the one of the same key
    (:func:`protocol_key`) in place, or appended."""
    merged = list(old)
    index = {protocol_key(r): i for i, r in enumerate(merged)}
    for r in new:
        key = protocol_key(r)
        if key in index:
            merged[index[key]] = r
        else:
            index[key] = len(merged)
            merged.append(r)
    return merged
