"""Starting a new run and resuming an old one: everything between the CLI and
the training loop (building, choosing the batching path, the run directory,
its lock, signals, and the checks that make ``--resume`` safe).

Both go the same way: join the process group, check what can be checked (a new run:
its ``--run-dir``; a resumed one: its checkpoint, config and world size), build the
experiment on every rank, choose the batching path and threads on rank 0, write the run
directory's config and meta.json on rank 0, then train. Every step that can fail on one
rank is agreed on by all (:meth:`Sync.agree`), so no rank waits for one that gave up.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console

from .. import provenance
from ..algorithms import Vectorize
from ..config import Config, apply_overrides, parse_override, validate
from ..errors import AgreedError, ConfigError, FewshotError, RunDirError
from ..rundir import RunDir
from . import checkpoint, distributed, threads, trainer, vectorize
from .checkpoint import check_config
from .distributed import Sync
from .setup import Experiment, build_experiment, resolve_device
from .stopping import StopSignals
from .trainer import Outcome

#: What ``--set`` may change on ``--resume``: the rest is what the checkpoint was trained with.
RESUMABLE_OVERRIDES = ("train", "eval", "device")

T = TypeVar("T")


# ----------------------------------------------------------------------------- the two ways in
def start(cfg: Config, *, runs_root: Path, run_dir: Path | None, console: Console,
          show_progress: bool = True) -> tuple[RunDir, Outcome]:
    """Build ``cfg`` (data, device and path errors come before any folder exists),
    create its run directory and train; across processes when launched by ``torchrun``."""
    if run_dir is not None and Path(run_dir).exists():  # before any slow set-up
        raise RunDirError(f"{run_dir}: --run-dir must not exist yet (it would be overwritten)")
    sync, device = join_training(cfg)
    exp = _build_on_every_rank(cfg, sync, device)
    path, info = _path_for_every_rank(exp, console, sync)
    dist_meta = _distributed_meta(exp, sync)
    with _session(console, sync) as (stop, stack):
        def create() -> str:
            run = RunDir.create(cfg.name, runs_root, run_dir)
            stack.enter_context(run.lock())
            run.write_config(cfg)
            meta = trainer.run_meta(exp, list(sys.argv), info)
            if dist_meta is not None:
                meta["distributed"] = dist_meta
            run.write_meta(meta)
            return str(run.path)

        run = RunDir(Path(sync.broadcast(_agreed(sync, create, main_only=True))))
        if sync.main:
            console.print(f"run directory: [bold]{run.path}[/]", highlight=False)
        return run, _train(exp, run, path, stop, console, show_progress, None)


def resume(path: Path, overrides: list[str], *, console: Console,
           show_progress: bool = True) -> tuple[RunDir, Outcome]:
    """Continue a run from ``checkpoints/last.pt`` (from the start if it has none); a
    distributed run with the ``torchrun`` world size it was trained with."""
    run = RunDir.open(path)
    status = run.status()  # before taking the lock, which would make it look alive
    cfg = resume_config(run, overrides)
    sync, device = join_training(cfg)
    with _session(console, sync) as (stop, stack):
        def check() -> tuple[dict[str, Any] | None, dict[str, Any], Outcome | None]:
            if sync.main:
                stack.enter_context(run.lock())
            meta = run.read_meta()
            last = run.checkpoint_path("last")
            state = checkpoint.load(last) if last.is_file() else None
            if state is not None:
                if state.get("format") != checkpoint.FORMAT or "trainer" not in state:
                    raise RunDirError(f"{last}: written by an older fewshot without the state "
                                      "resuming needs; start a new run")
                check_config(cfg, state, last)
                _check_world_size(state, sync, last)
            return state, meta, _nothing_to_do(run, cfg, state, status, meta)

        state, meta, finished = _agreed(sync, check)
        if finished is not None:
            return run, finished
        done = state["iteration"] if state is not None else 0
        exp = _build_on_every_rank(cfg, sync, device)
        path, meta = _resumed_path(exp, state, meta, console, sync)
        dist_meta = _distributed_meta(exp, sync)
        if sync.main:
            data = trainer.data_fingerprint(exp)
            changed = provenance.data_changes((meta.get("provenance") or {}).get("data"), data)
            if changed:
                console.print(f"warning: {run.path}: the data differs from what the run was "
                              f"trained on ({'; '.join(changed[:3])}); resuming anyway, "
                              "recorded in meta.json", highlight=False, soft_wrap=True)
            _mark_resumed(run, cfg, meta, done, status, overrides, dist_meta,
                          data if changed else None)
            console.print(f"resuming [bold]{run.path}[/] at iteration {done} (was {status})",
                          highlight=False)
        return run, _train(exp, run, path, stop, console, show_progress, state)


# ----------------------------------------------------------------------------- shared steps
@contextmanager
def _session(console: Console, sync: Sync) -> Iterator[tuple[StopSignals, ExitStack]]:
    """Stop signals caught (rank 0 says it is stopping) and a stack for the run's lock."""
    def on_first(signum: int) -> None:
        console.print("stopping: the current iteration ends (a validation at once), then "
                      "last.pt is saved...",
                      highlight=False)

    with StopSignals(on_first if sync.main else None) as stop, ExitStack() as stack:
        yield stop, stack


def _agreed(sync: Sync, step: Callable[[], T], main_only: bool = False) -> T:
    """``step()`` (on rank 0 alone with ``main_only``; None elsewhere), its error raised
    on every rank if it failed on any."""
    result, error = None, None
    if sync.main or not main_only:
        try:
            result = step()
        except FewshotError as e:
            error = e
    sync.agree(error)
    return result  # type: ignore[return-value]


def _train(exp: Experiment, run: RunDir, path: Vectorize, stop: StopSignals,
           console: Console, show_progress: bool, state: dict[str, Any] | None) -> Outcome:
    """The training loop, with TensorBoard on rank 0 when the config asks for it."""
    purge = state["iteration"] + 1 if state is not None else None
    board = _tensorboard(exp.cfg, run, purge) if exp.sync.main else None
    return trainer.train(exp, run, path, stop=stop, resume=state, console=console,
                         show_progress=show_progress, tensorboard=board)


def _build(cfg: Config, device: torch.device | None = None, sync: Sync | None = None
           ) -> Experiment:
    """The experiment, after checking what training needs beyond it (the tensorboard
    package when asked for), so a missing piece fails before the run directory changes."""
    if cfg.train.tensorboard:
        from .tensorboard import require_tensorboard

        require_tensorboard()
    return build_experiment(cfg, device, sync)


def _tensorboard(cfg: Config, run: RunDir, purge_step: int | None) -> Any:
    if not cfg.train.tensorboard:
        return None
    from .tensorboard import TensorBoardLog

    return TensorBoardLog(run.path / "tensorboard", purge_step,
                          config=cfg.to_dict() if purge_step is None else None)


def _build_on_every_rank(cfg: Config, sync: Sync, device: torch.device | None) -> Experiment:
    """The experiment on every rank, or the first rank's error on every rank."""
    return _agreed(sync, lambda: _build(cfg, device, sync))


def _path_for_every_rank(exp: Experiment, console: Console, sync: Sync
                         ) -> tuple[Vectorize, dict[str, Any]]:
    """The batching path and threads, chosen on rank 0 and used by all."""
    if not sync.active:
        return choose_path_and_threads(exp, console)
    if sync.main:
        requested = exp.cfg.train.threads
        if exp.device.type == "cpu" and requested is None:
            # Ranks share the node's cores: each takes its part rather than timing 1 or all.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            requested = max(1, (os.cpu_count() or 1) // local)
        choice = choose_path_and_threads(exp, console, requested)
    else:
        choice = None
    path, info = sync.broadcast(choice)
    threads.apply(int(info["threads"]["threads"]))
    return path, info


def _resumed_path(exp: Experiment, state: dict[str, Any] | None, meta: dict[str, Any],
                  console: Console, sync: Sync) -> tuple[Vectorize, dict[str, Any]]:
    """The path the run trained on (its checkpoint, else meta.json) with its thread count,
    where this algorithm can still take it; else chosen anew (and recorded in ``meta``)."""
    recorded = state["trainer"]["path"] if state is not None else vectorize.recorded(meta)
    if recorded not in exp.algo.available_paths:
        path, meta["vectorize"] = _path_for_every_rank(exp, console, sync)
        return path, meta
    record = meta.get("vectorize") if isinstance(meta.get("vectorize"), dict) else {}
    n = exp.cfg.train.threads or (record.get("threads") or {}).get("threads") or 1
    threads.apply(n if isinstance(n, int) and n >= 1 else 1)
    return recorded, meta


def _mark_resumed(run: RunDir, cfg: Config, meta: dict[str, Any], done: int, status: str,
                  overrides: list[str], dist_meta: dict[str, Any] | None,
                  new_data: dict[str, Any] | None) -> None:
    """meta.json (and, with overrides, config.yaml) of a run about to continue, its
    metrics cut back to the checkpoint's iteration; ``new_data``: the data's fingerprint
    where it changed (kept in the ``resumed`` entry)."""
    run.truncate_metrics(done)
    if overrides:
        run.write_config(cfg)
    history = meta.get("resumed") if isinstance(meta.get("resumed"), list) else []
    entry = {"iteration": done, "previous_status": status,
             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": list(sys.argv),
             "git": provenance.git_state()}
    if new_data is not None:
        entry["data"] = new_data
    meta.update(status="running", pid=os.getpid(), iteration=done, resumed=[*history, entry])
    meta.pop("ended", None)
    meta.pop("failure", None)
    if dist_meta is not None:
        meta["distributed"] = dist_meta
    run.write_meta(meta)


def _distributed_meta(exp: Experiment, sync: Sync) -> dict[str, Any] | None:
    """meta.json's ``distributed`` record (every rank's device, host and pid; a
    collective), or None in one process."""
    if not sync.active:
        return None
    devices = sync.gather(str(exp.device))
    return {"world_size": sync.world, "backend": distributed.backend(), "devices": devices,
            "hosts": [h for h, _ in distributed.peers()],
            "pids": [p for _, p in distributed.peers()],
            "meta_batch_per_rank": [distributed.share(exp.cfg.algorithm.meta_batch, r, sync.world)
                                    for r in range(sync.world)]}


# ----------------------------------------------------------------------------- the process group
def join(cfg: Config, device_spec: str | None = None) -> tuple[Sync, torch.device | None]:
    """This process's place in a ``torchrun`` launch (one process otherwise), and the
    device it trains on: ``cuda:LOCAL_RANK`` for a CUDA run across processes (with the
    ``gloo`` backend, more processes than GPUs share them in turn)."""
    if not distributed.launched():
        return Sync(), None
    device = resolve_device(device_spec or cfg.device)
    backend = cfg.train.dist_backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"train.dist_backend: nccl needs a CUDA device, found {device}")
    if device.type == "cuda":
        count, local = torch.cuda.device_count(), distributed.local_rank()
        if local >= count and backend == "nccl":
            raise ConfigError(f"LOCAL_RANK {local}: only {count} GPU(s) here, and nccl "
                              "gives each process its own; start at most that many processes "
                              "per node, or share them with --set train.dist_backend=gloo")
        device = torch.device("cuda", local % count)
        torch.cuda.set_device(device)
    return distributed.start(cfg.train.dist_timeout, backend, device), device


def join_training(cfg: Config) -> tuple[Sync, torch.device | None]:
    """:func:`join`, for training: every rank needs at least one task of a meta-batch."""
    sync, device = join(cfg)
    if cfg.algorithm.meta_batch < sync.world:
        raise AgreedError(f"algorithm.meta_batch: {cfg.algorithm.meta_batch} tasks cannot be "
                          f"split over {sync.world} processes (each needs at least one)", 2)
    return sync, device


# ----------------------------------------------------------------------------- choices and checks
def choose_path_and_threads(exp: Experiment, console: Console, requested: int | None = None
                            ) -> tuple[Vectorize, dict[str, Any]]:
    """The batching path (timed with one thread, or ``train.threads`` / ``requested``), then
    the thread count for that path; both recorded in meta.json's ``vectorize``."""
    requested = requested or exp.cfg.train.threads
    threads.apply(requested or 1)

    def announce(what: str) -> None:  # one line, shown with or without a progress bar
        console.print(f"{what}...", highlight=False, soft_wrap=True)

    with console.status("choosing how to batch tasks...", spinner="line"):
        path, info = vectorize.choose(exp, exp.cfg.train.vectorize, announce)
        n, info["threads"] = threads.choose(exp, path, requested, vectorize.cache_key(exp),
                                            announce)
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


def _check_world_size(state: dict[str, Any], sync: Sync, last: Path) -> None:
    """A run resumes with the number of processes it was trained with: each one's task
    stream and share of the meta-batch depend on it."""
    trained = int(state["trainer"].get("world_size", 1))
    if trained != sync.world:
        how = ("fewshot train --resume (one process)" if trained == 1 else
               f"torchrun --nproc-per-node {trained} -m fewshot_cli train --resume "
               "(or the same total over several nodes)")
        raise RunDirError(f"{last}: trained with {trained} process(es), resumed with "
                          f"{sync.world}; resume it exactly with {how}")


def _nothing_to_do(run: RunDir, cfg: Config, state: dict[str, Any] | None, status: str,
                   meta: dict[str, Any]) -> Outcome | None:
    """The outcome of a resume that finds the run already finished, else None."""
    done = state["iteration"] if state is not None else 0
    elapsed = state["trainer"]["elapsed"] if state is not None else 0.0
    if state is not None and state["trainer"].get("pending") is not None:
        return None  # stopped inside its last iteration's validation: that is left to do
    if done >= cfg.train.iterations:
        return Outcome(status, done, 0,
                       f"{run.path}: already completed ({done} iterations); nothing "
                       "changed. Extend it with --set train.iterations=N", meta, False)
    if cfg.train.max_seconds is not None and elapsed >= cfg.train.max_seconds:
        return Outcome(status, done, 0,
                       f"{run.path}: stopped at train.max_seconds "
                       f"({cfg.train.max_seconds:g} s of training); nothing changed. "
                       "Raise it with --set train.max_seconds=S", meta, False)
    return None
