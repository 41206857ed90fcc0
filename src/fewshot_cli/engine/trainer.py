"""The meta-training loop, and how it stops, checkpoints and resumes.

One iteration draws a meta-batch from the run's own task generator and hands it to
:func:`.meta_update` (inner loops inside, then the meta-update). Every ``log_every``
iterations the algorithm's metrics, averaged over the window, go to ``metrics.jsonl``;
every ``val_every`` the fixed validation tasks are evaluated; ``last.pt`` is written
every ``checkpoint_every`` and ``best.pt`` when validation improves.

Stops lose nothing: SIGINT and SIGTERM only raise a flag (:mod:`.stopping`), checked
between iterations, so the saved state is always the state between two iterations;
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
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.console import Console

from .. import __version__, provenance
from ..algorithms import TrainingProgress, Vectorize
from ..errors import DistributedError, FewshotError, RunDirError
from ..rundir import RunDir
from . import checkpoint, distributed
from .distributed import Sync
from .meta_update import meta_update
from .progress import Bar, Clock
from .setup import Experiment
from .stopping import Interrupted, StopSignals
from .validation import validate, validation_tasks


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


# ----------------------------------------------------------------------------- the run's state
@dataclass
class Outcome:
    """How training ended: status for meta.json, exit code, a line for the user."""

    status: str
    iteration: int
    exit_code: int
    message: str
    meta: dict[str, Any]
    trained: bool = True  # False when --resume found nothing to do


class State:
    """Everything ``last.pt`` holds: the algorithm, its optimiser and schedule, this
    rank's task generator and the other RNGs, the iteration, the training time before
    this process, the best validation score and the open log window."""

    def __init__(self, exp: Experiment, path: Vectorize,
                 resume: dict[str, Any] | None) -> None:
        cfg, sync = exp.cfg, exp.sync
        self.exp, self.path = exp, path
        self.optimizer = exp.algo.configure_optimizer()
        self.scheduler = exp.algo.configure_scheduler(self.optimizer, cfg.train.iterations)
        own_seed = distributed.rank_seed(cfg.seed, sync.rank)
        self.generator = torch.Generator().manual_seed(own_seed)
        self.window = Window()
        self.iteration, self.elapsed_before, self.best = 0, 0.0, math.inf
        #: Saved inside iteration ``iteration``'s validation (a stop there): the training time
        #: at the end of its meta-update; its validation, log row and checkpoint are still
        #: to do, and a resumed run does them first. None between iterations.
        self.pending: float | None = None
        #: The iteration of the last checkpoint written (None: none by this process yet).
        self.saved: int | None = None
        self.config = cfg.to_dict()
        if resume is not None:
            self._load(resume)
        else:  # torch is seeded when the network is built; Python's and NumPy's RNGs here
            random.seed(own_seed)
            np.random.seed(own_seed % 2**32)
            if sync.rank > 0:  # the network is the same on every rank; the rest is its own
                torch.manual_seed(own_seed)

    def _load(self, resume: dict[str, Any]) -> None:
        self.exp.algo.load_state_dict(resume["algorithm"])
        self.optimizer.load_state_dict(resume["optimizer"])
        if self.scheduler is not None and resume.get("scheduler") is not None:
            self.scheduler.load_state_dict(resume["scheduler"])
        rngs = resume.get("rng_ranks")
        checkpoint.restore_rng(rngs[self.exp.sync.rank] if rngs else resume["rng"],
                               self.generator)
        tr = resume["trainer"]
        self.window.load_state_dict(tr["window"])
        self.iteration, self.elapsed_before = int(resume["iteration"]), float(tr["elapsed"])
        self.best = math.inf if tr["best_val_score"] is None else float(tr["best_val_score"])
        self.pending = None if tr.get("pending") is None else float(tr["pending"])
        self.saved = self.iteration

    def last(self, elapsed: float, rngs: list[Any]) -> dict[str, Any]:
        """The contents of ``last.pt`` (``rngs``: every rank's random state)."""
        sync = self.exp.sync
        out = {
            "iteration": self.iteration, "config": self.config,
            "algorithm": self.exp.algo.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": rngs[0],
            "trainer": {"elapsed": elapsed,
                        "best_val_score": None if math.isinf(self.best) else self.best,
                        "window": self.window.state_dict(), "path": self.path,
                        "pending": self.pending},
        }
        if sync.active:
            out["rng_ranks"] = rngs
            out["trainer"]["world_size"] = sync.world
        return out

    def best_checkpoint(self, select: str) -> dict[str, Any]:
        """The contents of ``best.pt``."""
        return {"iteration": self.iteration, "config": self.config,
                "algorithm": self.exp.algo.state_dict(), "val_score": self.best,
                "selected_by": select}


# ----------------------------------------------------------------------------- writing
class Writer:
    """What a run writes while it trains: checkpoints, metrics rows, TensorBoard, meta.json.
    Every rank calls it (checkpoints gather every rank's RNG state); rank 0 alone writes."""

    def __init__(self, run: RunDir, state: State, tensorboard: Any) -> None:
        self.run, self.state, self.tensorboard = run, state, tensorboard
        self.main = state.exp.sync.main

    def save_last(self, elapsed: float) -> None:
        s, t = self.state, self.state.exp.cfg.train
        rngs = s.exp.sync.gather(checkpoint.rng_state(s.generator))  # every rank's streams
        s.saved = s.iteration
        if not self.main:
            return
        checkpoint.save(self.run.checkpoint_path("last"), s.last(elapsed, rngs))
        if t.keep_checkpoints:
            self.run.keep_checkpoint(s.iteration, t.keep_checkpoints)
        self.run.update_meta(iteration=s.iteration, checkpoint_iteration=s.iteration,
                             train_seconds=round(elapsed, 3))

    def save_best(self) -> None:
        if self.main:
            checkpoint.save(self.run.checkpoint_path("best"),
                            self.state.best_checkpoint(self.state.exp.cfg.train.select))

    def append(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        self.run.append_metrics(row)
        if self.tensorboard is not None:
            self.tensorboard.log(row)

    def finish(self, outcome: Outcome, wall: float, failure: dict[str, Any] | None) -> None:
        """The final status in meta.json (and its fields in ``outcome.meta``)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if not self.main:
            return
        best = self.state.best
        fields: dict[str, Any] = {
            "status": outcome.status, "ended": _now(), "wall_seconds": round(wall, 3),
            "best_val": (None if math.isinf(best) else
                         {"statistic": self.state.exp.cfg.train.select, "value": best})}
        if failure is not None:
            fields["failure"] = {k: v for k, v in failure.items() if k != "text"}
        if outcome.status != "diverged":
            fields["iteration"] = outcome.iteration
        try:
            outcome.meta = self.run.update_meta(**fields)
        except (OSError, RunDirError):
            outcome.meta = {**self.run.read_meta(), **fields}


# ----------------------------------------------------------------------------- the loop
def train(exp: Experiment, run: RunDir, path: Vectorize, *, stop: StopSignals,
          resume: dict[str, Any] | None = None, console: Console | None = None,
          show_progress: bool = True, tensorboard: Any = None) -> Outcome:
    """Meta-train ``exp`` into ``run`` along batching ``path``, from scratch or from
    the ``last.pt`` state ``resume``. The run directory's config and meta.json
    exist already; this writes metrics, checkpoints and the final status.

    In a distributed run (``exp.sync``) every rank runs this loop on its share of
    each meta-batch; rank 0 alone writes, and what ends the loop is agreed on by all."""
    cfg, t, sync, algo = exp.cfg, exp.cfg.train, exp.sync, exp.algo
    state = State(exp, path, resume)
    writer = Writer(run, state, tensorboard)
    n_tasks = sync.split(cfg.algorithm.meta_batch)
    val_chunks = validation_tasks(exp)
    clock = Clock(state.iteration, state.elapsed_before)
    bar = Bar(console or Console(stderr=True), t.iterations, state.iteration,
              show_progress and sync.main)
    outcome = Outcome("failed", state.iteration, 1, "", {})
    failure: dict[str, Any] | None = None
    stop_agreed = False  # a distributed run's ranks stop together, at the same iteration
    try:
        if resume is None:
            writer.save_last(0.0)  # a run stopped before its first checkpoint resumes from here
        while True:
            if state.pending is None:
                # -- stop before the next iteration: a signal, or the schedule's end
                if stop_agreed or (stop.requested and not sync.active):
                    writer.save_last(clock.elapsed())
                    outcome = _ended("interrupted", state, stop.exit_code,
                                     f"interrupted at iteration {state.iteration}; last.pt "
                                     f"saved\nresume: {resume_command(run, sync)}")
                    break
                if state.iteration >= t.iterations:
                    outcome = _ended("completed", state, 0)
                    break
                # -- one meta-update
                state.iteration += 1
                it = state.iteration
                logged = it % t.log_every == 0 or it == t.iterations
                batch = exp.source.sample(n_tasks, state.generator, "train").to(exp.device,
                                                                                 exp.dtype)
                metrics = meta_update(algo, batch, path,
                                      TrainingProgress(it, t.iterations, logged),
                                      state.optimizer)
                if state.scheduler is not None:
                    state.scheduler.step()
                elapsed = clock.elapsed()
                timed_out = t.max_seconds is not None and elapsed >= t.max_seconds
                metrics, stop_agreed, timed_out = _agree(sync, metrics, stop, timed_out)
                loss = metrics.get("loss")
                if loss is not None and not math.isfinite(loss.item()):
                    outcome = _ended("diverged", state, 1,
                                     f"training diverged at iteration {it}: the training loss "
                                     f"is {loss.item()}; kept the last good checkpoint "
                                     f"(iteration {state.saved})")
                    break
                state.window.add(metrics)
            else:  # resumed inside this iteration's validation: its remaining work first
                it, elapsed, state.pending = state.iteration, state.pending, None
                timed_out = t.max_seconds is not None and elapsed >= t.max_seconds
            final = it == t.iterations or timed_out
            # -- log, validate (a stop signal ends it at once), checkpoint
            validating = bool(val_chunks) and (it % t.val_every == 0 or final)
            window = state.window.state_dict() if validating else None
            row = _log_row(state, clock) if it % t.log_every == 0 or final else {}
            if validating:
                try:
                    with stop.interruptible(enabled=not sync.active):
                        val = validate(exp, val_chunks, state.path, exp.sync)
                except Interrupted:
                    state.pending = elapsed
                    state.window.load_state_dict(window)  # its row is written on resuming
                    writer.save_last(clock.elapsed())
                    outcome = _ended("interrupted", state, stop.exit_code,
                                     f"interrupted at iteration {it}, during its validation; "
                                     f"last.pt saved (the validation is done first on "
                                     f"resuming)\nresume: {resume_command(run, sync)}")
                    break
                row.update(_keep_best(exp, val, state, writer))
            if row:
                writer.append({"iteration": it, "time": round(elapsed, 3), **row})
                bar.loss(row.get("loss"))
            if it % t.checkpoint_every == 0 or final:
                if not _params_finite(algo):
                    outcome = _ended("diverged", state, 1,
                                     f"training diverged at iteration {it}: the parameters "
                                     "are not finite; kept the last good checkpoint "
                                     f"(iteration {state.saved})")
                    break
                writer.save_last(clock.elapsed())
            bar.advance(it, clock, final)
            if timed_out:
                outcome = _ended("stopped at train.max_seconds", state, 0)
                break
    except FewshotError as e:
        outcome.message = str(e)
        raise
    except Exception as e:
        if not sync.active:
            raise
        # A rank raised, died or stopped answering: leave the last checkpoint as it is.
        failure = _failure(sync, e)
        outcome.message = (f"distributed training failed at iteration {state.iteration}: "
                           f"{failure['text']}; kept the last checkpoint (iteration "
                           f"{state.saved})")
        raise DistributedError(outcome.message) from None
    finally:
        bar.stop()
        outcome.iteration = state.iteration
        writer.finish(outcome, clock.wall(), failure)
    return outcome


def _ended(status: str, state: State, exit_code: int, message: str = "") -> Outcome:
    return Outcome(status, state.iteration, exit_code, message, {})


def _agree(sync: Sync, metrics: dict[str, torch.Tensor], stop: StopSignals, timed_out: bool
           ) -> tuple[dict[str, torch.Tensor], bool, bool]:
    """Across the ranks of a distributed run: the meta-batch's metrics, whether any rank
    was asked to stop, and whether rank 0's clock ran out (one all-reduce). One process
    keeps its own, and reads its stop flag at the top of the loop only."""
    if not sync.active:
        return metrics, False, timed_out
    keys = sorted(metrics)
    values, (stopped, timed_out) = sync.mean([metrics[k] for k in keys],
                                             [stop.requested, timed_out and sync.main])
    return dict(zip(keys, values, strict=True)), stopped, timed_out


def _log_row(state: State, clock: Clock) -> dict[str, Any]:
    """The window's means, the meta learning rate and the iterations per second since the
    last row."""
    row = state.window.flush()
    row["meta_lr"] = state.optimizer.param_groups[0]["lr"]
    row["its_per_s"] = clock.rate_since_log(state.iteration)
    return row


def _keep_best(exp: Experiment, val: dict[str, Any], state: State, writer: Writer
               ) -> dict[str, Any]:
    """Validation's fields of the log row; ``best.pt`` when its score (``train.select``)
    is the best so far."""
    score = val["val_loss_median" if exp.cfg.train.select == "median" else "val_loss"]
    if score is not None and math.isfinite(score) and score < state.best:
        state.best = score
        writer.save_best()
    return val


def _params_finite(algo: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in algo.parameters())


# ----------------------------------------------------------------------------- meta.json
def data_fingerprint(exp: Experiment) -> dict[str, Any] | None:
    """The task source's ``fingerprint()`` (None for a source without one)."""
    fingerprint = getattr(exp.source, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


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
        "provenance": provenance.record(exp.cfg.to_dict(), data_fingerprint(exp)),
        "status": "running",
        "pid": os.getpid(),
        "started": _now(),
        "iteration": 0,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
