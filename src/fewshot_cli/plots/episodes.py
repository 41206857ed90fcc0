"""Task figures, drawn from the experiment rebuilt from a checkpoint: ``fit.png``
(test sinusoids and the predictions adapted to them) and ``episode.png`` (one test
episode of images, its queries marked right or wrong).

The test tasks are drawn from a generator seeded with ``seed`` (``PLOT_SEED`` unless
chosen), so the same run and settings draw the same tasks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from ..engine.setup import Experiment
from ..rundir import RunDir
from ..tasks.base import TaskBatch
from .figures import counted, footer, save

PLOT_SEED = 777


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
    if algo.learns_step_sizes(algo.cfg):
        return "learned step sizes"
    return f"inner lr {algo.inner_lr:g}"


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
    footer(fig, run)
    return save(fig, run.plots_dir / f"fit.{fmt}")


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
                 f"and queries (framed) after {counted(steps, 'inner step')}\n"
                 f"{100 * acc:.0f}% of all {len(qx)} queries right{shown}", fontsize=9)
    footer(fig, run)
    return save(fig, run.plots_dir / f"episode.{fmt}")

