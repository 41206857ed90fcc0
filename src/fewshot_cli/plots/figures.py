"""Figure mechanics shared by every figure of ``fewshot plot``: writing a figure, the
run's footer, axis scales and ranges, and how labels name the loss and count things.

Every figure is written through :func:`save` (one atomic write of the rendered bytes,
so a reader never sees a half-written file) and carries the run's name through
:func:`footer`. The other modules of ``plots`` import this one; it imports none of them.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..errors import RunDirError
from ..files import atomic_write
from ..rundir import RunDir

#: File formats of ``fewshot plot --format``.
FORMATS = ("png", "pdf", "svg")
#: How axis labels name ``algorithm.loss``.
LOSS_NAMES = {"mse": "MSE", "l1": "L1", "cross_entropy": "cross-entropy"}


def log_scale_helps(values: list[float], ratio: float = 20) -> bool:
    """Whether a log scale suits ``values``: more than one, all positive, the largest
    more than ``ratio`` times the smallest."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > ratio


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, the noun plural unless ``n`` is 1 ("1 task", "3 tasks")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def loss_name(loss: str) -> str:
    """How an axis names ``algorithm.loss``."""
    return LOSS_NAMES.get(loss, loss)



def footer(fig: plt.Figure, run: RunDir) -> None:
    """The run's name, small, under the bottom-right corner (never in a title)."""
    fig.text(1.0, 0.0, run.path.name, ha="right", va="top", fontsize=7, color="0.35")


def save(fig: plt.Figure, path: Path) -> Path:
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


def ylimits(values: list[float], top: float, log: bool) -> tuple[float, float]:
    """y-limits from the smallest of ``values`` up to ``top``, with a margin."""
    lo = min(v for v in values if v <= top)
    if log:
        return lo / 1.3, top * 1.3
    margin = 0.05 * (top - lo) or 0.05 * abs(top) or 1.0
    return lo - margin, top + margin


def finish_adaptation_axis(ax: plt.Axes, metric: str, loss: str, means: list[float],
                           limits: tuple[float, float] | None, log: bool) -> None:
    """An adaptation panel's y range (``limits``, else a log axis ending above zero: a band
    reaching below it ends at the axis), labels, integer step ticks and grid."""
    from matplotlib.ticker import MaxNLocator

    if limits is not None:
        ax.set_ylim(*limits)
    elif log:
        ax.set_ylim(bottom=min(v for v in means if v > 0) / 1.5)
    ax.set_xlabel("inner steps at test time")
    ax.set_ylabel("query accuracy (%)" if metric == "accuracy" else f"query loss ({loss})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def mark_beyond(ax: plt.Axes, xs: list[float], ys: list[float], top: float, color: str,
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
