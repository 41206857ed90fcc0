"""Running a sweep's members side by side: each member is an ordinary ``fewshot train``
(or ``fewshot eval``) process with its own thread count, its output in the sweep's
``logs/``, its progress read back from its run directory (metrics.jsonl), the run
directory being the only state the processes share.

Processes rather than threads: torch's intra-op thread count is per process, and a member
that crashes, diverges or runs out of memory cannot take the others with it. Members run in
their own session, so a Ctrl-C at the terminal reaches this process alone, which passes it
on to every member exactly once (each then saves its checkpoint and stops, as a single run
does); on Linux a member is also sent SIGTERM if this process dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .engine.stopping import SIGNAL_EXIT
from .rundir import RunDir
from .sweepdir import Member, SweepDir

#: Statuses of a member that has nothing left to do.
FINISHED = ("completed", "stopped at train.max_seconds")
POLL_S = 0.3


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Job:
    """One member's process: ``argv`` after ``fewshot``; ``fresh`` for a member that
    starts training (it takes ``--threads`` once the sweep's count is known)."""

    member: Member
    argv: list[str]
    log: Path
    run: Path
    total: int | None = None
    fresh: bool = False
    proc: subprocess.Popen[bytes] | None = None
    code: int | None = None
    started: float = 0.0
    ended: float = 0.0
    iteration: int = 0
    loss: float | None = None
    offset: int = 0
    row: TaskID | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.code is None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this member when the sweep's process dies (it then checkpoints)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG


def _launch(job: Job, threads: int | None) -> None:
    argv = [*job.argv, "--threads", str(threads)] if job.fresh and threads else job.argv
    job.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    with job.log.open("ab") as log:
        log.write(f"$ fewshot {' '.join(argv)}\n".encode())
        log.flush()
        job.proc = subprocess.Popen([sys.executable, "-m", "fewshot_cli", *argv],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
    job.started = time.monotonic()
    if (job.run / "meta.json").is_file():  # a resumed member: its metrics so far
        _read_progress(job)


def _read_progress(job: Job) -> None:
    """The member's latest iteration and training loss, from the metrics rows written
    since the last look."""
    path = job.run / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(job.offset)
            data = f.read()
    except OSError:
        return
    end = data.rfind(b"\n") + 1
    job.offset += end
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("iteration"), int):
            job.iteration = row["iteration"]
            if isinstance(row.get("loss"), (int, float)):
                job.loss = float(row["loss"])


def _final_iteration(job: Job) -> None:
    """The iteration an ended member saved (meta.json), past its last logged row."""
    try:
        it = json.loads((job.run / "meta.json").read_text(encoding="utf-8")).get("iteration")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(it, int) and not isinstance(it, bool):
        job.iteration = it


def thread_choice(run: Path) -> int | None:
    """The thread count a member's run recorded (meta.json), once it has chosen one."""
    try:
        meta = json.loads((run / "meta.json").read_text(encoding="utf-8"))
        n = meta["vectorize"]["threads"]["threads"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


class View:
    """One row per member: a bar over its iterations (training), its loss and status. On a
    terminal only; elsewhere one line when a member starts and when it ends."""

    def __init__(self, console: Console, show: bool, jobs: list[Job], what: str) -> None:
        self.console, self.what = console, what
        self.progress: Progress | None = None
        if show and console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24),
                TextColumn("{task.fields[count]}"), TextColumn("{task.fields[state]}"),
                TimeElapsedColumn(), console=console, transient=False)
            width = max(len(j.member.name) for j in jobs)
            for j in jobs:
                j.row = self.progress.add_task(j.member.name.ljust(width), total=j.total,
                                               count="", state="pending")
            self.progress.start()

    def update(self, job: Job, state: str) -> None:
        if self.progress is None or job.row is None:
            return
        count = f"{job.iteration}/{job.total}" if job.total else ""
        loss = f"loss {job.loss:.4g}  " if job.loss is not None else ""
        self.progress.update(job.row, completed=job.iteration if job.total else None,
                             count=count, state=loss + state)

    def say(self, text: str) -> None:
        if self.progress is None:
            self.console.print(text, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@contextlib.contextmanager
def _forwarding(jobs: list[Job], console: Console) -> Iterator[list[int]]:
    """SIGINT / SIGTERM passed on to every running member; the signals received are
    listed in the yielded list (no new member starts once it is not empty)."""
    received: list[int] = []

    def handle(signum: int, frame: Any) -> None:  # noqa: ARG001
        if not received:
            console.print("stopping every member after its current iteration (each saves "
                          "its checkpoint)...", highlight=False)
        received.append(signum)
        for j in jobs:
            if j.running:
                with contextlib.suppress(ProcessLookupError):
                    j.proc.send_signal(signum)  # type: ignore[union-attr]

    old = {s: signal.signal(s, handle) for s in SIGNAL_EXIT}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_jobs(jobs: list[Job], *, slots: int | None, threads: int | None, console: Console,
             show: bool, what: str = "training", on_change: Any = None) -> int | None:
    """Run ``jobs``, ``slots`` at a time; returns the signal that stopped the sweep, if any.

    ``threads`` is each fresh member's ``--threads``. When neither ``slots`` nor ``threads``
    is known, the first fresh member measures its own thread choice alone, and the rest
    run ``cores() // choice`` at a time with that choice. ``on_change(job)`` is called
    when a member starts and when it ends.
    """
    pending = list(jobs)
    measuring: Job | None = None
    if slots is None and threads is not None:
        slots = max(1, cores() // threads)
    view = View(console, show, jobs, what)
    try:
        with _forwarding(jobs, console) as received:
            while pending or any(j.running for j in jobs):
                if measuring is not None and slots is None:
                    n = thread_choice(measuring.run)
                    if n is not None or measuring.code is not None:
                        threads = n or 1
                        slots = max(1, cores() // threads)
                        view.say(f"{measuring.member.name} chose {threads} thread(s): "
                                 f"running {slots} member(s) at a time")
                while pending and not received and (
                        slots is not None and sum(j.running for j in jobs) < slots
                        or slots is None and measuring is None):
                    job = pending.pop(0)
                    if slots is None:
                        if job.fresh:
                            measuring = job
                        else:  # a resumed member: its recorded choice
                            threads = thread_choice(job.run) or 1
                            slots = max(1, cores() // threads)
                    _launch(job, threads)
                    view.say(f"{job.member.name}: started ({what}; log {job.log})")
                    view.update(job, "running")
                    if on_change is not None:
                        on_change(job)
                for job in jobs:
                    if not job.running:
                        continue
                    _read_progress(job)
                    code = job.proc.poll()  # type: ignore[union-attr]
                    if code is None:
                        view.update(job, "stopping" if received else "running")
                        continue
                    job.code, job.ended = code, time.monotonic()
                    _read_progress(job)
                    _final_iteration(job)
                    view.update(job, outcome_word(job))
                    view.say(f"{job.member.name}: {outcome_word(job)} "
                             f"({job.ended - job.started:.0f} s)")
                    if on_change is not None:
                        on_change(job)
                if received and not any(j.running for j in jobs):
                    break
                time.sleep(POLL_S)
    finally:
        view.stop()
    for j in pending:
        view.update(j, "not started")
    return received[0] if received else None


def outcome_word(job: Job) -> str:
    """A finished member's outcome in a word or two (its run's status where it has one)."""
    if job.code is None:
        return "not started" if job.proc is None else "running"
    if (job.run / "meta.json").is_file() and job.argv[0] == "train":
        status = RunDir(job.run).status()
        if status != "running":
            return status
    if job.code == 0:
        return "done"
    return {130: "interrupted", 143: "interrupted"}.get(job.code, f"failed (exit {job.code})")


def error_line(log: Path) -> str:
    """The last ``error:`` line of a member's log, else its last line."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or [x for x in lines if x.strip()] or [""])[-1].strip()


def summary(jobs: list[Job], sweep: SweepDir, skipped: dict[str, str]) -> Table:
    """One row per member: what became of it this time (or why it was skipped)."""
    table = Table(title=f"sweep {sweep.path}", title_justify="left")
    for name, justify in (("member", "left"), ("outcome", "left"), ("its", "right"),
                          ("s", "right"), ("note", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    by_name = {j.member.name: j for j in jobs}
    for m in sweep.members():
        if m.name in skipped:
            table.add_row(m.name, skipped[m.name], "", "", "")
            continue
        j = by_name.get(m.name)
        if j is None:
            continue
        word = outcome_word(j)
        ok = word in (*FINISHED, "done", "interrupted")
        note = "" if ok or j.proc is None else escape(error_line(j.log))
        secs = f"{j.ended - j.started:.0f}" if j.ended else ""
        its = str(j.iteration) if j.total and j.proc is not None else ""
        table.add_row(m.name, word, its, secs, note)
    return table


def failed(jobs: list[Job]) -> list[Job]:
    """Members that ran and did not finish well (stopped by a signal is not a failure)."""
    return [j for j in jobs if j.code is not None
            and outcome_word(j) not in (*FINISHED, "done", "interrupted")]
