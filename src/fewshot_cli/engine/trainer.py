"""The meta-training loop, and how it stops, checkpoints and resumes.

One iteration draws a meta-batch from the run's own task generator and hands
it to ``algo.meta_step`` (inner loops inside, then the meta-update). Every
``log_every`` iterations the algorithm's metrics, averaged over the window,
go to ``metrics.jsonl``; every ``val_every`` the fixed validation tasks are
evaluated; ``last.pt`` is written every ``checkpoint_every`` and ``best.pt``
when validation improves.

Stops lose nothing: SIGINT and SIGTERM only raise a flag, checked between
iterations, so the saved state is always the state between two iterations;
``last.pt`` then holds everything an uninterrupted run would have in memory
(parameters, optimiser, every RNG, the open log window, elapsed time), and
``fewshot train --resume`` continues bit-identically.
"""

from __future__ import annotations

import math
import os
import platform
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
from ..algorithms import Path
from ..algorithms import Progress as TrainProgress
from ..errors import DistributedError, FewshotError, RunDirError
from ..rundir import RunDir
from ..tasks import TaskBatch
from . import checkpoint, distributed
from .distributed import Sync
from .evaluator import divergence_summary, query_chunks
from .setup import Experiment

VAL_SEED_OFFSET = 1_000_003
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


# ----------------------------------------------------------------------------- stop signals
class StopSignals:
    """SIGINT / SIGTERM raise a flag instead of an exception, while installed.

    The loop finishes (or never starts) the current iteration, saves and exits;
    a second signal during the save changes nothing.
    """

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_first = on_first
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is None and self._on_first is not None:
            self._on_first(signum)
        self.signum = self.signum or signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNAL_EXIT:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


# ----------------------------------------------------------------------------- log window
@dataclass
class Window:
    """Sums of the metrics since the last ``metrics.jsonl`` row, and how many
    iterations reported each (a metric may be reported on logged iterations only)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach()
            self.sums[k] = v.clone() if k not in self.sums else self.sums[k] + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def flush(self) -> dict[str, Any]:
        """Window means: a float per scalar metric, a list per vector metric."""
        row = {k: (v / self.counts[k]).tolist() for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


# ----------------------------------------------------------------------------- validation
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


def validate(exp: Experiment, chunks: list[TaskBatch], path: Path,
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


# ----------------------------------------------------------------------------- the loop
@dataclass
class Outcome:
    """How training ended: status for meta.json, exit code, a line for the user."""

    status: str
    iteration: int
    exit_code: int
    message: str
    meta: dict[str, Any]
    trained: bool = True  # False when --resume found nothing to do


def run_meta(exp: Experiment, command: list[str], path_info: dict[str, Any]) -> dict[str, Any]:
    """meta.json of a new run."""
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
        "algorithm": exp.cfg.algorithm.kind,
        "task": exp.cfg.task.kind,
        "command": command,
        "vectorize": path_info,
        "status": "running",
        "pid": os.getpid(),
        "started": _now(),
        "iteration": 0,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def rate_text(its_per_s: float) -> str:
    """``12 it/s``, or ``3.4 s/it`` when slower than one iteration per second."""
    if its_per_s >= 1:
        return f"{its_per_s:.0f} it/s"
    return f"{1 / its_per_s:.2g} s/it" if its_per_s > 0 else "- it/s"


def _params_finite(algo: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in algo.parameters())


def train(exp: Experiment, run: RunDir, path: Path, *, stop: StopSignals,
          resume: dict[str, Any] | None = None, console: Console | None = None,
          show_progress: bool = True, tensorboard: Any = None) -> Outcome:
    """Meta-train ``exp`` into ``run`` along batching ``path``, from scratch or from
    the ``last.pt`` state ``resume``. The run directory's config and meta.json
    exist already; this writes metrics, checkpoints and the final status.

    In a distributed run (``exp.algo.sync``) every rank runs this loop on its share of
    each meta-batch; rank 0 alone writes, and what ends the loop is agreed on by all."""
    console = console or Console(stderr=True)
    cfg, t = exp.cfg, exp.cfg.train
    algo, device, dtype = exp.algo, exp.device, exp.dtype
    sync: Sync = algo.sync
    main = sync.main
    n_tasks = sync.split(cfg.algorithm.meta_batch)
    own_seed = distributed.rank_seed(cfg.seed, sync.rank)
    optimizer = algo.configure_optimizer()
    scheduler = algo.configure_scheduler(optimizer, t.iterations)
    generator = torch.Generator().manual_seed(own_seed)
    window = Window()
    it, elapsed_before, best = 0, 0.0, math.inf
    if resume is not None:
        algo.load_state_dict(resume["algorithm"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler") is not None:
            scheduler.load_state_dict(resume["scheduler"])
        rngs = resume.get("rng_ranks")
        checkpoint.restore_rng(rngs[sync.rank] if rngs else resume["rng"], generator)
        tr = resume["trainer"]
        window.load_state_dict(tr["window"])
        it, elapsed_before = int(resume["iteration"]), float(tr["elapsed"])
        best = math.inf if tr["best_val_score"] is None else float(tr["best_val_score"])
    else:  # torch is seeded when the network is built; Python's and NumPy's RNGs here
        random.seed(own_seed)
        np.random.seed(own_seed % 2**32)
        if sync.rank > 0:  # the network is the same on every rank; the rest is its own
            torch.manual_seed(own_seed)
    val_chunks = validation_tasks(exp)
    config_dict = cfg.to_dict()

    def state(iteration: int, elapsed: float, rngs: list[Any]) -> dict[str, Any]:
        out = {
            "iteration": iteration, "config": config_dict, "algorithm": algo.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": rngs[0],
            "trainer": {"elapsed": elapsed, "best_val_score": None if math.isinf(best) else best,
                        "window": window.state_dict(), "path": path},
        }
        if sync.active:
            out["rng_ranks"] = rngs
            out["trainer"]["world_size"] = sync.world
        return out

    saved = it if resume is not None else None

    def save_last(iteration: int, elapsed: float) -> None:
        nonlocal saved
        rngs = sync.gather(checkpoint.rng_state(generator))  # every rank's streams
        saved = iteration
        if not main:
            return
        run.save_checkpoint("last", state(iteration, elapsed, rngs))
        if t.keep_checkpoints:
            run.keep_checkpoint(iteration, t.keep_checkpoints)
        run.update_meta(iteration=iteration, checkpoint_iteration=iteration,
                        train_seconds=round(elapsed, 3))

    status, exit_code, message = "failed", 1, ""
    failure: dict[str, Any] | None = None
    stop_agreed = False
    start = time.perf_counter()
    last_log_time, last_log_iter = start, it
    first_it, bar_time = it, start
    progress = _progress(console) if show_progress and main else None
    bar = None
    try:
        if progress:
            progress.start()
            bar = progress.add_task("train", total=t.iterations, completed=it, loss="-",
                                    rate="-")
        if resume is None:
            save_last(0, 0.0)  # a run stopped before its first checkpoint resumes from here
        while True:
            if stop_agreed or (stop.requested and not sync.active):
                status = "interrupted"
                save_last(it, elapsed_before + time.perf_counter() - start)
                exit_code = SIGNAL_EXIT.get(stop.signum, 130) if stop.signum else 130
                message = (f"interrupted at iteration {it}; last.pt saved\n"
                           f"resume: {resume_command(run, sync)}")
                break
            if it >= t.iterations:
                status, exit_code = "completed", 0
                break
            it += 1
            batch = exp.source.sample(n_tasks, generator, "train")
            logged = it % t.log_every == 0 or it == t.iterations
            metrics = algo.meta_step(batch.to(device, dtype), path,
                                     TrainProgress(it, t.iterations, logged), optimizer)
            if scheduler is not None:
                scheduler.step()
            elapsed = elapsed_before + time.perf_counter() - start
            timed_out = t.max_seconds is not None and elapsed >= t.max_seconds
            if sync.active:  # the meta-batch's metrics, and what stops the run, agreed on
                keys = sorted(metrics)
                values, (stop_agreed, timed_out) = sync.mean(
                    [metrics[k] for k in keys], [stop.requested, timed_out and main])
                metrics = dict(zip(keys, values, strict=True))
            loss = metrics.get("loss")
            if loss is not None and not math.isfinite(loss.item()):
                status = "diverged"
                message = (f"training diverged at iteration {it}: the training loss is "
                           f"{loss.item()}; kept the last good checkpoint (iteration {saved})")
                break
            window.add(metrics)
            final = it == t.iterations or timed_out

            row: dict[str, Any] = {}
            if it % t.log_every == 0 or final:
                now = time.perf_counter()
                row.update(window.flush())
                row["meta_lr"] = optimizer.param_groups[0]["lr"]
                row["its_per_s"] = (it - last_log_iter) / max(now - last_log_time, 1e-9)
                last_log_time, last_log_iter = now, it
            if val_chunks and (it % t.val_every == 0 or final):
                val = validate(exp, val_chunks, path, sync)
                row.update(val)
                score = val["val_loss_median" if t.select == "median" else "val_loss"]
                if score is not None and math.isfinite(score) and score < best:
                    best = score
                    if main:
                        run.save_checkpoint("best", {"iteration": it, "config": config_dict,
                                                     "algorithm": algo.state_dict(),
                                                     "val_score": best, "selected_by": t.select})
            if row and main:
                row = {"iteration": it, "time": round(elapsed, 3), **row}
                run.append_metrics(row)
                if tensorboard is not None:
                    tensorboard.log(row)
                if progress and isinstance(row.get("loss"), float):
                    progress.update(bar, loss=f"{row['loss']:.4g}")
            if it % t.checkpoint_every == 0 or final:
                if not _params_finite(algo):
                    status = "diverged"
                    message = (f"training diverged at iteration {it}: the parameters are not "
                               f"finite; kept the last good checkpoint (iteration {saved})")
                    break
                save_last(it, elapsed_before + time.perf_counter() - start)
            if progress:
                now = time.perf_counter()
                if final or now - bar_time >= 0.25:  # rate and ETA from the first seconds
                    progress.update(bar, completed=it,
                                    rate=rate_text((it - first_it) / max(now - start, 1e-9)))
                    bar_time = now
            if timed_out:
                status, exit_code = "stopped at train.max_seconds", 0
                break
    except FewshotError as e:
        message = str(e)
        raise
    except Exception as e:
        if not sync.active:
            raise
        # A rank raised, died or stopped answering: leave the last checkpoint as it is.
        failure = _failure(sync, e)
        message = (f"distributed training failed at iteration {it}: {failure['text']}; "
                   f"kept the last checkpoint (iteration {saved})")
        raise DistributedError(message) from None
    finally:
        if progress:
            progress.stop()
        if tensorboard is not None:
            tensorboard.close()
        fields: dict[str, Any] = {
            "status": status, "ended": _now(),
            "wall_seconds": round(time.perf_counter() - start, 3),
            "best_val": None if math.isinf(best) else {"statistic": t.select, "value": best}}
        if failure is not None:
            fields["failure"] = {k: v for k, v in failure.items() if k != "text"}
        if status != "diverged":
            fields["iteration"] = it
        meta: dict[str, Any] = {}
        if main:
            try:
                meta = run.update_meta(**fields)
            except (OSError, RunDirError):
                meta = {**run.read_meta(), **fields}
    return Outcome(status, it, exit_code, message, meta)


def resume_command(run: RunDir, sync: Sync) -> str:
    """How to continue ``run``: with ``torchrun`` and the same world size if distributed."""
    if not sync.active:
        return f"fewshot train --resume {run.path}"
    return (f"torchrun --nproc-per-node {sync.world} -m fewshot_cli train --resume {run.path}"
            " (the same number of processes)")


def _failure(sync: Sync, error: BaseException) -> dict[str, Any]:
    """What ``meta.json`` records of a failed distributed run: which rank failed and its
    error where it said (this rank's own error, or one another rank reported), else this
    rank's view of the collective that broke."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    first = re.sub(r"^\[[^\]]*\.(cc|cpp):\d+\]\s*", "", first)  # gloo's source location
    first = first.split(". This is typically caused")[0]
    text = f"{type(error).__name__}: {first}"
    if not sync.main:
        sync.report_failure(text)
        return {"rank": sync.rank, "error": text, "text": f"rank {sync.rank}: {text}"}
    reported = sync.failure()
    if reported is not None:
        rank, err = reported
        return {"rank": rank, "error": err, "text": f"rank {rank}: {err}"}
    gone = distributed.gone_ranks()
    if gone:
        who = ", ".join(str(r) for r in gone)
        return {"rank": gone[0], "error": f"process ended without an error report ({text})",
                "text": f"rank {who} ended without an error report ({text})"}
    return {"rank": sync.rank if "Timeout" in text or "timed out" in text else None,
            "error": text, "text": text}
