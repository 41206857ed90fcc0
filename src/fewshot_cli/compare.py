"""``fewshot compare``: runs side by side, read from their run directories alone
(eval.json, meta.json, metrics.jsonl, config.yaml); a sweep directory stands for its
members that have a run directory.

**Which evaluation.** Each run contributes one result of its eval.json: the latest of its
own evaluated with ``--shots`` support examples and at least ``max(--steps)`` inner steps
(:func:`.protocols.choose`). The steps reported are ``--steps``, else that result's last.

**Groups.** Runs whose resolved configs (flattened to dotted keys) are equal once
:data:`IGNORED_KEYS` are left out are replicates of one setting, told apart by their seed:
one group. A group is labelled by the settings that differ between the groups
(``task.shots=5``), or, when there is one group, by its algorithm and runs.

**Rows.** A group's runs evaluated under different protocols (:class:`Protocol`: support
size, ways, queries, test tasks, evaluation seed, steps reported, ...) are never pooled:
one :class:`Row` per group and protocol, one table per protocol.

**Statistics** (:class:`Stat`), per row, reported step and metric (query loss; query
accuracy in percent, ``accuracy_pct``): ``n``, the runs with a mean at that step (the
seeds); ``mean``, the mean over runs of each run's mean over its test tasks; ``std``, the
sample standard deviation (ddof=1) of those per-run means across seeds, None for n=1;
``ci95``, the mean of the runs' own 95% CI half-widths (the spread over test tasks within
a run, not across seeds).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocols
from .errors import FewshotError, RunDirError
from .rundir import RunDir
from .sweepdir import SweepDir, is_sweep_dir

#: Settings that make two evaluations incomparable when they differ.
PROTOCOL_FIELDS = ("protocol", "shots", "ways", "queries", "query_batch", "split", "loss")

#: Config keys (dotted) left out when deciding whether two runs are replicates of one
#: setting: keys that identify the replicate, or that cannot change what is learned.
#: Anything else keeps runs apart, even settings that may change only the numerics
#: (``device``, ``train.vectorize``) or what is logged (``train.log_every``: logged
#: iterations run extra forward passes for their metrics, e.g. ``inner_loss_after``, so
#: the iterations differ in more than what is written).
IGNORED_KEYS = frozenset({
    "seed",                   # the replicate itself
    "name",                   # a label for the run directory
    "train.threads",          # CPU threads: speed (the run's own numerics at most)
    "train.tensorboard",      # also write TensorBoard event files
    "train.keep_checkpoints",  # how many periodic copies of last.pt are kept on disk
    "train.dist_timeout",     # how long distributed ranks wait for each other
})

#: The metrics compared: ``(name, key in eval.json's per_step rows, scale)``.
METRICS = (("loss", "loss", 1.0), ("accuracy_pct", "accuracy", 100.0))


# ------------------------------------------------------------------------------ runs
@dataclass
class Entry:
    """One run's evaluation, as compared: the result chosen and the steps reported."""

    run: RunDir
    result: dict[str, Any]
    algorithm: str
    task: str
    iterations: int | None
    seconds: float | None
    config: dict[str, Any] = field(default_factory=dict)  # flattened, dotted keys
    report: tuple[int, ...] = ()

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


def stated(model: Any) -> Any:
    """A config with every key at its value, defaults included (``to_dict`` leaves out keys
    added in later versions at their defaults, so that older checkpoints match; compared
    here, a key one run states and another leaves out is the same setting)."""
    fields = getattr(type(model), "model_fields", None)
    if fields is None:
        return model
    return {k: stated(getattr(model, k)) for k in fields}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"iterations": 5}}`` -> ``{"train.iterations": 5}`` (lists kept whole)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def expand(paths: Sequence[str | Path]) -> tuple[list[RunDir], list[str]]:
    """The run directories named, a sweep directory standing for its members that have one
    (each run once); warnings naming the members that have none yet."""
    runs: list[RunDir] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for p in paths:
        if is_sweep_dir(p):
            sweep = SweepDir.open(p)
            found = sweep.runs()
            started = {r.path.name for r in found}
            pending = [m.name for m in sweep.members() if m.name not in started]
            if pending:
                warnings.append(f"{sweep.path}: member(s) {', '.join(pending)} have no run "
                                "directory yet; left out")
        else:
            found = [RunDir.open(p)]
        for run in found:
            key = run.path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(run)
    return runs, warnings


def _wanted(shots: int | None, steps: Sequence[int] | None) -> str:
    parts = ([f"K={shots}"] if shots is not None else []) + (
        [f"at least {max(steps)} steps"] if steps else [])
    return ", ".join(parts)


def _entry(run: RunDir, shots: int | None, steps: Sequence[int] | None) -> Entry | str:
    """The run's entry, or why it is left out."""
    try:
        results = run.load_results()
    except RunDirError as e:
        return str(e)
    own = protocols.own(results)
    if not own:
        return f"{run.path}: no evaluation yet (run fewshot eval {run.path})"
    chosen = protocols.choose(results, shots, steps)
    if chosen is None:
        has = "; ".join(dict.fromkeys(protocols.describe(r) for r in own))
        return (f"{run.path}: no evaluation with {_wanted(shots, steps)} (it has {has}; "
                "run fewshot eval with those options)")
    try:
        cfg = run.read_config()
    except FewshotError as e:
        return str(e)
    it, seconds = _training(run)
    report = tuple(steps) if steps else (int(chosen["settings"]["steps"]),)
    return Entry(run, chosen, algorithm_label(cfg), cfg.task.kind, it, seconds,
                 flatten(stated(cfg)), report)


def gather(paths: Sequence[str | Path], shots: int | None = None,
           steps: Sequence[int] | None = None) -> tuple[list[Entry], list[str]]:
    """The entry of every run (sweeps expanded), and warnings for those left out: not
    evaluated yet, eval.json unreadable, no evaluation matching ``shots``/``steps``. A path
    that is neither a run nor a sweep directory, or no run left, is a RunDirError."""
    runs, warnings = expand(paths)
    entries, skipped = [], []
    for run in runs:
        got = _entry(run, shots, sorted(set(steps)) if steps else None)
        if isinstance(got, str):
            skipped.append(got)
        else:
            entries.append(got)
    if not entries:
        raise RunDirError("nothing to compare: " + "; ".join(skipped or warnings
                                                             or ["no run given"]))
    return entries, warnings + [f"{s}; left out" for s in skipped]


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


# ------------------------------------------------------------------------------ groups
@dataclass
class Group:
    """Runs whose configs differ only in :data:`IGNORED_KEYS`; ``settings``: the dotted
    settings that tell it from the other groups."""

    label: str
    settings: dict[str, Any]
    entries: list[Entry]

    @property
    def algorithm(self) -> str:
        return self.entries[0].algorithm


def _key(entry: Entry) -> str:
    return json.dumps({k: v for k, v in entry.config.items() if k not in IGNORED_KEYS},
                      sort_keys=True)


def value_text(value: Any) -> str:
    """A setting's value as YAML would write it (``true``, ``0.01``, ``[40, 40]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def group(entries: list[Entry]) -> list[Group]:
    """The entries grouped by config (:data:`IGNORED_KEYS` left out), in order."""
    found: dict[str, list[Entry]] = {}
    for e in entries:
        found.setdefault(_key(e), []).append(e)
    members = list(found.values())
    keys = list(dict.fromkeys(k for g in members for k in g[0].config if k not in IGNORED_KEYS))
    differ = [k for k in keys if len({json.dumps([k in g[0].config, g[0].config.get(k)])
                                      for g in members}) > 1]
    groups = []
    for g in members:
        settings = {k: g[0].config[k] for k in differ if k in g[0].config}
        label = ", ".join(f"{k}={value_text(v)}" for k, v in settings.items())
        groups.append(Group(label or _runs_label(g), settings, g))
    return groups


def _runs_label(entries: list[Entry]) -> str:
    """``maml r0`` for one run; a sweep's runs by the sweep's name; else every name."""
    names = [e.name for e in entries]
    parents = {e.run.path.parent for e in entries}
    if len(names) > 1 and len(parents) == 1 and is_sweep_dir(next(iter(parents))):
        names = [next(iter(parents)).name]
    return f"{entries[0].algorithm} {', '.join(names)}"


# ------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class Protocol:
    """What makes evaluations comparable: the result's settings of :data:`PROTOCOL_FIELDS`,
    the number of test tasks, the evaluation seed, and the steps reported."""

    shots: Any
    ways: Any
    queries: Any
    tasks: Any
    seed: Any
    steps: tuple[int, ...]
    query_batch: Any
    split: Any
    loss: Any
    text: Any

    @classmethod
    def of(cls, e: Entry) -> Protocol:
        s = e.result["settings"]
        return cls(s.get("shots"), s.get("ways"), s.get("queries"), s.get("tasks"),
                   s.get("seed"), e.report, s.get("query_batch"), s.get("split"),
                   s.get("loss"), s.get("protocol"))

    @property
    def support(self) -> str:
        """``5-way K=1`` (classification) or ``K=10``."""
        return (f"{self.ways}-way " if self.ways else "") + f"K={self.shots}"

    def caption(self) -> str:
        """The whole protocol in one line, for a table's title."""
        steps = ", ".join(str(s) for s in self.steps)
        queries = self.text if self.text else f"{self.queries} queries"
        return (f"{self.support}; {queries}; {self.tasks} test tasks, eval seed {self.seed}; "
                f"{self.split} split, {self.loss} loss; after {steps} inner "
                f"step{'s' if self.steps != (1,) else ''}")


@dataclass
class Stat:
    """One metric at one step over a row's runs (see the module docstring)."""

    n: int
    mean: float | None
    std: float | None
    ci95: float | None


@dataclass
class Row:
    """A group's runs evaluated under one protocol."""

    group: Group
    protocol: Protocol
    entries: list[Entry]

    @property
    def label(self) -> str:
        return self.group.label

    @property
    def n(self) -> int:
        return len(self.entries)

    @property
    def classification(self) -> bool:
        return all(e.classification for e in self.entries)

    @property
    def metrics(self) -> list[str]:
        return ["loss", "accuracy_pct"] if self.classification else ["loss"]

    def stat(self, step: int, metric: str) -> Stat:
        """``metric`` after ``step`` inner steps (module docstring)."""
        key, scale = next((k, s) for m, k, s in METRICS if m == metric)
        pairs = []
        for e in self.entries:
            row = e.at(step)
            cell = row.get(key) if row else None
            if cell and cell.get("mean") is not None:
                pairs.append((scale * cell["mean"], scale * cell["ci95"]))
        means = [m for m, _ in pairs]
        return Stat(len(pairs), statistics.fmean(means) if means else None,
                    statistics.stdev(means) if len(means) > 1 else None,
                    statistics.fmean(c for _, c in pairs) if pairs else None)

    def curve(self, metric: str) -> list[tuple[int, Stat]]:
        """``(step, stat)`` at every step some run of the row was evaluated at."""
        steps = sorted({r["step"] for e in self.entries for r in e.result["per_step"]})
        return [(s, st) for s in steps if (st := self.stat(s, metric)).n]

    @property
    def iterations(self) -> list[int]:
        return [e.iterations for e in self.entries if isinstance(e.iterations, int)]

    @property
    def seconds_per_iteration(self) -> float | None:
        """Mean over the runs of training seconds per meta-iteration."""
        rates = [e.seconds / e.iterations for e in self.entries
                 if e.seconds and e.iterations]
        return statistics.fmean(rates) if rates else None


def rows(groups: list[Group]) -> list[Row]:
    """One row per group and protocol, ordered by protocol (first seen first), then group."""
    found: dict[Protocol, dict[int, list[Entry]]] = {}
    for i, g in enumerate(groups):
        for e in g.entries:
            found.setdefault(Protocol.of(e), {}).setdefault(i, []).append(e)
    return [Row(groups[i], p, es) for p, by in found.items() for i, es in by.items()]


def by_protocol(all_rows: list[Row]) -> list[list[Row]]:
    """The rows of each protocol (one table each), in order."""
    tables: dict[Protocol, list[Row]] = {}
    for r in all_rows:
        tables.setdefault(r.protocol, []).append(r)
    return list(tables.values())


def compare_rows(paths: Sequence[str | Path], shots: int | None = None,
                 steps: Sequence[int] | None = None) -> tuple[list[Row], list[str]]:
    """:func:`gather`, :func:`group` and :func:`rows`, and every warning: runs left out,
    and runs of one group (or the groups) evaluated unlike each other."""
    entries, warnings = gather(paths, shots, steps)
    groups = group(entries)
    if len(groups) == 1:
        warnings += mismatches(entries)
    else:
        for g in groups:
            if len(g.entries) > 1:
                warnings += [f"group {g.label}: {w}" for w in mismatches(g.entries)]
        kinds = {e.task for e in entries}
        if len(kinds) > 1:
            warnings.append("the groups are on different task kinds: "
                            + ", ".join(f"{g.label}: {g.entries[0].task}" for g in groups))
    out = rows(groups)
    tables = by_protocol(out)
    if len(tables) > 1:
        warnings.append(f"the runs were evaluated under {len(tables)} different protocols "
                        "(shown in separate tables): "
                        + "; ".join(t[0].protocol.caption() for t in tables))
    return out, warnings


# ------------------------------------------------------------------------------ compare.png
def plot_compare(all_rows: list[Row], path: Path) -> Path:
    """One line per row over test-time inner steps: query loss (and accuracy), the mean
    over seeds with a band of +- the std across seeds (n > 1) or the run's 95% CI (n = 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .plots import loss_name

    metrics = ["loss"] + (["accuracy_pct"] if all(r.classification for r in all_rows) else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics) + 1.0, 4.8),
                             squeeze=False, layout="constrained")
    several = len(by_protocol(all_rows)) > 1
    for ax, m in zip(axes[0], metrics):
        means: list[float] = []
        for i, r in enumerate(all_rows):
            curve = [(s, st) for s, st in r.curve(m) if st.mean is not None]
            steps = [s for s, _ in curve]
            mean = [st.mean for _, st in curve]
            band = [(st.std if r.n > 1 else st.ci95) or 0.0 for _, st in curve]
            means += mean
            colour = f"C{i % 10}"
            label = (f"{r.label} (n={r.n}, ± {'std' if r.n > 1 else '95% CI'})"
                     + (f" [{r.protocol.support}, {r.protocol.tasks} tasks]" if several else ""))
            ax.plot(steps, mean, "o-", ms=3, color=colour, label=label)
            ax.fill_between(steps, [a - b for a, b in zip(mean, band)],
                            [a + b for a, b in zip(mean, band)], color=colour, alpha=0.15,
                            lw=0)
        positive = [x for x in means if x > 0]
        if m == "loss" and positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")
        losses = " / ".join(sorted({loss_name(str(r.protocol.loss)) for r in all_rows}))
        ax.set_ylabel("query accuracy (%)" if m != "loss" else f"query loss ({losses})")
        ax.set_xlabel("inner steps at test time")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False,
               ncol=min(3, len(handles)))
    p = all_rows[0].protocol
    setting = ("several protocols" if several
               else f"{p.support}, {p.tasks} tasks, eval seed {p.seed}")
    fig.suptitle(f"Adaptation to new test tasks ({setting})\nmean over seeds; band: ± std "
                 "across seeds (n>1), or the run's 95% CI (n=1)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
