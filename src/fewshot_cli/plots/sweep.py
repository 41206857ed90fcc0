"""``fewshot plot SWEEP_DIR``: a sweep summarised, one line per setting.

A *setting* is a member's settings without ``seed``: the members that differ only in
their seed are repeats of one setting, and each figure draws their mean over the seeds.

- ``adaptation.<fmt>``: each member's latest own evaluation (:func:`protocols.choose`),
  query loss (and accuracy) against test-time inner steps; per setting the mean over its
  seeds with a band of ± one sample standard deviation across the seeds, or, for a
  setting with a single evaluated seed, that run's 95% CI over its test tasks.
- ``training.<fmt>``: every member's training curves thin and faint, coloured by
  setting, and each setting's mean over its seeds on top (over the iterations its
  seeds share).

:func:`adaptation_curves` and :func:`training_curves` compute what is drawn (the tests
check their numbers); :func:`plot_sweep` draws it. Neither reads anything but the
members' run-directory files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..errors import ConfigError, FewshotError, RunDirError
from ..protocols import choose
from ..rundir import RunDir
from ..sweepdir import Member, SweepDir
from .figures import (
    FORMATS,
    counted,
    finish_adaptation_axis,
    log_scale_helps,
    loss_name,
    mark_beyond,
    save,
    spike_free_top,
    ylimits,
)

#: The sweep axis whose members are repeats of one setting.
SEED = "seed"
#: Evaluation settings that make two members' curves not directly comparable.
PROTOCOL = ("shots", "ways", "queries", "tasks", "seed", "split", "loss", "query_batch",
            "protocol")
#: The training curves drawn (metrics.jsonl keys), each a panel when any member has it.
TRAINING_KEYS = ("loss", "val_loss", "val_accuracy")


@dataclass
class SettingCurves:
    """One setting's adaptation curves: ``mean`` and ``band`` (the half-width drawn either
    side) per metric (``loss``; ``accuracy`` in % for classification), at ``steps``."""

    label: str
    settings: dict[str, str]
    members: list[str]
    steps: list[int]
    mean: dict[str, np.ndarray]
    band: dict[str, np.ndarray]
    band_kind: str  # "std": sample std across seeds; "ci95": the single run's 95% CI
    results: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class SettingTraining:
    """One setting's training curves per metrics key: each member's ``(iterations,
    values)`` and the mean over the members at the iterations they all logged."""

    label: str
    settings: dict[str, str]
    members: list[str]
    runs: dict[str, list[tuple[list[int], list[float]]]]
    mean: dict[str, tuple[list[int], np.ndarray]]


# ------------------------------------------------------------------------------ settings
def _groups(sweep: SweepDir) -> dict[tuple[tuple[str, str], ...], list[Member]]:
    """The members by setting (their settings without ``seed``), in the plan's order; the
    keys of a setting in the order of the sweep's axes."""
    order = list(sweep.axes())
    groups: dict[tuple[tuple[str, str], ...], list[Member]] = {}
    for m in sweep.members():
        keys = sorted((k for k in m.settings if k != SEED),
                      key=lambda k: (order.index(k) if k in order else len(order), k))
        groups.setdefault(tuple((k, m.settings[k]) for k in keys), []).append(m)
    return groups


def _config_name(sweep: SweepDir, members: list[Member]) -> str:
    """The name in the members' config (the sweep folder's name when none can be read)."""
    for m in members:
        if (sweep.member_path(m) / "config.yaml").is_file():
            try:
                return RunDir(sweep.member_path(m)).read_config().name
            except FewshotError:
                continue
    return sweep.path.name


def _label(sweep: SweepDir, key: tuple[tuple[str, str], ...], members: list[Member],
           n: int, seeds: bool) -> str:
    what = ", ".join(f"{k}={v}" for k, v in key) or _config_name(sweep, members)
    return f"{what} ({counted(n, 'seed') if seeds else counted(n, 'run')})"


def _not_started(sweep: SweepDir) -> str | None:
    names = [m.name for m in sweep.members()
             if not (sweep.member_path(m) / "config.yaml").is_file()]
    return (f"not started yet: {', '.join(names)}; left out of the figures" if names
            else None)


# ---------------------------------------------------------------------------- adaptation
def _per_step(result: dict[str, Any], metrics: list[str]) -> dict[int, dict[str, tuple]]:
    """step -> metric -> (mean, ci95), for the steps where every metric has a mean."""
    out = {}
    for row in result["per_step"]:
        stats = [row.get(m) if isinstance(row.get(m), dict) else {} for m in metrics]
        if all(isinstance(s.get("mean"), (int, float)) and math.isfinite(s["mean"])
               for s in stats):
            out[int(row["step"])] = {m: (float(s["mean"]), float(s.get("ci95") or 0.0))
                                     for m, s in zip(metrics, stats)}
    return out


def adaptation_curves(sweep: SweepDir) -> tuple[list[SettingCurves], list[str]]:
    """Each setting's mean adaptation curve over its evaluated seeds, and warnings: a
    member not evaluated, or whose eval.json cannot be read, is left out (named); members
    of a setting evaluated with different step counts are drawn at the steps they share;
    members evaluated with different protocols are named."""
    warnings: list[str] = []
    unevaluated: list[str] = []
    picked: list[tuple[tuple[tuple[str, str], ...], list[Member], list[tuple[str, dict]]]] = []
    groups = _groups(sweep)
    seeds = any(SEED in m.settings for ms in groups.values() for m in ms)
    for key, members in groups.items():
        chosen = []
        for m in members:
            path = sweep.member_path(m)
            if not (path / "config.yaml").is_file():
                continue  # not started: said once by _not_started
            try:
                result = choose(RunDir(path).load_results())
            except RunDirError as e:
                warnings.append(f"{e}; {m.name} left out of the adaptation curves (evaluate "
                                f"it again: fewshot eval {sweep.path})")
                continue
            if result is None:
                unevaluated.append(m.name)
            else:
                chosen.append((m.name, result))
        if chosen:
            picked.append((key, members, chosen))
    if unevaluated:
        warnings.insert(0, f"not evaluated yet: {', '.join(unevaluated)}; left out of the "
                           f"adaptation curves (run fewshot eval {sweep.path})")
    every = [r for _, _, chosen in picked for _, r in chosen]
    metrics = ["loss"] + (["accuracy"] if every and all(
        "accuracy" in r["per_step"][0] for r in every) else [])
    curves = []
    for key, members, chosen in picked:
        rows = {name: _per_step(r, metrics) for name, r in chosen}
        steps = sorted(set.intersection(*(set(v) for v in rows.values())))
        label = _label(sweep, key, members, len(chosen), seeds)
        counts = {name: r["settings"].get("steps") for name, r in chosen}
        if len(set(map(repr, counts.values()))) > 1:
            warnings.append(f"{label}: the members were evaluated with different step counts "
                            f"({', '.join(f'{n}: {s}' for n, s in counts.items())}); drawn "
                            f"at the {counted(len(steps), 'step')} they share")
        if not steps:
            warnings.append(f"{label}: no test-time step with a mean loss in every member; "
                            "left out of the adaptation curves")
            continue
        mean, band = {}, {}
        for m in metrics:
            scale = 100.0 if m == "accuracy" else 1.0
            values = scale * np.array([[rows[n][s][m][0] for s in steps] for n, _ in chosen])
            mean[m] = values.mean(axis=0)
            band[m] = (values.std(axis=0, ddof=1) if len(chosen) > 1 else
                       scale * np.array([rows[chosen[0][0]][s][m][1] for s in steps]))
        kind = "std" if len(chosen) > 1 else "ci95"
        if kind == "ci95":
            label = label[:-1] + ", band: its 95% CI over the test tasks)"
        curves.append(SettingCurves(label, dict(key), [n for n, _ in chosen], steps, mean,
                                    band, kind, [r for _, r in chosen]))
    if (note := _protocol_warning(curves)) is not None:
        warnings.append(note)
    return curves, warnings


#: The config keys whose sweep makes an evaluation setting differ between settings, as
#: intended (a sweep over ``task.shots`` evaluates each setting with its own K).
SWEPT_BY = {"shots": ("task.shots",), "ways": ("task.ways",),
            "queries": ("task.queries", "eval.queries"), "tasks": ("eval.tasks",),
            "seed": ("eval.seed",), "query_batch": ("eval.query_batch",),
            "loss": ("algorithm.loss",)}


def _differing(curves: list[SettingCurves]) -> list[str]:
    """The protocol fields that differ within a setting, or between settings without a
    swept key behind the difference."""
    swept = {k for c in curves for k in c.settings}
    out = []
    for k in PROTOCOL:
        within = any(len({repr(r["settings"].get(k)) for r in c.results}) > 1 for c in curves)
        across = len({repr(r["settings"].get(k)) for c in curves for r in c.results}) > 1
        if within or (across and not swept & set(SWEPT_BY.get(k, ()))):
            out.append(k)
    return out


def _protocol_warning(curves: list[SettingCurves]) -> str | None:
    differ = _differing(curves)
    if not differ:
        return None
    detail = "; ".join(f"{name}: " + ", ".join(f"{k}={r['settings'].get(k)}" for k in differ)
                       for c in curves for name, r in zip(c.members, c.results))
    return (f"the members were evaluated with different {', '.join(differ)} ({detail}), so "
            "their curves are not directly comparable")


def _common_protocol(curves: list[SettingCurves], classification: bool) -> str:
    """What every member's evaluation shares, in a few words (for the title)."""
    s = curves[0].results[0]["settings"]
    differ = _differing(curves)
    parts = []
    shots = {r["settings"].get("shots") for c in curves for r in c.results}
    if len(shots) > 1 and "shots" not in differ:
        parts.append("K as in the legend")
    elif "shots" not in differ:
        parts.append(f"K={s.get('shots')}")
    if "queries" not in differ:
        q = s.get("queries")
        parts.append(f"{q} quer{'y' if q == 1 else 'ies'} per class" if classification
                     else counted(q, "query point"))
    if "tasks" not in differ:
        parts.append(counted(s.get("tasks"), "test task"))
    if "seed" not in differ:
        parts.append(f"evaluation seed {s.get('seed')}")
    checkpoints = {r.get("checkpoint") for c in curves for r in c.results}
    if len(checkpoints) == 1:
        parts.append(f"{next(iter(checkpoints))}.pt")
    if differ:
        parts.append(f"evaluated with different {', '.join(differ)} (see the warnings)")
    return ", ".join(parts)


def _seeds_said(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo} seed{'' if hi == 1 else 's'}" if lo == hi else f"{lo}-{hi} seeds"


def _draw_adaptation(sweep: SweepDir, curves: list[SettingCurves], path: Path) -> Path:
    metrics = list(curves[0].mean)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics) + 1.2, 5.2),
                             squeeze=False, layout="constrained")
    loss = " / ".join(sorted({loss_name(str(r["settings"].get("loss")))
                              for c in curves for r in c.results}))
    clipped_any = False
    for ax, m in zip(axes[0], metrics):
        means = [float(v) for c in curves for v in c.mean[m]]
        limits, log = None, False
        if m == "loss":
            # a diverging setting must not flatten the others (as in adaptation.png of a run)
            starts = [float(c.mean[m][0]) for c in curves if c.steps[0] == 0]
            top = 3 * max(starts) if starts else max(means)
            log = log_scale_helps([v for v in means if v <= top], ratio=10)
            if log:
                ax.set_yscale("log")
            if max(means) > top:
                limits = ylimits(means, top, log)
        for i, c in enumerate(curves):
            colour = f"C{i % 10}"
            mean, band = c.mean[m], c.band[m]
            ax.plot(c.steps, mean, "o-", ms=3, color=colour, label=c.label)
            ax.fill_between(c.steps, mean - band, mean + band, color=colour, alpha=0.15, lw=0,
                            hatch="///" if c.band_kind == "ci95" else None)
        finish_adaptation_axis(ax, m, loss, means, limits, log)
        if limits is not None:
            for i, c in enumerate(curves):
                clipped_any |= mark_beyond(ax, c.steps, list(c.mean[m]), limits[1],
                                           f"C{i % 10}", annotate=3) > 0
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if any(c.band_kind == "std" for c in curves):
        handles.append(Patch(color="0.5", alpha=0.3))
        labels.append("band: ± 1 std across seeds")
    if any(c.band_kind == "ci95" for c in curves):
        handles.append(Patch(facecolor="0.5", alpha=0.3, hatch="///"))
        labels.append("hatched band: a single seed's 95% CI over its test tasks")
    if clipped_any:
        handles.append(Line2D([], [], color="0.3", marker="^", ls="", ms=7))
        labels.append("mean above the axis (value shown)")
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
               ncol=min(2, len(handles)))
    n = _seeds_said([len(c.members) for c in curves])
    band = ("± 1 std" if all(c.band_kind == "std" for c in curves) else
            "95% CI of the single run" if all(c.band_kind == "ci95" for c in curves) else
            "± 1 std (hatched: 95% CI of a single seed)")
    fig.suptitle(f"Adaptation to new test tasks: mean over {n} per setting, band: {band}\n"
                 + _common_protocol(curves, len(metrics) > 1), fontsize=11)
    _footer(fig, sweep)
    return save(fig, path)


# ------------------------------------------------------------------------------ training
def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r.get(key)) for r in rows]
    pts = [(i, float(v)) for i, v in pts if isinstance(v, (int, float))
           and not isinstance(v, bool) and math.isfinite(v)]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(sweep: SweepDir) -> tuple[list[SettingTraining], list[str]]:
    """Each setting's training curves (:data:`TRAINING_KEYS`, accuracies in %) per member
    and their mean over the members at the iterations all of them logged; warnings name
    the members without metrics rows (left out)."""
    warnings: list[str] = []
    untrained: list[str] = []
    out = []
    groups = _groups(sweep)
    seeds = any(SEED in m.settings for ms in groups.values() for m in ms)
    for key, members in groups.items():
        names, runs = [], {}
        for m in members:
            path = sweep.member_path(m)
            if not (path / "config.yaml").is_file():
                continue  # not started: said once by _not_started
            try:
                rows = RunDir(path).read_metrics()
            except RunDirError as e:
                warnings.append(f"{e}; {m.name} left out of the training curves")
                continue
            if not rows:
                untrained.append(m.name)
                continue
            names.append(m.name)
            for k in TRAINING_KEYS:
                x, y = _series(rows, k)
                if x:
                    scale = 100.0 if "accuracy" in k else 1.0
                    runs.setdefault(k, []).append((x, [scale * v for v in y]))
        if not names:
            continue
        mean = {}
        for k, series in runs.items():
            shared = sorted(set.intersection(*(set(x) for x, _ in series)))
            if shared:
                values = [[dict(zip(x, y))[i] for i in shared] for x, y in series]
                mean[k] = (shared, np.mean(np.array(values), axis=0))
        out.append(SettingTraining(_label(sweep, key, members, len(names), seeds),
                                   dict(key), names, runs, mean))
    if untrained:
        warnings.insert(0, f"no metrics rows yet: {', '.join(untrained)}; left out of the "
                           "training curves")
    return out, warnings


def _training_text(sweep: SweepDir, settings: list[SettingTraining]
                   ) -> dict[str, tuple[str, str]]:
    """Title and axis label of each training panel, from the first member config that can
    be read."""
    loss, after, tasks = "loss", "", ""
    for s in settings:
        try:
            cfg = RunDir(sweep.path / s.members[0]).read_config()
        except FewshotError:
            continue
        loss = loss_name(cfg.algorithm.loss)
        after = f" after {counted(cfg.algorithm.eval_inner_steps, 'inner step')}"
        tasks = f" on {counted(cfg.train.val_tasks, 'task')}"
        break
    return {"loss": ("train: outer loss (logging-window means)", f"outer loss ({loss})"),
            "val_loss": (f"validation: query loss{after}{tasks}", f"query loss ({loss})"),
            "val_accuracy": (f"validation: query accuracy{after}{tasks}", "accuracy (%)")}


def _draw_training(sweep: SweepDir, settings: list[SettingTraining], path: Path) -> Path:
    keys = [k for k in TRAINING_KEYS if any(k in s.runs for s in settings)]
    text = _training_text(sweep, settings)
    fig, axes = plt.subplots(len(keys), 1, figsize=(7.5, 3.0 * len(keys) + 0.9),
                             squeeze=False, sharex=True, layout="constrained")
    for ax, k in zip(axes[:, 0], keys):
        every = [y for s in settings for _, y in s.runs.get(k, [])]
        top = spike_free_top(every)
        values = [v for y in every for v in y]
        log = "accuracy" not in k and log_scale_helps(
            [v for v in values if top is None or v <= top])
        if log:
            ax.set_yscale("log")
        for i, s in enumerate(settings):
            colour = f"C{i % 10}"
            for x, y in s.runs.get(k, []):
                ax.plot(x, y, lw=0.8, alpha=0.3, color=colour)
            if k in s.mean:
                x, y = s.mean[k]
                ax.plot(x, y, "-", lw=1.8, color=colour, label=s.label,
                        marker="o" if k != "loss" else None, ms=3)
        if top is not None:
            ax.set_ylim(*ylimits(values, top, log))
            for i, s in enumerate(settings):
                if k in s.mean:
                    mark_beyond(ax, s.mean[k][0], list(s.mean[k][1]), top, f"C{i % 10}",
                                annotate=2)
        ax.set_title(text[k][0], fontsize=9, loc="left")
        ax.set_ylabel(text[k][1])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=f"C{i % 10}", lw=1.8) for i in range(len(settings))]
    labels = [s.label for s in settings]
    handles.append(Line2D([], [], color="0.3", lw=0.8, alpha=0.3))
    labels.append("thin: each member (one seed)")
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
               ncol=min(2, len(handles)))
    n = _seeds_said([len(s.members) for s in settings])
    fig.suptitle(f"Meta-training: mean over {n} per setting (at the iterations they share)",
                 fontsize=11)
    _footer(fig, sweep)
    return save(fig, path)


# ---------------------------------------------------------------------------------- both
def _footer(fig: plt.Figure, sweep: SweepDir) -> None:
    """The sweep's name, small, under the bottom-right corner (as a run's figures)."""
    fig.text(1.0, 0.0, sweep.path.name, ha="right", va="top", fontsize=7, color="0.35")


def plot_sweep(sweep: SweepDir, fmt: str = "png") -> tuple[list[Path], list[str]]:
    """Write ``adaptation.<fmt>`` (members evaluated) and ``training.<fmt>`` (members
    trained) into ``sweep.plots_dir``; returns the paths written and warnings. Everything
    is read before the first file is written; a sweep with no trained member is a
    RunDirError (nothing written)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    curves, warned = adaptation_curves(sweep)
    training, warned_training = training_curves(sweep)
    pending = _not_started(sweep)
    warnings = list(dict.fromkeys(([pending] if pending else []) + warned + warned_training))
    if not training and not curves:
        raise RunDirError(f"{sweep.path}: nothing to plot yet (no member has metrics rows: "
                          f"none of its {counted(len(sweep.members()), 'member')} has trained "
                          "for train.log_every iterations)")
    written = []
    if curves:
        written.append(_draw_adaptation(sweep, curves, sweep.plots_dir / f"adaptation.{fmt}"))
    if training:
        written.append(_draw_training(sweep, training, sweep.plots_dir / f"training.{fmt}"))
    return written, warnings
