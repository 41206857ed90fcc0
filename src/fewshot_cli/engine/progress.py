"""Training time and its display: the clock ``max_seconds`` counts and ``metrics.jsonl``'s
rates come from, and the progress bar (iteration, loss, rate, ETA)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Clock:
    """Training time: this process's, plus what the run had trained before it."""

    def __init__(self, iteration: int, before: float) -> None:
        self.start = time.perf_counter()
        self.before = before
        self.first_iteration = iteration
        self.log_time, self.log_iteration = self.start, iteration

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def wall(self) -> float:
        return time.perf_counter() - self.start

    def rate(self, iteration: int) -> float:
        """Iterations per second in this process."""
        return (iteration - self.first_iteration) / max(self.wall(), 1e-9)

    def rate_since_log(self, iteration: int) -> float:
        now = time.perf_counter()
        rate = (iteration - self.log_iteration) / max(now - self.log_time, 1e-9)
        self.log_time, self.log_iteration = now, iteration
        return rate


class Bar:
    """The progress bar (iteration, loss, rate, ETA), or nothing when hidden."""

    def __init__(self, console: Console, total: int, done: int, show: bool) -> None:
        self.progress = _progress(console) if show else None
        self.shown = time.perf_counter()
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, completed=done,
                                               loss="-", rate="-")

    def loss(self, value: Any) -> None:
        if self.progress is not None and isinstance(value, float):
            self.progress.update(self.task, loss=f"{value:.4g}")

    def advance(self, iteration: int, clock: Clock, final: bool) -> None:
        """At most four updates a second (rate and ETA from the first seconds on)."""
        if self.progress is None:
            return
        now = time.perf_counter()
        if final or now - self.shown >= 0.25:
            self.progress.update(self.task, completed=iteration,
                                 rate=rate_text(clock.rate(iteration)))
            self.shown = now

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def rate_text(its_per_s: float) -> str:
    """``12 it/s``, or ``3.4 s/it`` when slower than one iteration per second."""
    if its_per_s >= 1:
        return f"{its_per_s:.0f} it/s"
    return f"{1 / its_per_s:.2g} s/it" if its_per_s > 0 else "- it/s"
