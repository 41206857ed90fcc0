"""``fewshot plot``: figures drawn from run-directory files only.

Works on a finished run, one still training, or one stopped early: curves
come from ``metrics.jsonl``; task figures load ``best.pt`` (or ``last.pt``). A run
without metrics rows or without a readable checkpoint is an error, raised before
any figure is written.

Conventions of every figure: axis labels name the quantity and the loss
(``algorithm.loss``); legends sit outside the axes; a log scale where values span
decades; spikes do not flatten a curve (the axis is clipped and the points beyond it
marked with their value); the run's name is a small footer, never in a title.

Modules: ``figures`` (writing, footer, axis scales; imports no sibling), and on it
``curves`` (metrics.jsonl), ``episodes`` (the experiment rebuilt from a checkpoint),
``evaluation`` (eval.json's adaptation curves) and ``gates`` (eval.json's meta-learner
gates). This file imports them all and none of them imports it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

# Selected before any module of the package imports pyplot: importing one of them runs
# this file first.
matplotlib.use("Agg")

from ..engine.evaluator import check_baseline, load_experiment  # noqa: E402
from ..errors import ConfigError, RunDirError  # noqa: E402
from ..rundir import RunDir  # noqa: E402
from .curves import (  # noqa: E402
    algorithm_metrics,
    plot_accuracy,
    plot_inner,
    plot_loss,
    plot_metrics,
)
from .episodes import MAX_QUERY_ROWS, PLOT_SEED, fit_tasks, plot_episode, plot_fit  # noqa: E402
from .evaluation import plot_adaptation  # noqa: E402
from .figures import FORMATS, LOSS_NAMES, loss_name, spike_free_top  # noqa: E402
from .gates import plot_gates  # noqa: E402
from .sweep import plot_sweep as plot_sweep  # noqa: E402

__all__ = ["FORMATS", "LOSS_NAMES", "MAX_QUERY_ROWS", "PLOT_SEED", "FiguresMissing",
           "algorithm_metrics", "fit_tasks", "loss_name", "plot_accuracy", "plot_adaptation",
           "plot_episode", "plot_fit", "plot_gates", "plot_inner", "plot_loss", "plot_metrics",
           "plot_run", "spike_free_top"]


class FiguresMissing(RunDirError):
    """Some figures the run's files call for could not be drawn (an unreadable eval.json);
    ``written`` are the ones that were."""

    def __init__(self, message: str, written: list[Path]) -> None:
        super().__init__(message)
        self.written = written


def plot_run(run: RunDir, checkpoint: str = "best", *, fmt: str = "png",
             shots: int | None = None, steps: int | None = None, tasks: int = 4,
             seed: int = PLOT_SEED, baseline: RunDir | None = None) -> list[Path]:
    """Write every figure that the run's files allow, as ``plots/<name>.<fmt>``; returns
    their paths. ``shots``, ``steps``, ``tasks`` (panels) and ``seed`` choose the test
    tasks of fit.png (and episode.png); ``baseline``'s prediction is drawn in fit.png.

    Everything is read and checked (metrics, checkpoints, the baseline) before the first
    file is written, so a refusal leaves the plots folder as it was. An eval.json that
    exists but cannot be read is the exception: the other figures are written, then
    :class:`FiguresMissing` names the file, the cause and the figures left undrawn.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    rows = run.read_metrics()
    if not rows:
        raise RunDirError(f"{run.metrics_path}: nothing to plot yet (no metrics rows; "
                          "the first is written after train.log_every iterations)")
    cfg = run.read_config()
    base = None
    if baseline is not None:
        base_cfg = baseline.read_config()
        check_baseline(cfg, baseline, base_cfg)
    # The trainer writes last.pt before the first metrics row, so a run with metrics and
    # no checkpoint has lost its checkpoints: an error, like any other unusable checkpoint.
    exp, _ = load_experiment(run, checkpoint, device="cpu")
    if baseline is not None:
        base = (baseline, load_experiment(baseline, checkpoint, device="cpu",
                                          inner_lr=None if exp.algo.learns_step_sizes(exp.algo.cfg)
                                          else cfg.algorithm.inner_lr)[0])
    try:
        results, unreadable = run.load_results(), None
    except RunDirError as e:
        results, unreadable = [], e
    written: list[Path | None] = [plot_loss(run, rows, cfg, fmt),
                                  plot_metrics(run, rows, cfg, fmt),
                                  plot_inner(run, rows, cfg, fmt)]
    if cfg.problem == "classification":
        written.append(plot_accuracy(run, rows, cfg, fmt))
    written.append(plot_fit(run, exp, checkpoint, fmt, shots, steps, tasks, seed, base)
                   if cfg.problem == "regression"
                   else plot_episode(run, exp, fmt, shots, steps, seed))
    if results:
        written.append(plot_adaptation(run, results, cfg, fmt))
        written.append(plot_gates(run, results, cfg, fmt))  # None without gate statistics
    drawn = [p for p in written if p is not None]
    if unreadable is not None:
        missing = [f"adaptation.{fmt}"] + ([f"gates.{fmt}"] if cfg.algorithm.kind == "meta_lstm"
                                           else [])
        raise FiguresMissing(f"{unreadable}; {' and '.join(missing)} not drawn (the other "
                             "figures were written)", drawn)
    return drawn
