"""``fewshot compare``: runs (and sweeps) grouped by setting, their evaluations in one table
per protocol, and their adaptation curves in one figure."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .completion import complete_run_dir
from .errors import ConfigError, FewshotError
from .report import error_exit

out = Console()
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    md = "md"
    csv = "csv"
    latex = "latex"
    json = "json"


def parse_steps(text: str | None) -> list[int] | None:
    """``--steps 1,5,10``: the distinct step counts, ascending (None when absent)."""
    if text is None:
        return None
    try:
        values = sorted({int(p.strip()) for p in text.split(",")})
    except ValueError:
        values = [-1]
    if not values or values[0] < 0:
        raise ConfigError(f"--steps: expected an integer >= 0 or a comma-separated list of "
                          f"them (e.g. 1,5,10), found {text!r}")
    return values


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR...", help="Evaluated runs (fewshot eval RUN_DIR first), or sweep "
        "directories (their members).", show_default=False,
        autocompletion=complete_run_dir)],
    shots: Annotated[int | None, typer.Option(
        min=1, metavar="K", help="Compare the evaluations with K support examples "
        "[default: each run's latest evaluation].")] = None,
    steps: Annotated[str | None, typer.Option(
        metavar="S[,S...]", help="Report after these inner-step counts (from each run's "
        "latest evaluation with at least that many) [default: its last step].")] = None,
    fmt: Annotated[Format, typer.Option(
        "--format", help="table: on the terminal; md, csv, latex, json: only the table on "
        "stdout (warnings on stderr).")] = Format.table,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", help="Where to write the overlaid adaptation "
        "curves (.png, .pdf, .svg) [default: compare.png with --format table, else "
        "none].", show_default=False)] = None,
) -> None:
    """Runs grouped by setting (seeds pooled): mean ± std across seeds, per protocol.

    Runs whose configs differ only in the seed (and settings that cannot change what is
    learned) form one group. Each run's latest evaluation is used (--shots and --steps
    choose among them).
    """
    figure = output if output is not None or fmt is not Format.table else Path("compare.png")
    try:
        step_list = parse_steps(steps)
        if figure is not None and figure.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ConfigError(f"--output {figure}: expected a .png, .pdf or .svg file")
        from .compare import by_protocol, compare_rows

        rows, warnings = compare_rows([str(p) for p in run_dirs], shots, step_list)
    except FewshotError as e:
        raise error_exit(err, e) from None
    for w in warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    if fmt is Format.table:
        from .report import compare_table, print_wide

        for table in by_protocol(rows):
            print_wide(out, compare_table(table))
    else:
        from .tables import RENDERERS

        sys.stdout.write(RENDERERS[fmt.value](rows))
        sys.stdout.flush()
    if figure is None:
        return
    try:
        from .compare import plot_compare

        written = plot_compare(rows, figure)
    except OSError as e:
        why = ConfigError(f"--output {figure}: cannot write ({e.strerror})")
        raise error_exit(err, why) from None
    err.print(f"wrote {written}", highlight=False, soft_wrap=True)
