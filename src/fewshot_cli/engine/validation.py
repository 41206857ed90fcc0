"""The fixed held-out tasks a run validates on, and what validation reports."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..algorithms import Vectorize
from ..tasks import TaskBatch
from .distributed import Sync
from .evaluator import divergence_summary, query_chunks
from .setup import Experiment

#: The validation tasks' generator is seeded with the run's seed plus this.
VAL_SEED_OFFSET = 1_000_003


def validation_tasks(exp: Experiment) -> list[TaskBatch]:
    """The fixed held-out tasks, in evaluation-sized chunks, drawn once per run.

    Empty when the task source has no validation split (an image folder
    without ``val/``): the run then keeps only ``last.pt``.
    """
    cfg = exp.cfg
    if "val" not in getattr(exp.source, "splits", ("val",)):
        return []
    gen = torch.Generator().manual_seed(cfg.seed + VAL_SEED_OFFSET)
    left, chunks = cfg.train.val_tasks, []
    while left > 0:
        n = min(left, cfg.eval.chunk)
        chunks.append(exp.source.sample(n, gen, "val"))
        left -= n
    return chunks


def validate(exp: Experiment, chunks: list[TaskBatch], path: Vectorize,
             sync: Sync | None = None) -> dict[str, Any]:
    """Query loss (and accuracy) after 0..eval_inner_steps steps on the validation tasks
    (classified in batches of one query per class under ``eval.query_batch: per_class``),
    under the same divergence policy as ``fewshot eval``; ``val_loss_median`` is the
    median final loss with diverged tasks counted as infinitely bad (the default
    statistic ``best.pt`` is selected by: one blown-up task cannot hide or fake a gain).
    In a distributed run each rank adapts every world-th chunk and all see every curve."""
    steps = exp.cfg.algorithm.eval_inner_steps
    sync = sync or Sync()
    batches = query_chunks(exp.algo.classification, exp.cfg.eval.query_batch,
                           exp.cfg.task.queries)
    mine = {i: exp.algo.adaptation_curve(chunks[i].to(exp.device, exp.dtype), steps, path,
                                         batches).cpu()
            for i in range(sync.rank, len(chunks), sync.world)}
    found = {i: c for part in sync.gather(mine) for i, c in part.items()}
    curves = torch.cat([found[i] for i in range(len(chunks))])
    per_step = divergence_summary(curves)
    final = curves[:, -1, 0].double()
    final = torch.where(torch.isfinite(final), final, math.inf)  # a diverged task is worst
    out: dict[str, Any] = {
        "val_loss": per_step[-1]["loss"]["mean"],
        "val_loss_median": final.median().item(),
        "val_loss_steps": [_round(r["loss"]["mean"]) for r in per_step],
        "val_diverged": per_step[-1]["loss"]["diverged"],
    }
    if exp.algo.classification:
        out["val_accuracy"] = per_step[-1]["accuracy"]["mean"]
        out["val_accuracy_steps"] = [_round(r["accuracy"]["mean"]) for r in per_step]
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 6)
