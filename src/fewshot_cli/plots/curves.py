"""Training curves, drawn from ``metrics.jsonl`` alone: ``loss.png``, ``metrics.png``,
``inner.png`` and, for classification, ``accuracy.png``.

``metrics.png`` draws every metric the algorithm reported, whatever its name: a scalar
as one curve, a per-step list as one curve per step. A row value that is not a finite
number is left out of every curve.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from ..config import Config
from ..rundir import TRAINER_KEYS, RunDir
from .figures import footer, log_scale_helps, loss_name, mark_beyond, save, spike_free_top, ylimits


def _finite(value: Any) -> float | None:
    """``value`` as a finite float; None for anything else (a row edited by hand may hold
    strings, booleans, or integers too large for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], _finite(r.get(key))) for r in rows]
    pts = [p for p in pts if p[1] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def algorithm_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """Names of the metrics the algorithm reported (every row key the trainer and
    validation did not write), in order of first appearance."""
    names: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k not in TRAINER_KEYS and not k.startswith("val_") and (
                    isinstance(v, (int, float, list)) and not isinstance(v, bool)):
                names[k] = None
    return list(names)



def plot_loss(run: RunDir, rows: list[dict[str, Any]], cfg: Config, fmt: str = "png") -> Path:
    """Train outer loss and validation loss against iteration, spikes clipped and marked,
    validations with diverged tasks marked."""
    loss = loss_name(cfg.algorithm.loss)
    s_val = cfg.algorithm.eval_inner_steps
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    x, y = _series(rows, "loss")
    vx, vy = _series(rows, "val_loss")
    ax.plot(x, y, lw=1, color="C0",
            label=f"train: {cfg.algorithm.kind}'s outer loss (logging-window means)")
    ax.plot(vx, vy, "o-", ms=3, color="C1",
            label=f"validation: {cfg.train.val_tasks} tasks after {s_val} inner steps")
    values = y + vy
    top = spike_free_top([y, vy])
    log = log_scale_helps([v for v in values if top is None or v <= top])
    if log:
        ax.set_yscale("log")
    limits = None if top is None else ylimits(values, top, log)
    if limits is not None:
        ax.set_ylim(*limits)
        n_out = (mark_beyond(ax, x, y, limits[1], "C0") +
                 mark_beyond(ax, vx, vy, limits[1], "C1"))
        ax.plot([], [], "^", color="0.3", ms=7,
                label=f"{n_out} point(s) above the axis (value shown)")
    bad = [(r["iteration"], _finite(r.get("val_loss")), int(_finite(r.get("val_diverged")) or 0))
           for r in rows if (_finite(r.get("val_diverged")) or 0) > 0]
    if bad:
        edge = ax.get_xaxis_transform()
        for it, v, k in bad:
            shown = v is not None and (limits is None or v <= limits[1])
            if shown:
                ax.plot([it], [v], "X", color="C3", ms=9, zorder=6)
                ax.annotate(f"{k} diverged", (it, v), xytext=(5, 5), textcoords="offset points",
                            fontsize=7, color="C3")
            else:  # every task diverged (no mean) or the mean is off the axis
                ax.plot([it], [0.97], "X", color="C3", ms=9, transform=edge, zorder=6)
                ax.annotate(f"{k} diverged", (it, 0.97), xycoords=edge, xytext=(5, -6),
                            textcoords="offset points", fontsize=7, color="C3", va="top")
        ax.plot([], [], "X", color="C3", ms=9,
                label="validation with diverged tasks (left out of the mean)")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"query loss ({loss})")
    ax.set_title(f"Meta-training: query loss ({loss})" + (", log scale" if log else ""))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    footer(fig, run)
    return save(fig, run.plots_dir / f"loss.{fmt}")


def _numbers(value: Any) -> list[float] | None:
    """A metric's values (NaN for a non-finite one), or None when it is not numbers."""
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [math.nan if (f := _finite(v)) is None else f for v in values]
    return None


def _metric_label(name: str, loss: str) -> tuple[str, float]:
    """Axis label and scale of a metric the algorithm reported, from its name alone."""
    if "accuracy" in name:
        return f"{name} (%)", 100.0
    if "loss" in name:
        return f"{name} ({loss})", 1.0
    return name, 1.0


def plot_metrics(run: RunDir, rows: list[dict[str, Any]], cfg: Config, fmt: str = "png"
                 ) -> Path | None:
    """One panel per algorithm metric; a per-step list gives one curve per step."""
    names = algorithm_metrics(rows)
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(7.5, 2.8 * len(names) + 0.6),
                             squeeze=False, sharex=True, layout="constrained")
    for ax, name in zip(axes[:, 0], names):
        label, scale = _metric_label(name, loss_name(cfg.algorithm.loss))
        series: dict[int, list[tuple[int, float]]] = {}
        for r in rows:
            values = _numbers(r.get(name)) if name in r else None
            for k, v in enumerate(values or []):
                if math.isfinite(v):
                    series.setdefault(k, []).append((r["iteration"], scale * v))
        vector = any(isinstance(r.get(name), list) for r in rows)
        for k, pts in sorted(series.items()):
            curve = f"before inner step {k + 1}" if name == "inner_loss" else f"step {k}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1,
                    label=curve if vector else name)
        values = [p[1] for pts in series.values() for p in pts]
        if log_scale_helps(values):
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if vector and len(series) > 1:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    axes[-1, 0].set_xlabel("iteration")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Metrics reported by the algorithm (means over each logging window)")
    footer(fig, run)
    return save(fig, run.plots_dir / f"metrics.{fmt}")


def plot_inner(run: RunDir, rows: list[dict[str, Any]], cfg: Config, fmt: str = "png",
               curves: int = 6) -> Path | None:
    """The support loss before and after every inner step (``inner_loss`` before each
    step, ``inner_loss_after`` after the last), against the step, at ``curves``
    points of training; drawn for algorithms that report both."""
    key = "inner_loss" if any("inner_loss" in r for r in rows) else "learned_loss"
    usable = [r for r in rows if isinstance(r.get(key), list) and r[key]
              and _finite(r.get(f"{key}_after")) is not None
              and all(_finite(v) is not None for v in r[key])]
    if not usable:
        return None
    what = ("support loss" if key == "inner_loss" else "learned adaptation loss")
    picks = sorted({round(i * (len(usable) - 1) / max(curves - 1, 1))
                    for i in range(min(curves, len(usable)))})
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    cmap = plt.get_cmap("viridis")
    values = []
    for j, i in enumerate(picks):
        r = usable[i]
        ys = [*r[key], r[f"{key}_after"]]
        values += ys
        ax.plot(range(len(ys)), ys, "o-", ms=3, color=cmap(j / max(len(picks) - 1, 1)),
                label=f"iteration {r['iteration']}")
    if log_scale_helps(values):
        ax.set_yscale("log")
    ax.set_xlabel("inner steps taken")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"support loss ({loss_name(cfg.algorithm.loss)})" if key == "inner_loss"
                  else "learned adaptation loss (loss network)")
    ax.set_title(f"{what.capitalize()} before and after each inner step")
    ax.text(0.0, -0.16, "before each step: training-window means; after the last: the "
            "logged iteration's meta-batch", transform=ax.transAxes, fontsize=7, color="0.35")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    footer(fig, run)
    return save(fig, run.plots_dir / f"inner.{fmt}")


def plot_accuracy(run: RunDir, rows: list[dict[str, Any]], cfg: Config, fmt: str = "png"
                  ) -> Path | None:
    x, y = _series(rows, "accuracy")
    vx, vy = _series(rows, "val_accuracy")
    if not x and not vx:
        return None
    s_val = cfg.algorithm.eval_inner_steps
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    ax.plot(x, [100 * v for v in y], lw=1,
            label=f"train: {cfg.algorithm.kind}'s accuracy (logging-window means)")
    ax.plot(vx, [100 * v for v in vy], "o-", ms=3,
            label=f"validation: {cfg.train.val_tasks} tasks after {s_val} inner steps")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Meta-training: query accuracy ({cfg.task.ways}-way)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    footer(fig, run)
    return save(fig, run.plots_dir / f"accuracy.{fmt}")

