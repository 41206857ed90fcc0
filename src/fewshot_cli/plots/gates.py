"""``plots/gates.png``: the LSTM meta-learner's update rule seen from inside.

Ravi & Larochelle (2017), "Optimization as a Model for Few-Shot Learning": the
meta-learner's input gate ``i_t`` is a learned, per-coordinate learning rate and its
forget gate ``f_t`` a learned shrinkage of the parameters (``f_t = 1`` keeps them).
The figure draws both against the inner update, one curve per layer of the learner:
the mean over test tasks of the gate's mean over the layer's coordinates, with a band
of plus or minus the coordinates' standard deviation (averaged over the tasks). Drawn
from eval.json only (``fewshot eval`` records the statistics under ``inner``); the best
fixed learning rate of the plain-SGD reference, where eval.json holds one, is a line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from ..config import Config
from ..rundir import RunDir
from .figures import footer, log_scale_helps, save

GATES = (("input_gate", "input gate i_t (the learned learning rate)"),
         ("forget_gate", "forget gate f_t (1 keeps the parameter)"))


def _layers(result: dict[str, Any]) -> list[str]:
    """The learner layers ``result`` holds gate statistics for, in their order."""
    inner = result.get("inner") or {}
    return [k.partition("/")[2] for k in inner if k.startswith("input_gate/")]


def _means(rows: Any) -> list[float] | None:
    """Per-step means of one inner metric's summaries; None where one is missing."""
    if not isinstance(rows, list) or not rows:
        return None
    values = [r.get("mean") if isinstance(r, dict) else None for r in rows]
    if any(not isinstance(v, (int, float)) for v in values):
        return None
    return [float(v) for v in values]


def pick_result(results: list[dict[str, Any]], cfg: Config) -> dict[str, Any] | None:
    """The run's own evaluation with gate statistics, preferring the trained support size."""
    usable = [r for r in results if not r.get("baseline") and _layers(r)]
    same = [r for r in usable if (r.get("settings") or {}).get("shots") == cfg.task.shots]
    return (same or usable or [None])[0]


def reference_lr(results: list[dict[str, Any]], result: dict[str, Any]) -> float | None:
    """The plain-SGD reference's learning rate evaluated with ``result``'s protocol."""
    s = result.get("settings") or {}
    for r in results:
        ref = r.get("reference")
        rs = r.get("settings") or {}
        if (r.get("baseline") and isinstance(ref, dict) and isinstance(ref.get("lr"), float)
                and rs.get("shots") == s.get("shots") and rs.get("steps") == s.get("steps")):
            return ref["lr"]
    return None


def plot_gates(run: RunDir, results: list[dict[str, Any]], cfg: Config, fmt: str = "png"
               ) -> Path | None:
    """Input and forget gates across the inner updates, per learner layer, with their
    spread over the layer's coordinates; None when eval.json holds no gate statistics."""
    result = pick_result(results, cfg)
    if result is None:
        return None
    inner, s = result["inner"], result.get("settings") or {}
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.8), squeeze=False, layout="constrained")
    lr = reference_lr(results, result)
    drawn = False
    for ax, (gate, label) in zip(axes[0], GATES):
        values: list[float] = []
        for k, layer in enumerate(_layers(result)):
            mean = _means(inner.get(f"{gate}/{layer}"))
            sd = _means(inner.get(f"{gate}_sd/{layer}")) or [0.0] * len(mean or [])
            if mean is None:
                continue
            steps = list(range(1, len(mean) + 1))
            colour = f"C{k % 10}"
            ax.plot(steps, mean, "o-", ms=3, color=colour, label=layer)
            ax.fill_between(steps, [max(m - d, m / 20) for m, d in zip(mean, sd)],
                            [m + d for m, d in zip(mean, sd)], color=colour, alpha=0.12, lw=0)
            values += mean
            drawn = True
        if gate == "input_gate" and lr is not None:
            ax.axhline(lr, color="0.2", ls="--", lw=1.2,
                       label=f"plain SGD: best fixed lr {lr:g} (validation tasks)")
            values.append(lr)
        if gate == "input_gate" and log_scale_helps(values, ratio=10):
            ax.set_yscale("log")
        ax.set_xlabel("inner update t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
               ncol=min(4, len(handles)), title="learner layer", title_fontsize=8)
    tasks, shots = s.get("tasks"), s.get("shots")
    fig.suptitle(f"The learned update rule on {tasks} test tasks (K={shots})\n"
                 "lines: each layer's mean gate, averaged over the tasks; "
                 "bands: ±1 sd over the layer's coordinates", fontsize=10)
    footer(fig, run)
    return save(fig, run.plots_dir / f"gates.{fmt}")
