"""The meta-training loop.

One iteration: draw a meta-batch from the run's own task generator, compute
the algorithm's outer loss (inner loops inside), step the meta-optimiser.
Every ``log_every`` iterations a row goes to ``metrics.jsonl``; every
``val_every`` the fixed validation tasks are evaluated; ``last.pt`` is
written every ``checkpoint_every`` and ``best.pt`` when validation improves.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .. import __version__
from ..algorithms import Vectorize
from ..config import Config
from ..rundir import RunDir
from ..tasks import TaskBatch
from . import vectorize
from .setup import Experiment

VAL_SEED_OFFSET = 1_000_003


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:  # noqa: ANN001
    if cfg.algorithm.meta_optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.algorithm.meta_lr)
    return torch.optim.SGD(params, lr=cfg.algorithm.meta_lr)


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


def validate(exp: Experiment, chunks: list[TaskBatch], mode: Vectorize) -> dict[str, Any]:
    """Mean query loss (and accuracy) after 0..eval_inner_steps steps on the validation tasks."""
    steps = exp.cfg.algorithm.eval_inner_steps
    curves = torch.cat([
        exp.algo.adaptation_curve(c.to(exp.device, exp.dtype), steps, mode) for c in chunks
    ])
    finite = torch.isfinite(curves[..., 0]).all(dim=1)
    curves = curves[finite] if finite.any() else curves
    mean = curves.mean(dim=0)
    out: dict[str, Any] = {
        "val_loss": mean[-1, 0].item(),
        "val_loss_steps": [round(v, 6) for v in mean[:, 0].tolist()],
        "val_diverged": int((~finite).sum()),
    }
    if exp.algo.classification:
        out["val_accuracy"] = mean[-1, 1].item()
        out["val_accuracy_steps"] = [round(v, 6) for v in mean[:, 1].tolist()]
    return out


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} it/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_meta(exp: Experiment, command: list[str], mode_info: dict[str, Any]) -> dict[str, Any]:
    return {
        "fewshot": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(exp.device),
        "device_name": (torch.cuda.get_device_name(exp.device) if exp.device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "seed": exp.cfg.seed,
        "command": command,
        "vectorize": mode_info,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "iteration": 0,
    }


def train(exp: Experiment, run: RunDir, command: list[str] | None = None,
          console: Console | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Meta-train ``exp`` into ``run``; returns the final meta.json contents."""
    console = console or Console(stderr=True)
    cfg = exp.cfg
    algo, device, dtype = exp.algo, exp.device, exp.dtype
    mode, mode_info = vectorize.choose(exp, cfg.train.vectorize)
    mode_info["mode"] = mode
    optimizer = make_optimizer(cfg, algo.parameters())
    generator = torch.Generator().manual_seed(cfg.seed)
    val_chunks = validation_tasks(exp)

    run.write_config(cfg)
    meta = run_meta(exp, command or sys.argv, mode_info)
    run.write_meta(meta)

    t = cfg.train
    best = math.inf
    start = time.perf_counter()
    window_loss = torch.zeros((), device=device, dtype=dtype)
    window_inner = None
    window_acc = torch.zeros((), device=device, dtype=dtype)
    window_n = 0
    last_log_time, last_log_iter = start, 0
    status = "failed"

    def checkpoint(iteration: int) -> None:
        run.save_checkpoint("last", {
            "format": 1,
            "iteration": iteration,
            "algorithm": algo.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best_val_loss": best,
        })

    progress = _progress(console) if show_progress else None
    it = 0
    try:
        if progress:
            progress.start()
            bar = progress.add_task("train", total=t.iterations, loss="-", rate="-")
        for it in range(1, t.iterations + 1):
            batch = exp.source.sample(cfg.algorithm.meta_batch, generator, "train")
            batch = batch.to(device, dtype)
            loss, metrics = algo.outer_loss(batch, mode)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            window_loss += loss.detach()
            inner = metrics["inner_loss"]
            window_inner = inner if window_inner is None else window_inner + inner
            if "accuracy" in metrics:
                window_acc += metrics["accuracy"]
            window_n += 1
            final = it == t.iterations or (
                t.max_seconds is not None and time.perf_counter() - start >= t.max_seconds)

            row: dict[str, Any] = {}
            if it % t.log_every == 0 or final:
                now = time.perf_counter()
                row.update({
                    "loss": window_loss.item() / window_n,
                    "inner_loss": [v / window_n for v in window_inner.tolist()],
                    "meta_lr": optimizer.param_groups[0]["lr"],
                    "its_per_s": (it - last_log_iter) / max(now - last_log_time, 1e-9),
                })
                if algo.classification:
                    row["accuracy"] = window_acc.item() / window_n
                window_loss.zero_()
                window_acc.zero_()
                window_inner, window_n = None, 0
                last_log_time, last_log_iter = now, it
            if val_chunks and (it % t.val_every == 0 or final):
                val = validate(exp, val_chunks, mode)
                row.update(val)
                if val["val_loss"] < best:
                    best = val["val_loss"]
                    run.save_checkpoint("best", {
                        "format": 1, "iteration": it, "algorithm": algo.state_dict(),
                        "val_loss": best,
                    })
            if row:
                row = {"iteration": it,
                       "time": round(time.perf_counter() - start, 3), **row}
                run.append_metrics(row)
                if progress and "loss" in row:
                    progress.update(bar, loss=f"{row['loss']:.4g}",
                                    rate=f"{row['its_per_s']:.0f}")
            if it % t.checkpoint_every == 0 or final:
                checkpoint(it)
            if progress and (it & 7 == 0 or final):
                progress.update(bar, completed=it)
            if final:
                break
        status = "completed" if it == t.iterations else "stopped at train.max_seconds"
    except KeyboardInterrupt:
        status = "interrupted"
        if it > 0:
            checkpoint(it)
        raise
    finally:
        if progress:
            progress.stop()
        meta = run.update_meta(
            status=status, iteration=it, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            wall_seconds=round(time.perf_counter() - start, 3), best_val_loss=best,
        )
    return meta
