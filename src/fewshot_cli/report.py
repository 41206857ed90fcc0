"""What the commands print: the Rich tables and lines of ``fewshot eval``, ``compare`` and
``ls``, built from their results, and the progress bars of their long steps. Nothing here
reads a run or computes a statistic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .errors import FewshotError

if TYPE_CHECKING:
    from .compare import Row
    from .listing import Listed


def error_exit(console: Console, e: FewshotError) -> typer.Exit:
    """Print ``e`` as the one ``error:`` line on ``console``; the exit to raise (its code)."""
    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


def fmt(stat: dict, scale: float = 1.0, digits: int = 4) -> str:
    """``mean ± ci95`` of one statistic (``-`` when every task diverged)."""
    if stat["mean"] is None:
        return "-"
    return f"{scale * stat['mean']:.{digits}g} ± {scale * stat['ci95']:.2g}"


# ------------------------------------------------------------------------------ fewshot eval
def print_eval(out: Console, results: list[dict]) -> None:
    """The settings on lines of their own, then one table per protocol and run (the run
    and its baselines adjacent), each no wider than the terminal."""
    first = results[0]
    s = first["settings"]
    runs = {(r.get("baseline", False), r["run"]): r for r in results}
    for (is_baseline, path), r in runs.items():
        role = "baseline" if is_baseline else "run"
        out.print(f"{role}: {path}", highlight=False)
        out.print(f"  {r.get('algorithm', '?')}, {r['checkpoint']}.pt from iteration "
                  f"{r['checkpoint_iteration']}", highlight=False)
    lr = "learned step sizes" if s["inner_lr"] is None else f"inner lr {s['inner_lr']:g}"
    out.print(f"test tasks: {s['tasks']} (seed {s['seed']}), {lr}, "
              f"loss {s.get('loss', '?')}", highlight=False)
    out.print(f"protocol: {s['protocol']}", highlight=False)
    classification = "accuracy" in first["per_step"][0]
    for r in results:
        out.print(eval_table(r, classification))
        for line in probe_lines(r.get("probe")):
            out.print(line, highlight=False)
        if r["diverged_tasks"]:
            out.print(f"[yellow]{r['diverged_tasks']} task(s) diverged (non-finite loss) and "
                      "are left out of the means at the steps where they diverged[/]")
    for group in protocol_groups(results):
        if len(group) > 1:
            out.print(side_by_side(group, classification))


def eval_table(r: dict, classification: bool) -> Table:
    """One result (a run or a baseline under one protocol): its scores at each step shown."""
    rs = r["settings"]
    who = r.get("name") or Path(r["run"]).name
    kind = r.get("algorithm", "?") + (", baseline" if r.get("baseline") else "")
    shots = (f"{rs['ways']}-way {rs['shots']}-shot" if classification and rs.get("ways")
             else f"K={rs['shots']}")
    table = Table(title=f"{shots}: {who} ({kind})", title_justify="left")
    table.add_column("steps", justify="right")
    if classification:
        table.add_column("accuracy % (95% CI)", justify="right")
    table.add_column("loss mean (95% CI)", justify="right")
    table.add_column("median", justify="right")
    table.add_column("diverged", justify="right")
    shown = rs.get("table_steps")
    for row in r["per_step"]:
        if shown and row["step"] not in shown:
            continue
        cells = [str(row["step"])]
        if classification:
            cells.append(fmt(row["accuracy"], 100))
        med = row["loss"]["median"]
        cells += [fmt(row["loss"]), "-" if med is None else f"{med:.4g}",
                  str(row["loss"]["diverged"])]
        table.add_row(*cells)
    return table


def protocol_groups(results: list[dict]) -> list[list[dict]]:
    """The results of one protocol: the run, then its baselines (eval's order)."""
    groups: list[list[dict]] = []
    for r in results:
        if not r.get("baseline") or not groups:
            groups.append([])
        groups[-1].append(r)
    return groups


def side_by_side(group: list[dict], classification: bool) -> Table:
    """The run and its baselines on the same tasks: unadapted and after the last step."""
    s = group[0]["settings"]
    steps = s["steps"]
    what = "accuracy %" if classification else "loss"
    table = Table(title=f"same {s['tasks']} tasks, K={s['shots']}: {what} (95% CI)",
                  title_justify="left")
    table.add_column("run")
    table.add_column("unadapted", justify="right")
    table.add_column(f"after {steps} step{'s' if steps != 1 else ''}", justify="right")
    for r in group:
        who = f"{r.get('algorithm', '?')} ({r.get('name') or Path(r['run']).name})"
        rows = {row["step"]: row for row in r["per_step"]}
        last = rows.get(steps, r["per_step"][-1])
        key, scale = ("accuracy", 100.0) if classification else ("loss", 1.0)
        table.add_row(who if len(who) <= 36 else who[:35] + "…",
                      fmt(rows[0][key], scale), fmt(last[key], scale))
    return table


def probe_lines(probe: dict | None) -> list[str]:
    """The function-space scores of a result (sinusoids), before -> after adaptation."""
    if not probe:
        return []
    pts = probe["points"]
    lines = []
    if "curve_l1" in probe:
        c = probe["curve_l1"]
        lines.append(f"curve L1 on [{pts['low']:.3g}, {pts['high']:.3g}]: "
                     f"{fmt(c['before'], 1, 3)} unadapted, {fmt(c['after'], 1, 3)} adapted")
    if "phase_identified" in probe:
        c = probe["phase_identified"]
        lines.append(f"own phase's curve closer: {fmt(c['before'], 100, 3)}% of tasks "
                     f"unadapted, {fmt(c['after'], 100, 3)}% adapted")
    return lines


# ------------------------------------------------------------------------------ fewshot compare
def compare_table(rows: list[Row]) -> Table:
    """The rows of one protocol (:func:`.compare.by_protocol`), titled by it: one line per
    group, its score at each reported step (mean ± std across seeds, mean 95% CI) and
    training cost."""
    from .tables import LEGEND, primary, step_cells, step_headers

    table = Table(title=f"protocol: {rows[0].protocol.caption()}\n{LEGEND}",
                  title_justify="left")
    for name in ("group", "algorithm", "runs"):
        table.add_column(name)
    for name in ("n", "K/steps", *step_headers(rows), "its", "s/it"):
        table.add_column(name, justify="right")
    metric = primary(rows)
    for r in rows:
        its = sorted(set(r.iterations))
        per_it = r.seconds_per_iteration
        names = ", ".join(e.name for e in r.entries)
        table.add_row(r.label, r.group.algorithm, names if len(names) <= 40 else names[:39] + "…",
                      str(r.n),
                      f"{r.protocol.shots}/{','.join(str(s) for s in r.protocol.steps)}",
                      *step_cells(r, metric),
                      "-" if not its else str(its[0]) if len(its) == 1 else f"{its[0]}–{its[-1]}",
                      "-" if per_it is None else f"{per_it:.3g}")
    return table


# ------------------------------------------------------------------------------ fewshot ls
def runs_table(listed: list[Listed]) -> Table:
    """One borderless row per run, no cell wrapped."""
    table = Table(box=None, pad_edge=False)
    for name, justify in (("run", "left"), ("algorithm", "left"), ("task", "left"),
                          ("status", "left"), ("its", "right"), ("best val.", "right"),
                          ("started", "left"), ("commit", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for x in listed:
        table.add_row(x.name, x.algorithm, x.task, x.status,
                      "-" if x.iterations is None else str(x.iterations), x.best, x.started,
                      x.commit)
    return table


def print_wide(out: Console, table: Table) -> None:
    """``table`` on ``out``'s stream with no cell wrapped: wider than the terminal rather."""
    wide = Console(width=10_000)
    width = max(out.width, Measurement.get(wide, wide.options, table).maximum)
    Console(width=width, highlight=False, file=out.file).print(table)


def print_runs(out: Console, listed: list[Listed]) -> None:
    """:func:`runs_table` and what its "best val." means, one line per run however long its
    name: wider than the terminal rather than wrapped."""
    print_wide(out, runs_table(listed))
    out.print("best val.: highest validation accuracy, or lowest median validation loss; "
              "commit: the code's, + for uncommitted changes", highlight=False, style="dim")


# ------------------------------------------------------------------------------ progress bars
class Bars:
    """Progress bars on ``console`` (stderr), one row per :meth:`add`, started with the
    first row and gone when stopped. Shown only when ``show`` and the console is a
    terminal: a log file or a pipe gets no bar at all, and every method does nothing."""

    def __init__(self, console: Console, show: bool = True) -> None:
        self.progress: Progress | None = None
        if show and console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=console, transient=True)
        self.started = False

    def add(self, label: str, total: int) -> TaskID | None:
        """A new row counting to ``total``."""
        if self.progress is None:
            return None
        if not self.started:
            self.progress.start()
            self.started = True
        return self.progress.add_task(label, total=total)

    def update(self, row: TaskID | None, completed: int) -> None:
        if self.progress is not None and row is not None:
            self.progress.update(row, completed=completed)

    def stop(self) -> None:
        if self.progress is not None and self.started:
            self.progress.stop()
            self.started = False

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class DecodeBars:
    """What ``tasks.image_cache.decode_progress`` is given: a bar over the files of each
    image set decoded, gone as soon as the set is done (so that the training bar, which
    follows, is the only one on the terminal)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars: Bars | None = None

    def __call__(self, tag: str, total: int) -> Callable[[int], None] | None:
        self.close()
        bars = self.bars = Bars(self.console)
        row = bars.add(f"decoding {tag}", total)
        if row is None:
            return None
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            bars.update(row, done)
            if done >= total:
                bars.stop()

        return advance

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


class ProtocolBars(Bars):
    """``fewshot eval``'s bar: one row per protocol (``rows``: its label and number of test
    tasks); called as the evaluator's ``progress(protocol, tasks done)``."""

    def __init__(self, console: Console, show: bool, rows: list[tuple[str, int]]) -> None:
        super().__init__(console, show)
        self.rows = rows
        self.ids: dict[int, TaskID | None] = {}

    def __call__(self, number: int, done: int) -> None:
        if number not in self.ids:
            self.ids[number] = self.add(*self.rows[number])
        self.update(self.ids[number], done)


@contextmanager
def decode_bars(console: Console, show: bool) -> Iterator[None]:
    """Within the block, the first decode of an image set shows a bar over its files (when
    ``show`` and the console is a terminal)."""
    if not (show and console.is_terminal):
        yield
        return
    from .tasks.image_cache import decode_progress

    bars = DecodeBars(console)
    try:
        with decode_progress(bars):
            yield
    finally:
        bars.close()
