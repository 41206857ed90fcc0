"""``adaptation.png``: the evaluations recorded in ``eval.json`` (either layout).

Every result is overlaid: the run's protocols solid, its baselines' dashed, one colour
per protocol shared by the run and its baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..config import Config
from ..rundir import RunDir
from .figures import (
    counted,
    finish_adaptation_axis,
    footer,
    log_scale_helps,
    loss_name,
    mark_beyond,
    save,
    ylimits,
)

#: Settings that tell two evaluations of a run apart (besides shots); shown in a curve's
#: label where they differ between the curves of a figure, else once under the title.
_VARYING = (("queries", "query point"), ("steps", "step"), ("inner_lr", "lr {:g}"),
            ("tasks", "task"), ("seed", "seed {}"), ("query_batch", "{} batch"))


def _setting(key: str, form: str, settings: dict[str, Any], classification: bool) -> str:
    if key == "queries" and classification:
        q = settings.get(key)
        return f"{q} quer{'y' if q == 1 else 'ies'} per class"
    if "{" not in form:  # a noun to count
        return counted(settings.get(key), form)
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
            log = log_scale_helps(inliers, ratio=10)
            if log:
                ax.set_yscale("log")
            if max(means) > top:
                limits = ylimits(means, top, log)
        for label, style, colour, steps, mean, ci, bad in curves:
            ax.plot(steps, mean, style, marker="o", ms=3, color=colour, label=label)
            ax.fill_between(steps, [a - b for a, b in zip(mean, ci)],
                            [a + b for a, b in zip(mean, ci)], color=colour, alpha=0.15, lw=0)
            if bad:
                diverged_any = True
                ax.plot([b[0] for b in bad], [b[1] for b in bad], "x", color=colour, ms=8,
                        mew=2)
        finish_adaptation_axis(ax, m, loss, means, limits, log)
        if limits is not None:
            for _, _, colour, steps, mean, _, _ in curves:
                clipped_any |= mark_beyond(ax, steps, mean, limits[1], colour, annotate=3) > 0
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
    footer(fig, run)
    return save(fig, run.plots_dir / f"adaptation.{fmt}")

