"""``fewshot plot``: figures drawn from run-directory files only.

Works on a finished run, one still training, or one stopped early: curves
come from ``metrics.jsonl``; task figures load ``best.pt`` (or ``last.pt``). A run
without metrics rows or without a readable checkpoint is an error, raised before
any figure is written.
``metrics.png`` draws every metric the algorithm reported, whatever its name:
a scalar as one curve, a per-step list as one curve per step.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .engine.evaluator import load_experiment  # noqa: E402
from .engine.setup import Experiment  # noqa: E402
from .errors import RunDirError  # noqa: E402
from .files import atomic_write  # noqa: E402
from .rundir import TRAINER_KEYS, RunDir  # noqa: E402

PLOT_SEED = 777


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


def _log_scale_helps(values: list[float]) -> bool:
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > 20


def _save(fig: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
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


def plot_loss(run: RunDir, rows: list[dict[str, Any]]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    x, y = _series(rows, "loss")
    vx, vy = _series(rows, "val_loss")
    ax.plot(x, y, label="train outer (query) loss", lw=1)
    ax.plot(vx, vy, "o-", ms=3, label="validation loss (after adaptation)")
    if _log_scale_helps(y + vy):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(f"{run.path.name}: meta-training")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, run.plots_dir / "loss.png")


def _numbers(value: Any) -> list[float] | None:
    """A metric's values (NaN for a non-finite one), or None when it is not numbers."""
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [math.nan if (f := _finite(v)) is None else f for v in values]
    return None


def plot_metrics(run: RunDir, rows: list[dict[str, Any]]) -> Path | None:
    """One panel per algorithm metric; a per-step list gives one curve per step."""
    names = algorithm_metrics(rows)
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 3 * len(names)), squeeze=False,
                             sharex=True)
    for ax, name in zip(axes[:, 0], names):
        series: dict[int, list[tuple[int, float]]] = {}
        for r in rows:
            values = _numbers(r.get(name)) if name in r else None
            for k, v in enumerate(values or []):
                if math.isfinite(v):
                    series.setdefault(k, []).append((r["iteration"], v))
        vector = any(isinstance(r.get(name), list) for r in rows)
        for k, pts in sorted(series.items()):
            label = f"step {k}" if vector else name
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=label)
        values = [p[1] for pts in series.values() for p in pts]
        if _log_scale_helps(values):
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if vector and len(series) > 1:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle("metrics reported by the algorithm (training window means)")
    return _save(fig, run.plots_dir / "metrics.png")


def plot_accuracy(run: RunDir, rows: list[dict[str, Any]]) -> Path | None:
    x, y = _series(rows, "accuracy")
    vx, vy = _series(rows, "val_accuracy")
    if not x and not vx:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [100 * v for v in y], lw=1, label="train query accuracy")
    ax.plot(vx, [100 * v for v in vy], "o-", ms=3, label="validation accuracy")
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{run.path.name}: accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, run.plots_dir / "accuracy.png")


def plot_adaptation(run: RunDir, result: dict[str, Any]) -> Path:
    metrics = ["loss"] + (["accuracy"] if "accuracy" in result["per_step"][0] else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    s = result["settings"]
    for ax, m in zip(axes[0], metrics):
        rows = [r for r in result["per_step"] if r[m]["mean"] is not None]
        steps = [r["step"] for r in rows]
        scale = 100 if m == "accuracy" else 1
        mean = [scale * r[m]["mean"] for r in rows]
        ci = [scale * r[m]["ci95"] for r in rows]
        ax.plot(steps, mean, "o-")
        ax.fill_between(steps, [a - b for a, b in zip(mean, ci)],
                        [a + b for a, b in zip(mean, ci)], alpha=0.25, label="95% CI")
        ax.set_xlabel("inner steps at test time")
        ax.set_ylabel(f"query {m}" + (" (%)" if m == "accuracy" else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{run.path.name}: {s['tasks']} test tasks, K={s['shots']}, "
                 f"lr={s['inner_lr']:g}")
    return _save(fig, run.plots_dir / "adaptation.png")


def plot_fit(run: RunDir, exp: Experiment, checkpoint: str) -> Path:
    """Four test sinusoids: truth, support points, prediction after 0, 1 and N steps."""
    source, algo = exp.source, exp.algo
    batch = source.sample(4, torch.Generator().manual_seed(PLOT_SEED), "test").to(
        "cpu", exp.dtype)
    lo, hi = exp.cfg.task.x_range
    grid = torch.linspace(lo, hi, 200, dtype=exp.dtype).view(-1, 1)
    n_steps = exp.cfg.algorithm.eval_inner_steps
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for i, ax in enumerate(axes.flat):
        amp, phase = batch.info["amplitude"][i:i + 1], batch.info["phase"][i:i + 1]
        truth = source.curve(grid.unsqueeze(0), amp, phase)[0]
        ax.plot(grid, truth, "k-", lw=2, label="ground truth")
        base = {k: v.detach() for k, v in algo.params().items()}
        ax.plot(grid, algo.predict(base, grid), ":", label="before adaptation")
        for steps, style in ((1, "--"), (n_steps, "-")):
            fast = algo.adapt_one(batch, i, steps)
            ax.plot(grid, algo.predict(fast, grid), style, label=f"after {steps} step(s)")
        ax.plot(batch.support_x[i, :, 0], batch.support_y[i, :, 0], "r^", ms=7,
                label=f"{batch.support_x.shape[1]} support points")
        ax.set_title(f"A={amp.item():.2f}, phase={phase.item():.2f}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{run.path.name}: adaptation to new sinusoids ({checkpoint}.pt)")
    return _save(fig, run.plots_dir / "fit.png")


def plot_episode(run: RunDir, exp: Experiment) -> Path:
    """One test task: its support images and its queries marked right (green) or wrong (red)."""
    algo, cfg = exp.algo, exp.cfg
    batch = exp.source.sample(1, torch.Generator().manual_seed(PLOT_SEED), "test").to(
        "cpu", exp.dtype)
    steps = cfg.eval.steps or cfg.algorithm.eval_inner_steps
    fast = algo.adapt_one(batch, 0, steps)
    pred = algo.predict(fast, batch.query_x[0]).argmax(-1)
    ways = cfg.task.ways
    sx, sy = batch.support_x[0], batch.support_y[0]
    qx, qy = batch.query_x[0], batch.query_y[0]
    rows_s = math.ceil(len(sx) / ways)
    rows_q = math.ceil(len(qx) / ways)
    rows = rows_s + rows_q
    fig, axes = plt.subplots(rows, ways, figsize=(1.4 * ways, 1.5 * rows + 0.6), squeeze=False)
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
        ax = axes[i // ways][label]
        show(ax, sx[i])
        title = f"class {label}"
        if names is not None and i < ways:
            name = names[int(batch.info["classes"][0, label])]
            title += "\n" + (name if len(name) <= 16 else "…" + name[-15:])
        ax.set_title(title, fontsize=7)
    counters = [0] * ways
    for i in range(len(qx)):
        c = int(qy[i])
        ax = axes[rows_s + counters[c]][c]
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
    fig.suptitle(f"{ways}-way test episode after {steps} steps: {100 * acc:.0f}% of queries right")
    return _save(fig, run.plots_dir / "episode.png")


def plot_run(run: RunDir, checkpoint: str = "best") -> list[Path]:
    """Write every figure that the run's files allow; returns their paths.

    Everything is read and checked (metrics, checkpoint) before the first file
    is written, so a refusal leaves the plots folder as it was.
    """
    rows = run.read_metrics()
    if not rows:
        raise RunDirError(f"{run.metrics_path}: nothing to plot yet (no metrics rows; "
                          "the first is written after train.log_every iterations)")
    cfg = run.read_config()
    # The trainer writes last.pt before the first metrics row, so a run with metrics and
    # no checkpoint has lost its checkpoints: an error, like any other unusable checkpoint.
    exp, _ = load_experiment(run, checkpoint, device="cpu")
    result = run.read_eval()
    written: list[Path | None] = [plot_loss(run, rows), plot_metrics(run, rows)]
    if cfg.problem == "classification":
        written.append(plot_accuracy(run, rows))
    written.append(plot_fit(run, exp, checkpoint) if cfg.problem == "regression"
                   else plot_episode(run, exp))
    if result is not None:
        written.append(plot_adaptation(run, result))
    return [p for p in written if p is not None]
