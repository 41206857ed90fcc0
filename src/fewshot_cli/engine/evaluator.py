"""``fewshot eval``: adapt the meta-learned network to new test tasks.

Test tasks come from the task source's ``test`` split and a fixed evaluation
seed, so every run (and the pretrained baseline) is scored on the same tasks.
For 0..steps inner steps the query loss (and accuracy) is averaged over the
tasks with a 95% confidence interval ``1.96 * std / sqrt(n)``.

Divergence policy (shared with validation, :func:`divergence_summary`): a task
whose query loss is non-finite after s steps is *diverged* at s; it is counted
in that step's ``diverged`` column and left out of that step's loss *and*
accuracy statistics (NaN logits are not a 1-in-N guess).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..algorithms import PATHS
from ..config import Config, EvalConfig
from ..errors import ConfigError, RunDirError
from ..rundir import RunDir
from . import checkpoint, vectorize
from .setup import Experiment, build_experiment, resolve_device


def load_experiment(run: RunDir, which: str, device: str | None = None,
                    inner_lr: float | None = None) -> tuple[Experiment, dict[str, Any]]:
    """Rebuild a run from its config and load checkpoint ``which`` into it.

    Returns the experiment and the checkpoint (with ``path``, the file read).
    A config.yaml changed since training (network, task, algorithm) is an
    error naming the key; ``inner_lr`` overrides the test-time step size.
    """
    cfg = run.read_config()
    dev = resolve_device(device or cfg.device)
    path = run.resolve_checkpoint(which)
    state = checkpoint.load(path, map_location=dev)
    check_config(cfg, state, path)
    if inner_lr is not None:
        cfg.algorithm.inner_lr = inner_lr
    exp = build_experiment(cfg, dev)
    try:
        exp.algo.load_state_dict(state["algorithm"])
    except (RuntimeError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0][:200]
        raise ConfigError(f"{path}: does not match the run's config.yaml ({msg})") from None
    return exp, {**state, "path": path}


def check_config(cfg: Config, state: dict[str, Any], path: Any) -> None:
    """ConfigError naming the keys where config.yaml no longer matches the checkpoint."""
    trained = state.get("config")
    if not isinstance(trained, dict):
        return  # format 1: no config stored
    diffs = checkpoint.config_differences(trained, cfg.to_dict())
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ConfigError(f"{path}: the run's config.yaml was changed after training: "
                          f"{diffs[0]}{more}; restore config.yaml")


def summarize(values: torch.Tensor) -> dict[str, Any]:
    """Mean, 95% CI, median, std and counts of one metric over tasks; NaN/inf are
    counted as ``diverged`` and left out."""
    finite = torch.isfinite(values)
    v = values[finite].double()
    n = int(v.numel())
    out: dict[str, Any] = {"n": n, "diverged": int((~finite).sum())}
    if n == 0:
        out.update(mean=None, ci95=None, median=None, std=None)
        return out
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    out.update(mean=v.mean().item(), ci95=1.96 * std / math.sqrt(n), median=v.median().item(),
               std=std)
    return out


def divergence_summary(curves: torch.Tensor) -> list[dict[str, Any]]:
    """Per-step statistics of adaptation curves ``[tasks, steps + 1, m]`` (m = 1: loss;
    m = 2: loss, accuracy) under the divergence policy of the module docstring."""
    loss = curves[..., 0]
    diverged = ~torch.isfinite(loss)
    rows = []
    for s in range(curves.shape[1]):
        row: dict[str, Any] = {"step": s, "loss": summarize(loss[:, s])}
        if curves.shape[-1] > 1:
            acc = curves[:, s, 1].masked_fill(diverged[:, s], math.nan)
            row["accuracy"] = summarize(acc)
        rows.append(row)
    return rows


def eval_settings(cfg: Config, **overrides: Any) -> EvalConfig:
    """The run's ``eval`` section with the command line's non-None values on top."""
    data = cfg.eval.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EvalConfig.model_validate(data)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, reported in one line
        raise ConfigError(f"eval settings: {str(e).splitlines()[-1].strip()}") from None


def evaluate(run: RunDir, settings: EvalConfig, device: str | None = None,
             inner_lr: float | None = None) -> dict[str, Any]:
    """Evaluate a run; returns the result (the caller writes ``eval.json``)."""
    cfg = run.read_config()
    exp, state = load_experiment(run, settings.checkpoint, device, inner_lr)
    steps = settings.steps if settings.steps is not None else cfg.algorithm.eval_inner_steps
    shots = settings.shots or cfg.task.shots
    queries = settings.queries or cfg.task.queries
    classification = exp.algo.classification
    chunks = queries if (classification and settings.query_batch == "per_class") else 1
    path = recorded_path(run, exp)

    gen = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    curves, left = [], settings.tasks
    while left > 0:
        n = min(left, settings.chunk)
        batch = exp.source.sample(n, gen, "test", shots=shots, queries=queries)
        curves.append(exp.algo.adaptation_curve(batch.to(exp.device, exp.dtype), steps, path,
                                                query_chunks=chunks).cpu())
        left -= n
    curve = torch.cat(curves)  # [tasks, steps + 1, metrics]
    diverged_tasks = int((~torch.isfinite(curve[..., 0]).all(dim=1)).sum())
    used = state["path"].stem
    return {
        "run": str(run.path),
        "checkpoint": used,
        "checkpoint_requested": settings.checkpoint,
        "checkpoint_iteration": state.get("iteration"),
        "run_status": run.status(),
        "settings": {
            "tasks": settings.tasks, "steps": steps, "shots": shots, "queries": queries,
            "ways": getattr(cfg.task, "ways", None), "seed": settings.seed,
            "inner_lr": exp.algo.inner_lr, "split": "test", "loss": cfg.algorithm.loss,
            "query_batch": settings.query_batch if classification else "all",
            "protocol": _protocol(classification, settings.query_batch, queries, cfg),
            "vectorize": path, "device": str(exp.device),
        },
        "diverged_tasks": diverged_tasks,
        "per_step": divergence_summary(curve),
        "seconds": round(time.perf_counter() - start, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def recorded_path(run: RunDir, exp: Experiment) -> str:
    """The batching path the run trained with (meta.json), if this algorithm can use it
    here; otherwise the best available one."""
    mode = run.read_meta().get("vectorize", {})
    mode = mode.get("mode") if isinstance(mode, dict) else None
    if mode in PATHS and mode in exp.algo.available_paths:
        return mode
    try:
        return vectorize.choose(exp, "auto")[0]
    except RunDirError:
        return exp.algo.available_paths[0]


def _protocol(classification: bool, query_batch: str, queries: int, cfg: Config) -> str:
    if not classification:
        return f"{queries} query points per task, one forward pass"
    ways = cfg.task.ways
    if query_batch == "per_class":
        return (f"{queries} queries per class, classified in {queries} batches of {ways} "
                "(one image per class; batch norm uses each batch's statistics)")
    return (f"{queries} queries per class, all {queries * ways} classified in one batch "
            "(batch norm uses that batch's statistics)")
