"""``fewshot compare``: several runs side by side, read from their run directories alone
(eval.json, meta.json, metrics.jsonl, config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .rundir import RunDir

#: Settings that make two evaluations incomparable when they differ.
PROTOCOL_FIELDS = ("protocol", "shots", "ways", "queries", "query_batch", "split", "loss")


@dataclass
class Entry:
    """One run's evaluation, as compared: its own (not baseline) result of the protocol the
    latest eval call listed first."""

    run: RunDir
    result: dict[str, Any]
    algorithm: str
    task: str
    iterations: int | None
    seconds: float | None

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def classification(self) -> bool:
        return "accuracy" in self.result["per_step"][0]

    def at(self, step: int) -> dict[str, Any] | None:
        """``per_step`` row of ``step`` (None when not evaluated)."""
        return next((r for r in self.result["per_step"] if r["step"] == step), None)

    @property
    def steps(self) -> int:
        return int(self.result["settings"]["steps"])


def _training(run: RunDir) -> tuple[int | None, float | None]:
    """Meta-iterations done and training seconds (meta.json, else the last metrics row)."""
    meta = run.read_meta()
    it, seconds = meta.get("iteration"), meta.get("train_seconds")
    if it is None or seconds is None:
        rows = run.read_metrics()
        if rows:
            it = it if it is not None else rows[-1].get("iteration")
            seconds = seconds if seconds is not None else rows[-1].get("time")
    return it, seconds


def algorithm_label(cfg: Any) -> str:
    """``maml``, ``fomaml``, ``maml++`` (MAML with any MAML++ option on), ``daml``, ... as
    a config names it."""
    algo = cfg.algorithm
    off = getattr(type(algo), "OPTIONS_OFF", {})
    if any(getattr(algo, k, v) != v for k, v in off.items()):
        return algo.kind + "++"
    return ("fo" if getattr(algo, "first_order", False) else "") + algo.kind


def gather(paths: list[str]) -> tuple[list[Entry], list[str]]:
    """The comparable entry of every run, and warnings: a run not evaluated yet, or whose
    eval.json cannot be read, is left out with a warning saying which; a path that is not
    a run directory, or no run left to compare, is an error."""
    entries, skipped = [], []
    for p in paths:
        run = RunDir.open(p)
        try:
            own = [r for r in run.load_results() if not r.get("baseline")]
        except RunDirError as e:
            skipped.append(str(e))
            continue
        if not own:
            skipped.append(f"{run.path}: no evaluation yet (run fewshot eval {run.path})")
            continue
        cfg = run.read_config()
        it, seconds = _training(run)
        entries.append(Entry(run, own[0], algorithm_label(cfg), cfg.task.kind, it, seconds))
    if not entries:
        raise RunDirError("nothing to compare: " + "; ".join(skipped))
    return entries, [f"{s}; left out" for s in skipped] + mismatches(entries)


def mismatches(entries: list[Entry]) -> list[str]:
    """Warnings where the runs were not evaluated alike (protocol, task count, seed) or are
    on different task kinds."""
    out = []
    checks = [("protocol", PROTOCOL_FIELDS), ("number of test tasks", ("tasks",)),
              ("evaluation seed", ("seed",))]
    for what, keys in checks:
        differ = [k for k in keys
                  if len({repr(e.result["settings"].get(k)) for e in entries}) > 1]
        if differ:
            shown = [k for k in differ if k != "protocol"] or differ
            detail = "; ".join(
                f"{e.name}: " + ", ".join(f"{k}={e.result['settings'].get(k)}" for k in shown)
                for e in entries)
            out.append(f"the runs were evaluated with different {what} ({detail}), so the "
                       "numbers are not directly comparable")
    if len({e.task for e in entries}) > 1:
        out.append("the runs are on different task kinds: "
                   + ", ".join(f"{e.name}: {e.task}" for e in entries))
    return out


# ------------------------------------------------------------------------------ compare.png
def plot_compare(entries: list[Entry], path: Path) -> Path:
    """The runs' adaptation curves overlaid: query loss (and accuracy) against test-time
    inner steps, mean with its 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .plots import loss_name

    metrics = ["loss"] + (["accuracy"] if all(e.classification for e in entries) else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics) + 1.0, 4.8),
                             squeeze=False, layout="constrained")
    losses = {e.result["settings"].get("loss") for e in entries}
    for ax, m in zip(axes[0], metrics):
        scale = 100.0 if m == "accuracy" else 1.0
        for i, e in enumerate(entries):
            rows = [r for r in e.result["per_step"] if r[m].get("mean") is not None]
            steps = [r["step"] for r in rows]
            mean = [scale * r[m]["mean"] for r in rows]
            ci = [scale * r[m]["ci95"] for r in rows]
            colour = f"C{i % 10}"
            ax.plot(steps, mean, "o-", ms=3, color=colour,
                    label=f"{e.name} ({e.algorithm})")
            ax.fill_between(steps, [a - b for a, b in zip(mean, ci)],
                            [a + b for a, b in zip(mean, ci)], color=colour, alpha=0.15, lw=0)
        if m == "loss":
            positive = [r["loss"]["mean"] for e in entries for r in e.result["per_step"]
                        if (r["loss"].get("mean") or 0) > 0]
            if positive and max(positive) / min(positive) > 20:
                ax.set_yscale("log")
        loss = " / ".join(sorted(loss_name(str(x)) for x in losses))
        ax.set_ylabel("query accuracy (%)" if m == "accuracy" else f"query loss ({loss})")
        ax.set_xlabel("inner steps at test time")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
               ncol=min(3, len(handles)))
    s = entries[0].result["settings"]
    fig.suptitle(f"Adaptation to new test tasks: {len(entries)} runs "
                 f"({s.get('tasks')} tasks, seed {s.get('seed')}; 95% CI bands)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
