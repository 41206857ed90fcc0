"""``fewshot compare``: several runs' evaluations in one table, and their adaptation
curves in one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .completion import complete_run_dir
from .errors import ConfigError, FewshotError
from .report import compare_table

out = Console()
err = Console(stderr=True)


def _fail(e: FewshotError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR...", help="Evaluated runs (fewshot eval RUN_DIR first).",
        show_default=False, autocompletion=complete_run_dir)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="FILE",
        help="Where to write the overlaid adaptation curves.")] = Path("compare.png"),
) -> None:
    """Several runs' evaluations in one table, and their adaptation curves in one figure."""
    try:
        from .compare import gather

        entries, warnings = gather([str(p) for p in run_dirs])
        if output.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ConfigError(f"--output {output}: expected a .png, .pdf or .svg file")
    except FewshotError as e:
        raise _fail(e) from None
    for w in warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    out.print(compare_table(entries))
    try:
        from .compare import plot_compare as _plot

        written = _plot(entries, output)
    except OSError as e:
        raise _fail(ConfigError(f"--output {output}: cannot write ({e.strerror})")) from None
    out.print(f"wrote {written}", highlight=False, soft_wrap=True)
