"""``fewshot plot``: figures drawn from run-directory files only.

Works on a finished run, one still training, or one stopped early: curves
come from ``metrics.jsonl``; task figures load ``best.pt`` (or ``last.pt``). A run
without metrics rows or without a readable checkpoint is an error, raised before
any figure is written.
``metrics.png`` draws every metric the algorithm reported, whatever its name:
a scalar as one curve, a per-step list as one curve per step. ``adaptation.png``
overlays every result in eval.json (either layout): the run's protocols solid, its
baselines' dashed.

Conventions of every figure: axis labels name the quantity and the loss
(``algorithm.loss``); legends sit outside the axes; a log scale where values span
decades; spikes do not flatten a curve (the axis is clipped and the points beyond it
marked with their value); the run's name is a small footer, never in a title.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .config import Config  # noqa: E402
from .engine.evaluator import check_baseline, load_experiment  # noqa: E402
from .engine.setup import Experiment  # noqa: E402
from .errors import ConfigError, RunDirError  # noqa: E402
from .files import atomic_write  # noqa: E402
from .rundir import TRAINER_KEYS, RunDir  # noqa: E402
from .tasks.base import TaskBatch  # noqa: E402

PLOT_SEED = 777
#: File formats of ``fewshot plot --format``.
FORMATS = ("png", "pdf", "svg")
#: How axis labels name ``algorithm.loss``.
LOSS_NAMES = {"mse": "MSE", "l1": "L1", "cross_entropy": "cross-entropy"}


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


def _log_scale_helps(values: list[float], ratio: float = 20) -> bool:
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > ratio


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def loss_name(loss: str) -> str:
    """How an axis names ``algorithm.loss``."""
    return LOSS_NAMES.get(loss, loss)


def _footer(fig: plt.Figure, run: RunDir) -> None:
    """The run's name, small, under the bottom-right corner (never in a title)."""
    fig.text(1.0, 0.0, run.path.name, ha="right", va="top", fontsize=7, color="0.35")


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig``, cropped to what it draws (the footer below the figure included).

    The constrained layout runs once first and is then kept: cropping replaces the
    figure's box, and a legend placed "outside lower" would follow the new bottom edge
    onto the footer, so each figure legend is pinned where the layout put it."""
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for legend in fig.legends:
        legend.set_bbox_to_anchor((0, 0, 1, 1), transform=fig.transFigure)
    buffer = io.BytesIO()
    fmt = path.suffix.lstrip(".")
    fig.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight")
    plt.close(fig)
    try:
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
    except OSError as e:
        raise RunDirError(f"{path}: cannot write the figure ({e.strerror or e})") from None
    return path


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


def spike_free_top(series: list[list[float]], factor: float = 4.0) -> float | None:
    """The top of a robust y-range for curves ``series`` (each in x order): the largest
    value that is not a spike, a spike being a point (after the first) more than
    ``factor`` times the median of its neighbourhood (7 points). None when there is no
    spike above that value (the axis then scales itself)."""
    kept, spikes = [], []
    for values in series:
        for i, v in enumerate(values):
            med = float(np.median(values[max(0, i - 3): i + 4]))
            (spikes if i > 0 and med > 0 and v > factor * med else kept).append(v)
    if not kept or not spikes or max(spikes) <= max(kept):
        return None
    return max(kept)


def _limits(values: list[float], top: float, log: bool) -> tuple[float, float]:
    """y-limits from the smallest of ``values`` up to ``top``, with a margin."""
    lo = min(v for v in values if v <= top)
    if log:
        return lo / 1.3, top * 1.3
    margin = 0.05 * (top - lo) or 0.05 * abs(top) or 1.0
    return lo - margin, top + margin


def _mark_beyond(ax: plt.Axes, xs: list[float], ys: list[float], top: float, color: str,
                 annotate: int = 6) -> int:
    """Upward triangles at the top edge for the points above ``top``, the largest
    ``annotate`` of them labelled with their value; returns how many there were."""
    out = [(x, y) for x, y in zip(xs, ys) if y > top]
    if not out:
        return 0
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction
    ax.plot([x for x, _ in out], [1.0] * len(out), "^", color=color, ms=7, transform=edge,
            clip_on=False, zorder=5)
    for x, y in sorted(out, key=lambda p: -p[1])[:annotate]:
        ax.annotate(f"{y:.3g}", (x, 1.0), xycoords=edge, xytext=(5, -3),
                    textcoords="offset points", fontsize=7, ha="left", va="top", color=color)
    return len(out)


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
    log = _log_scale_helps([v for v in values if top is None or v <= top])
    if log:
        ax.set_yscale("log")
    limits = None if top is None else _limits(values, top, log)
    if limits is not None:
        ax.set_ylim(*limits)
        n_out = (_mark_beyond(ax, x, y, limits[1], "C0") +
                 _mark_beyond(ax, vx, vy, limits[1], "C1"))
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
    _footer(fig, run)
    return _save(fig, run.plots_dir / f"loss.{fmt}")


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
        if _log_scale_helps(values):
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if vector and len(series) > 1:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    axes[-1, 0].set_xlabel("iteration")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Metrics reported by the algorithm (means over each logging window)")
    _footer(fig, run)
    return _save(fig, run.plots_dir / f"metrics.{fmt}")


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
    if _log_scale_helps(values):
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
    _footer(fig, run)
    return _save(fig, run.plots_dir / f"inner.{fmt}")


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
    _footer(fig, run)
    return _save(fig, run.plots_dir / f"accuracy.{fmt}")


#: Settings that tell two evaluations of a run apart (besides shots); shown in a curve's
#: label where they differ between the curves of a figure, else once under the title.
_VARYING = (("queries", "query point"), ("steps", "step"), ("inner_lr", "lr {:g}"),
            ("tasks", "task"), ("seed", "seed {}"), ("query_batch", "{} batch"))


def _setting(key: str, form: str, settings: dict[str, Any], classification: bool) -> str:
    if key == "queries" and classification:
        q = settings.get(key)
        return f"{q} quer{'y' if q == 1 else 'ies'} per class"
    if "{" not in form:  # a noun to count
        return _count(settings.get(key), form)
    return form.format(settings.get(key))


def _plot_learned_loss(ax: plt.Axes, results: list[dict[str, Any]]) -> None:
    """DAML's learned inner loss before each inner step at test time (eval.json's
    ``inner.learned_loss``), mean and 95% CI over the test tasks, per protocol."""
    for i, r in enumerate(results):
        rows = [p for p in r["inner"]["learned_loss"] if p.get("mean") is not None]
        steps = list(range(len(rows)))
        mean = [p["mean"] for p in rows]
        ci = [p["ci95"] for p in rows]
        colour = f"C{i % 10}"
        st = r["settings"]
        ax.plot(steps, mean, "-", marker="s", ms=3, color=colour,
                label=f"{r.get('name', '?')}: K={st['shots']}, {st['tasks']} tasks, "
                      f"{st['steps']} steps")
        ax.fill_between(steps, [a - b for a, b in zip(mean, ci)],
                        [a + b for a, b in zip(mean, ci)], color=colour, alpha=0.15, lw=0)
    ax.set_xlabel("inner step (loss before it)")
    ax.set_ylabel("learned adaptation loss (loss network)")
    ax.set_title("What the inner loop minimises", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)


def plot_adaptation(run: RunDir, results: list[dict[str, Any]], cfg: Config,
                    fmt: str = "png") -> Path:
    """Every protocol of the run (solid) and of its baselines (dashed) in eval.json:
    query loss (and accuracy) against inner steps at test time, with 95% CI bands."""
    metrics = ["loss"] + (["accuracy"] if "accuracy" in results[0]["per_step"][0] else [])
    learned = [r for r in results if (r.get("inner") or {}).get("learned_loss")]
    panels = len(metrics) + bool(learned)
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels + 1.2, 5.2),
                             squeeze=False, layout="constrained")
    if learned:
        _plot_learned_loss(axes[0, -1], learned)
    settings = [r["settings"] for r in results]
    varying = [(k, f) for k, f in _VARYING if len({repr(s.get(k)) for s in settings}) > 1]
    checkpoints = {(r.get("checkpoint"), r.get("checkpoint_iteration")) for r in results}
    # one colour per protocol (K and whatever else varies), shared by the run and its baselines
    def protocol(s: dict[str, Any]) -> tuple[str, ...]:
        return (f"{s['shots']:>9}", *(repr(s.get(k)) for k, _ in varying))

    colours = {k: f"C{i % 10}" for i, k in enumerate(sorted({protocol(s) for s in settings}))}
    names = list(dict.fromkeys(r.get("name") or "?" for r in results if r.get("baseline")))
    dashes = ["--", ":", "-."]
    order = sorted(range(len(results)), key=lambda i: (
        bool(results[i].get("baseline")), results[i].get("name") or "", settings[i]["shots"]))
    loss = loss_name(settings[0].get("loss") or cfg.algorithm.loss)
    diverged_any = clipped_any = False
    for ax, m in zip(axes[0], metrics):
        scale = 100 if m == "accuracy" else 1
        curves = []
        for i in order:
            r, s = results[i], settings[i]
            rows = [p for p in r["per_step"] if isinstance(p.get(m), dict)
                    and p[m].get("mean") is not None]
            if not rows:
                continue
            baseline = bool(r.get("baseline"))
            who = (f"{r.get('algorithm', '?')} ({r.get('name', '?')})" if baseline
                   else r.get("algorithm") or cfg.algorithm.kind)
            label = ", ".join([who, f"K={s['shots']}"] + [
                _setting(k, f, s, len(metrics) > 1) for k, f in varying
                if k != "inner_lr" or s.get("inner_lr") is not None])  # None: learned
            if len(checkpoints) > 1:
                label += f", {r.get('checkpoint')}.pt"
            style = dashes[names.index(r.get("name") or "?") % 3] if baseline else "-"
            curves.append((label, style, colours[protocol(s)], [p["step"] for p in rows],
                           [scale * p[m]["mean"] for p in rows],
                           [scale * p[m]["ci95"] for p in rows],
                           [(p["step"], scale * p[m]["mean"]) for p in rows
                            if p["loss"].get("diverged")]))
        means = [v for c in curves for v in c[4]]
        limits, log = None, False
        if m == "loss" and means:
            # A diverging protocol must not flatten the others: the axis ends at 3 times
            # the largest loss before adaptation; means above it are marked.
            top = 3 * max(c[4][0] for c in curves if c[3][0] == 0) if any(
                c[3][0] == 0 for c in curves) else max(means)
            inliers = [v for v in means if v <= top]
            log = _log_scale_helps(inliers, ratio=10)
            if log:
                ax.set_yscale("log")
            if max(means) > top:
                limits = _limits(means, top, log)
        for label, style, colour, steps, mean, ci, bad in curves:
            ax.plot(steps, mean, style, marker="o", ms=3, color=colour, label=label)
            ax.fill_between(steps, [a - b for a, b in zip(mean, ci)],
                            [a + b for a, b in zip(mean, ci)], color=colour, alpha=0.15, lw=0)
            if bad:
                diverged_any = True
                ax.plot([b[0] for b in bad], [b[1] for b in bad], "x", color=colour, ms=8,
                        mew=2)
        if limits is not None:
            ax.set_ylim(*limits)
            for _, _, colour, steps, mean, _, _ in curves:
                clipped_any |= _mark_beyond(ax, steps, mean, limits[1], colour, annotate=3) > 0
        elif log:  # a band reaching below zero ends at the axis
            ax.set_ylim(bottom=min(v for v in means if v > 0) / 1.5)
        ax.set_xlabel("inner steps at test time")
        ax.set_ylabel("query accuracy (%)" if m == "accuracy" else f"query loss ({loss})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(Patch(color="0.5", alpha=0.3))
    labels.append("95% CI of the mean")
    if names:
        handles.append(Line2D([], [], color="0.3", ls="--"))
        labels.append("dashed: baseline")
    if diverged_any:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="", ms=8, mew=2))
        labels.append("some tasks diverged (left out)")
    if clipped_any:
        handles.append(Line2D([], [], color="0.3", marker="^", ls="", ms=7))
        labels.append("mean above the axis (value shown)")
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
               ncol=min(3, len(handles)))
    common = [_setting(k, f, settings[0], len(metrics) > 1) for k, f in _VARYING
              if (k, f) not in varying and k != "query_batch"
              and not (k == "inner_lr" and settings[0].get("inner_lr") is None)]
    if len(checkpoints) == 1:
        (name, it), = checkpoints
        common.append(f"{name}.pt" + (f" (iteration {it})" if it is not None else ""))
    fig.suptitle("Adaptation to new test tasks\n" + ", ".join(common), fontsize=11)
    _footer(fig, run)
    return _save(fig, run.plots_dir / f"adaptation.{fmt}")


def _take(batches: list[TaskBatch], picks: list[tuple[int, int]]) -> TaskBatch:
    """The tasks ``(batch, index)`` of ``batches`` as one batch."""
    def stack(get: Any) -> torch.Tensor:
        return torch.stack([get(batches[b])[i] for b, i in picks])

    info: dict[str, object] = {}
    for key, value in batches[0].info.items():
        if isinstance(value, torch.Tensor) and len(value) == len(batches[0]):
            info[key] = stack(lambda t, key=key: t.info[key])
    unlabelled = None if batches[0].unlabelled_x is None else stack(lambda t: t.unlabelled_x)
    return TaskBatch(stack(lambda t: t.support_x), stack(lambda t: t.support_y),
                     stack(lambda t: t.query_x), stack(lambda t: t.query_y), info, unlabelled)


def fit_tasks(source: Any, n: int, seed: int, shots: int | None = None,
              queries: int | None = None) -> TaskBatch:
    """``n`` test sinusoids for fit.png. With ``phase_choices`` every phase is among them
    (``n`` grows to the number of phases if smaller): tasks are drawn until each phase
    has appeared, the first of each phase kept, the rest filled in drawing order, sorted
    by phase. A phase that never appears in 64 draws is constructed from a drawn task."""
    gen = torch.Generator().manual_seed(seed)
    choices = list(dict.fromkeys(getattr(source.cfg, "phase_choices", None) or []))
    if not choices:
        return source.sample(n, gen, "test", shots=shots, queries=queries)
    n = max(n, len(choices))
    batches: list[TaskBatch] = []
    first: dict[int, tuple[int, int]] = {}
    rest: list[tuple[int, int]] = []
    for b in range(64):
        batch = source.sample(n, gen, "test", shots=shots, queries=queries)
        batches.append(batch)
        for i, phase in enumerate(batch.info["phase"].tolist()):
            c = min(range(len(choices)), key=lambda j: abs(choices[j] - phase))
            if c in first:
                rest.append((b, i))
            else:
                first[c] = (b, i)
        if len(first) == len(choices) and len(first) + len(rest) >= n:
            break
    picks = [first[c] for c in sorted(first)] + rest[: n - len(first)]
    picks = picks[:n]
    out = _take(batches, picks)
    missing = [c for c in range(len(choices)) if c not in first]
    if getattr(source, "demonstration", False):
        missing = []  # a demonstration depends on the phase: draw, never construct
    for k, c in enumerate(missing):  # construct: the same points, the missing phase
        j = n - 1 - k
        phase = torch.tensor([choices[c]], dtype=out.info["phase"].dtype)
        amp = out.info["amplitude"][j:j + 1]
        out.info["phase"][j] = phase[0]
        out.support_y[j] = source.curve(out.support_x[j:j + 1], amp, phase)[0]
        out.query_y[j] = source.curve(out.query_x[j:j + 1], amp, phase)[0]
    order = sorted(range(n), key=lambda i: float(out.info["phase"][i]))
    return _take([out], [(0, i) for i in order])


def _phase_text(phase: float) -> str:
    """A phase in radians, as a multiple of π where it is one (0, π/2, π, ...)."""
    quarters = phase / (math.pi / 4)
    if abs(quarters - round(quarters)) < 1e-4:
        q = round(quarters)
        if q == 0:
            return "0"
        num, den = (q // math.gcd(q, 4), 4 // math.gcd(q, 4))
        text = ("" if abs(num) == 1 else str(abs(num))) + "π" + ("" if den == 1 else f"/{den}")
        return ("−" if num < 0 else "") + text
    return f"{phase:.2f}"


def _step_size(algo: Any) -> str:
    return "learned step sizes" if algo.learned_step_sizes else f"inner lr {algo.inner_lr:g}"


def _draw_support(ax: plt.Axes, batch: TaskBatch, i: int, demonstration: bool) -> None:
    """Task ``i``'s support points; a demonstration in its own domain (its observations),
    or, when it shows inputs alone, its x positions marked on the axis."""
    x, y = batch.support_x[i, :, 0], batch.support_y[i]
    n = len(x)
    if not demonstration:
        ax.plot(x, y[:, 0], "^", color="C3", ms=7, mec="k", mew=0.5,
                label=f"{n} support points", zorder=5)
    elif y.shape[-1] == 0:
        ax.plot(x, [0.03] * n, "|", color="C3", ms=16, mew=2.5, zorder=5,
                transform=ax.get_xaxis_transform(),
                label=f"demonstration: {n} inputs, no observation")
    else:
        ax.plot(x, y[:, 0], "D", color="C4", ms=5, mec="k", mew=0.5, zorder=5,
                label=f"demonstration: {n} points in its own domain")


def plot_fit(run: RunDir, exp: Experiment, checkpoint: str, fmt: str = "png",
             shots: int | None = None, steps: int | None = None, tasks: int = 4,
             seed: int = PLOT_SEED, baseline: tuple[RunDir, Experiment] | None = None) -> Path:
    """Test sinusoids, one panel each: truth, support points, the prediction before
    adaptation, after 1 and after ``steps`` inner steps, and a baseline's after ``steps``."""
    source, algo, cfg = exp.source, exp.algo, exp.cfg
    batch = fit_tasks(source, tasks, seed, shots).to("cpu", exp.dtype)
    n = len(batch)
    lo, hi = cfg.task.x_range
    grid = torch.linspace(lo, hi, 200, dtype=exp.dtype).view(-1, 1)
    n_steps = steps if steps is not None else cfg.algorithm.eval_inner_steps
    cols = n if n <= 3 else 2 if n == 4 else 3
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols + 2.6, 3.1 * rows + 0.7),
                             squeeze=False, sharex=True, layout="constrained")
    kind = cfg.algorithm.kind
    demonstration = bool(getattr(source, "demonstration", False))
    shown = [s for s in dict.fromkeys((1, n_steps)) if 0 < s <= n_steps]
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        amp, phase = batch.info["amplitude"][i:i + 1], batch.info["phase"][i:i + 1]
        truth = source.curve(grid.unsqueeze(0), amp, phase)[0]
        ax.plot(grid, truth, "k-", lw=2.2, label="ground truth")
        base = {k: v.detach() for k, v in algo.params().items()}
        ax.plot(grid, algo.predict(base, grid), ":", color="0.45", lw=1.5,
                label=f"{kind}: before adaptation")
        for s in shown:
            fast = algo.adapt_one(batch, i, s)
            ax.plot(grid, algo.predict(fast, grid), "-" if s == n_steps else "--",
                    color="C0" if s == n_steps else "C1", lw=1.6,
                    label=f"{kind}: after {s} step{'s' if s != 1 else ''}")
        if baseline is not None:
            b_run, b_exp = baseline
            b_batch = batch.to("cpu", b_exp.dtype)
            fast = b_exp.algo.adapt_one(b_batch, i, n_steps)
            ax.plot(grid, b_exp.algo.predict(fast, grid.to(b_exp.dtype)), "-.", color="C2",
                    lw=1.6, label=f"{b_exp.cfg.algorithm.kind} ({b_run.path.name}): after "
                                  f"{n_steps} step{'s' if n_steps != 1 else ''}")
        _draw_support(ax, batch, i, demonstration)
        ax.set_title(f"A = {amp.item():.2f}, phase = {_phase_text(phase.item())}", fontsize=10)
        ax.grid(alpha=0.3)
        if i + cols >= n:  # no panel below: this one carries the x axis
            ax.set_xlabel("x")
            ax.tick_params(labelbottom=True)
        if i % cols == 0:
            ax.set_ylabel("y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
               ncol=min(3, len(handles)))
    what = "demonstration" if demonstration else "support"
    fig.suptitle(f"Adaptation to new sinusoids: K = {batch.support_x.shape[1]} {what} "
                 f"points, {_step_size(algo)}, {checkpoint}.pt")
    _footer(fig, run)
    return _save(fig, run.plots_dir / f"fit.{fmt}")


#: Query rows per class drawn in episode.png (mini-ImageNet's 15 queries would fill a page).
MAX_QUERY_ROWS = 5


def plot_episode(run: RunDir, exp: Experiment, fmt: str = "png", shots: int | None = None,
                 steps: int | None = None, seed: int = PLOT_SEED) -> Path:
    """One test task: its support images and its queries marked right (green) or wrong (red)."""
    algo, cfg = exp.algo, exp.cfg
    batch = exp.source.sample(1, torch.Generator().manual_seed(seed), "test", shots=shots).to(
        "cpu", exp.dtype)
    if steps is None:
        steps = cfg.eval.steps or cfg.algorithm.eval_inner_steps
    fast = algo.adapt_one(batch, 0, steps)
    pred = algo.predict(fast, batch.query_x[0]).argmax(-1)
    ways = cfg.task.ways
    sx, sy = batch.support_x[0], batch.support_y[0]
    qx, qy = batch.query_x[0], batch.query_y[0]
    rows_s = math.ceil(len(sx) / ways)
    per_class = math.ceil(len(qx) / ways)
    rows_q = min(per_class, MAX_QUERY_ROWS)  # accuracy counts them all; the first few shown
    # At most 10 classes side by side: more (20-way) wrap into blocks of 10 columns, each
    # block its classes' support rows above their query rows.
    cols = min(ways, 10)
    blocks = math.ceil(ways / cols)
    block = rows_s + rows_q
    rows = blocks * block
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols + 0.4, 1.5 * rows + 0.8),
                             squeeze=False, layout="constrained")

    def cell(c: int, row: int) -> plt.Axes:
        return axes[(c // cols) * block + row][c % cols]

    for ax in axes.flat:
        ax.axis("off")

    def show(ax: plt.Axes, img: torch.Tensor) -> None:
        img = img.float().clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray_r" if cfg.task.kind == "omniglot" else "gray")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())

    names = exp.source.class_names("test") if hasattr(exp.source, "class_names") else None
    for i in range(len(sx)):
        label = int(sy[i])
        ax = cell(label, i // ways)
        show(ax, sx[i])
        title = f"class {label}"
        if names is not None and i < ways:
            name = names[int(batch.info["classes"][0, label])]
            title += "\n" + (name if len(name) <= 16 else "…" + name[-15:])
        ax.set_title(title, fontsize=7)
    counters = [0] * ways
    for i in range(len(qx)):
        c = int(qy[i])
        if counters[c] >= rows_q:
            continue
        ax = cell(c, rows_s + counters[c])
        counters[c] += 1
        show(ax, qx[i])
        ok = bool(pred[i] == qy[i])
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("green" if ok else "red")
            spine.set_linewidth(3)
        ax.set_title(f"pred {int(pred[i])}", fontsize=8, color="green" if ok else "red")
    acc = (pred == qy).float().mean().item()
    shown = "" if rows_q == per_class else f" (the first {rows_q} per class shown)"
    fig.suptitle(f"{ways}-way {len(sx) // ways}-shot test episode: support images (unframed) "
                 f"and queries (framed) after {_count(steps, 'inner step')}\n"
                 f"{100 * acc:.0f}% of all {len(qx)} queries right{shown}", fontsize=9)
    _footer(fig, run)
    return _save(fig, run.plots_dir / f"episode.{fmt}")


def plot_run(run: RunDir, checkpoint: str = "best", *, fmt: str = "png",
             shots: int | None = None, steps: int | None = None, tasks: int = 4,
             seed: int = PLOT_SEED, baseline: RunDir | None = None) -> list[Path]:
    """Write every figure that the run's files allow, as ``plots/<name>.<fmt>``; returns
    their paths. ``shots``, ``steps``, ``tasks`` (panels) and ``seed`` choose the test
    tasks of fit.png (and episode.png); ``baseline``'s prediction is drawn in fit.png.

    Everything is read and checked (metrics, checkpoints, the baseline) before the first
    file is written, so a refusal leaves the plots folder as it was.
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
                                          inner_lr=None if exp.algo.learned_step_sizes
                                          else cfg.algorithm.inner_lr)[0])
    results = run.read_results()
    written: list[Path | None] = [plot_loss(run, rows, cfg, fmt),
                                  plot_metrics(run, rows, cfg, fmt),
                                  plot_inner(run, rows, cfg, fmt)]
    if cfg.problem == "classification":
        written.append(plot_accuracy(run, rows, cfg, fmt))
    written.append(plot_fit(run, exp, checkpoint, fmt, shots, steps, tasks, seed, base)
                   if cfg.problem == "regression"
                   else plot_episode(run, exp, fmt, shots, steps, seed))
    if results:
        from .plot_gates import plot_gates  # here: plot_gates imports this module

        written.append(plot_adaptation(run, results, cfg, fmt))
        written.append(plot_gates(run, results, cfg, fmt))  # None without gate statistics
    return [p for p in written if p is not None]
