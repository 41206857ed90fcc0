"""``fewshot eval``: adapt the meta-learned network to new test tasks.

Test tasks come from the task source's ``test`` split and a fixed evaluation
seed, so every run (and the pretrained baseline) is scored on the same tasks.
For 0..steps inner steps the query loss (and accuracy) is averaged over the
tasks with a 95% confidence interval ``1.96 * std / sqrt(n)``. A task whose
loss turns non-finite is counted as diverged and left out of the mean and
median at that step count, so one blow-up never becomes a NaN mean.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..algorithms import VECTORIZE_MODES
from ..errors import ConfigError
from ..rundir import RunDir
from . import vectorize
from .setup import Experiment, build_experiment, resolve_device


@dataclass
class EvalSettings:
    """What ``fewshot eval`` was asked for (``None`` means the run's config value)."""

    checkpoint: str | None = None
    tasks: int | None = None
    steps: int | None = None
    shots: int | None = None
    queries: int | None = None
    seed: int | None = None
    inner_lr: float | None = None
    query_batch: str | None = None
    device: str | None = None


def load_experiment(run: RunDir, checkpoint: str, device: str | None = None,
                    inner_lr: float | None = None) -> tuple[Experiment, dict[str, Any]]:
    """Rebuild a run's experiment from its config and load a checkpoint into it."""
    cfg = run.read_config()
    if inner_lr is not None:
        cfg.algorithm.inner_lr = inner_lr
    dev = resolve_device(device or cfg.device)
    state = run.load_checkpoint(checkpoint, map_location=dev)
    exp = build_experiment(cfg, dev)
    try:
        exp.algo.load_state_dict(state["algorithm"])
    except (RuntimeError, KeyError) as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{run.checkpoint_path(checkpoint)}: does not match config ({msg})"
                          ) from None
    return exp, state


def summarize(values: torch.Tensor) -> dict[str, Any]:
    """Mean, 95% CI, median and diverged count of one metric over tasks."""
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


def evaluate(run: RunDir, settings: EvalSettings) -> dict[str, Any]:
    """Evaluate a run; returns the result that is also written to ``eval.json``."""
    cfg = run.read_config()
    e = cfg.eval
    which = settings.checkpoint or e.checkpoint
    exp, state = load_experiment(run, which, settings.device, settings.inner_lr)
    n_tasks = settings.tasks or e.tasks
    steps = settings.steps if settings.steps is not None else (
        e.steps or cfg.algorithm.eval_inner_steps)
    shots = settings.shots or e.shots or cfg.task.shots
    queries = settings.queries or e.queries or cfg.task.queries
    seed = settings.seed if settings.seed is not None else e.seed
    query_batch = settings.query_batch or e.query_batch
    classification = exp.algo.classification
    chunks = queries if (classification and query_batch == "per_class") else 1

    mode_name = run.read_meta().get("vectorize", {}).get("mode")
    mode = mode_name if mode_name in VECTORIZE_MODES else vectorize.choose(exp, "auto")[0]

    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    curves, left = [], n_tasks
    while left > 0:
        n = min(left, e.chunk)
        batch = exp.source.sample(n, gen, "test", shots=shots, queries=queries)
        curves.append(exp.algo.adaptation_curve(batch.to(exp.device, exp.dtype), steps, mode,
                                                query_chunks=chunks).cpu())
        left -= n
    curve = torch.cat(curves)  # [tasks, steps + 1, metrics]
    per_step = []
    for s in range(steps + 1):
        row: dict[str, Any] = {"step": s, "loss": summarize(curve[:, s, 0])}
        if classification:
            row["accuracy"] = summarize(curve[:, s, 1])
        per_step.append(row)
    diverged_tasks = int((~torch.isfinite(curve[..., 0]).all(dim=1)).sum())
    result = {
        "run": str(run.path),
        "checkpoint": which,
        "checkpoint_iteration": state.get("iteration"),
        "settings": {
            "tasks": n_tasks, "steps": steps, "shots": shots, "queries": queries,
            "ways": getattr(cfg.task, "ways", None), "seed": seed,
            "inner_lr": exp.algo.inner_lr, "split": "test", "loss": cfg.algorithm.loss,
            "query_batch": query_batch if classification else "all",
            "protocol": _protocol(classification, query_batch, queries, cfg),
            "vectorize": mode, "device": str(exp.device),
        },
        "diverged_tasks": diverged_tasks,
        "per_step": per_step,
        "seconds": round(time.perf_counter() - start, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    run.write_eval(result)
    return result


def _protocol(classification: bool, query_batch: str, queries: int, cfg) -> str:  # noqa: ANN001
    if not classification:
        return f"{queries} query points per task, one forward pass"
    ways = cfg.task.ways
    if query_batch == "per_class":
        return (f"{queries} queries per class, classified in {queries} batches of {ways} "
                "(one image per class; batch norm uses each batch's statistics)")
    return (f"{queries} queries per class, all {queries * ways} classified in one batch "
            "(batch norm uses that batch's statistics)")
