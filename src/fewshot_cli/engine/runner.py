"""Starting a new run and resuming an old one: everything between the CLI and
the training loop (building, choosing the batching path, the run directory,
its lock, signals, and the checks that make ``--resume`` safe)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ..algorithms import Path as Path_
from ..config import Config, apply_overrides, parse_override, validate
from ..errors import ConfigError, RunDirError
from ..rundir import RunDir
from . import checkpoint, threads, trainer, vectorize
from .evaluator import check_config
from .setup import Experiment, build_experiment
from .trainer import Outcome, StopSignals

#: What ``--set`` may change on ``--resume``: the rest is what the checkpoint was trained with.
RESUMABLE_OVERRIDES = ("train", "eval", "device")


def _announce(console: Console) -> Any:
    def on_first(signum: int) -> None:
        console.print("stopping after the current iteration (saving last.pt)...", highlight=False)
    return on_first


def _build(cfg: Config) -> Experiment:
    """The experiment, after checking what training needs beyond it (the tensorboard
    package when asked for), so a missing piece fails before the run directory changes."""
    if cfg.train.tensorboard:
        from .tensorboard import require_tensorboard

        require_tensorboard()
    return build_experiment(cfg)


def _tensorboard(cfg: Config, run: RunDir, purge_step: int | None) -> Any:
    if not cfg.train.tensorboard:
        return None
    from .tensorboard import TensorBoardLog

    return TensorBoardLog(run.path / "tensorboard", purge_step)


def start(cfg: Config, *, runs_root: Path, run_dir: Path | None, console: Console,
          show_progress: bool = True) -> tuple[RunDir, Outcome]:
    """Build ``cfg`` (data, device and path errors come before any folder exists),
    create its run directory and train."""
    exp = _build(cfg)
    path, info = choose_path_and_threads(exp, console)
    with StopSignals(_announce(console)) as stop:
        run = RunDir.create(cfg.name, runs_root, run_dir)
        with run.lock():
            run.write_config(cfg)
            run.write_meta(trainer.run_meta(exp, list(sys.argv), info))
            console.print(f"run directory: [bold]{run.path}[/]", highlight=False)
            outcome = trainer.train(exp, run, path, stop=stop, console=console,
                                    show_progress=show_progress,
                                    tensorboard=_tensorboard(cfg, run, None))
    return run, outcome


def choose_path_and_threads(exp: Experiment, console: Console) -> tuple[Path_, dict[str, Any]]:
    """The batching path (timed with one thread, or ``train.threads``), then the thread
    count for that path; both recorded in meta.json's ``vectorize``."""
    requested = exp.cfg.train.threads
    threads.apply(requested or 1)
    with console.status("choosing how to batch tasks (timing each path once)...",
                        spinner="line"):
        path, info = vectorize.choose(exp, exp.cfg.train.vectorize)
        n, info["threads"] = threads.choose(exp, path, requested, vectorize.cache_key(exp))
    return path, info


def resume_config(run: RunDir, overrides: list[str]) -> Config:
    """The run's config with the ``--set`` overrides resuming allows."""
    cfg = run.read_config()
    for text in overrides:
        path, _ = parse_override(text)
        if path[0] not in RESUMABLE_OVERRIDES:
            raise ConfigError(
                f"--set {text}: only train.*, eval.* and device can change when resuming "
                "(the checkpoint was trained with the rest of the config)")
    if not overrides:
        return cfg
    try:
        data = apply_overrides(cfg.to_dict(), overrides)
    except ConfigError as e:
        raise ConfigError(f"{run.config_path}: {e}") from None
    return validate(data, f"{run.config_path} with --set")


def resume(path: Path, overrides: list[str], *, console: Console,
           show_progress: bool = True) -> tuple[RunDir, Outcome]:
    """Continue a run from ``checkpoints/last.pt`` (from the start if it has none)."""
    run = RunDir.open(path)
    status = run.status()  # before taking the lock, which would make it look alive
    with StopSignals(_announce(console)) as stop, run.lock():
        meta = run.read_meta()
        cfg = resume_config(run, overrides)
        last = run.checkpoint_path("last")
        state = checkpoint.load(last) if last.is_file() else None
        if state is not None:
            if state.get("format") != checkpoint.FORMAT or "trainer" not in state:
                raise RunDirError(f"{last}: written by an older fewshot without the state "
                                  "resuming needs; start a new run")
            check_config(cfg, state, last)
        done = state["iteration"] if state is not None else 0
        elapsed = state["trainer"]["elapsed"] if state is not None else 0.0
        if done >= cfg.train.iterations:
            return run, Outcome(status, done, 0,
                                f"{run.path}: already completed ({done} iterations); nothing "
                                "changed. Extend it with --set train.iterations=N", meta, False)
        if cfg.train.max_seconds is not None and elapsed >= cfg.train.max_seconds:
            return run, Outcome(status, done, 0,
                                f"{run.path}: stopped at train.max_seconds "
                                f"({cfg.train.max_seconds:g} s of training); nothing changed. "
                                "Raise it with --set train.max_seconds=S", meta, False)
        exp = _build(cfg)
        recorded = (state["trainer"]["path"] if state is not None
                    else (meta.get("vectorize") or {}).get("mode"))
        record = meta.get("vectorize") if isinstance(meta.get("vectorize"), dict) else {}
        if recorded in exp.algo.available_paths:
            chosen = recorded
            n = cfg.train.threads or (record.get("threads") or {}).get("threads") or 1
            threads.apply(n if isinstance(n, int) and n >= 1 else 1)
        else:
            chosen, meta["vectorize"] = choose_path_and_threads(exp, console)
        run.truncate_metrics(done)
        if overrides:
            run.write_config(cfg)
        history = meta.get("resumed") if isinstance(meta.get("resumed"), list) else []
        meta.update(status="running", pid=os.getpid(), iteration=done,
                    resumed=[*history, {"iteration": done, "previous_status": status,
                                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "command": list(sys.argv)}])
        meta.pop("ended", None)
        run.write_meta(meta)
        console.print(f"resuming [bold]{run.path}[/] at iteration {done} (was {status})",
                      highlight=False)
        outcome = trainer.train(exp, run, chosen, stop=stop, resume=state, console=console,
                                show_progress=show_progress,
                                tensorboard=_tensorboard(cfg, run, done + 1))
    return run, outcome
