"""``fewshot plot``: figures drawn from run-directory files only.

Works on a finished run, one still training, or one stopped early: curves
come from ``metrics.jsonl``; task figures load ``best.pt`` (or ``last.pt``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .engine.evaluator import load_experiment  # noqa: E402
from .errors import RunDirError  # noqa: E402
from .rundir import RunDir  # noqa: E402

PLOT_SEED = 777


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in rows
           if key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _log_scale_helps(values: list[float]) -> bool:
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > 20


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


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


def plot_inner(run: RunDir, rows: list[dict[str, Any]]) -> Path | None:
    rows = [r for r in rows if r.get("inner_loss")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = len(rows[0]["inner_loss"])
    for k in range(steps):
        pts = [(r["iteration"], r["inner_loss"][k]) for r in rows if len(r["inner_loss"]) > k]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=f"before inner step {k + 1}")
    vals = [v for r in rows for v in r["inner_loss"]]
    if _log_scale_helps(vals):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("support loss")
    ax.set_title("support loss at each inner step")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, run.plots_dir / "inner.png")


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


def plot_fit(run: RunDir, checkpoint: str) -> Path:
    """Four test sinusoids: truth, support points, prediction after 0, 1 and N steps."""
    exp, _ = load_experiment(run, checkpoint, device="cpu")
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


def plot_episode(run: RunDir, checkpoint: str) -> Path:
    """One test task: its support images and its queries marked right (green) or wrong (red)."""
    exp, _ = load_experiment(run, checkpoint, device="cpu")
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
    """Write every figure that the run's files allow; returns their paths."""
    rows = run.read_metrics()
    if not rows and not run.checkpoint_path("last").is_file():
        raise RunDirError(f"{run.path}: nothing to plot yet (no metrics.jsonl rows, no checkpoint)")
    cfg = run.read_config()
    written: list[Path | None] = [plot_loss(run, rows), plot_inner(run, rows)]
    if cfg.problem == "classification":
        written.append(plot_accuracy(run, rows))
    has_ckpt = any(run.checkpoint_path(w).is_file() for w in ("best", "last"))
    if has_ckpt:
        written.append(plot_fit(run, checkpoint) if cfg.problem == "regression"
                       else plot_episode(run, checkpoint))
    result = run.read_eval()
    if result and result.get("per_step"):
        written.append(plot_adaptation(run, result))
    return [p for p in written if p is not None]
