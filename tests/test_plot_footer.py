"""The run's name at the foot of every figure stays clear of the figure's legend."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fewshot_cli.plots import figures  # noqa: E402


def test_footer_is_clear_of_an_outside_legend(tmp_path: Path) -> None:
    # loss.png's layout: a legend of two long labels under the axes, as wide as the figure
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    ax.plot([0, 1], [0, 1], label="train: maml's outer loss (logging-window means)")
    ax.plot([0, 1], [1, 0], label="validation: 100 tasks after 10 inner steps")
    legend = fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    figures.footer(fig, SimpleNamespace(path=Path("sine-maml-20261126-233514")))
    footer = fig.texts[-1]
    seen = []

    def check(event) -> None:
        seen.append((legend.get_window_extent(event.renderer),
                     footer.get_window_extent(event.renderer), fig.bbox.frozen()))

    fig.canvas.mpl_connect("draw_event", check)
    out = figures.save(fig, tmp_path / "loss.png")
    assert out.stat().st_size > 0 and seen
    legend_box, footer_box, written = seen[-1]  # the render that is written
    assert not footer_box.overlaps(legend_box)
    assert footer_box.x1 <= legend_box.x0 or footer_box.y1 <= legend_box.y0 + 1e-6
    assert written.x0 <= footer_box.x0 and footer_box.x1 <= written.x1 + 1e-6
    assert written.y0 <= footer_box.y0 and footer_box.y1 <= written.y1
