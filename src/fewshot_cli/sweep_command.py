"""``fewshot train --seeds/--sweep``, ``--resume SWEEP_DIR`` and ``fewshot eval SWEEP_DIR``:
from the command line's options to a planned sweep (:mod:`.sweep`) run by
:mod:`.sweep_run`."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import sweep as planning
from .config import Config, load_config, quote
from .engine.stopping import SIGNAL_EXIT
from .errors import ConfigError, FewshotError, RunDirError
from .sweep_run import FINISHED, Job, cores, failed, outcome_word, run_jobs, summary, thread_choice
from .sweepdir import Member, SweepDir


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` -> (I, N), parts counted from 1."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = 0
    if not (n >= 1 and 1 <= i <= n):
        raise ConfigError(f"--shard: expected I/N with 1 <= I <= N (part I of N, e.g. 1/4), "
                          f"found {quote(text)}")
    return i, n


def shard_of(members: list[Member], shard: tuple[int, int] | None) -> list[Member]:
    """Part I of N: every N-th member from the I-th, so the parts are balanced."""
    if shard is None:
        return members
    i, n = shard
    return [m for k, m in enumerate(members) if k % n == i - 1]


def _uses_gpu(cfg: Config) -> bool:
    if cfg.device.startswith(("cuda", "mps")):
        return True
    if cfg.device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def train_sweep(*, config: Path | None, resume: Path | None, overrides: list[str],
                seeds: str | None, sweeps: list[str], jobs: int | None, shard: str | None,
                print_commands: bool, dry_run: bool, run_dir: Path | None, runs_root: Path,
                threads: int | None, progress: bool, out: Console, err: Console) -> int:
    """A sweep from CONFIG (or one continued with ``resume``); the exit status."""
    part = parse_shard(shard)
    if resume is not None:
        if config is not None or seeds is not None or sweeps:
            raise ConfigError(f"{resume}: --resume continues the sweep as planned; CONFIG, "
                              "--seeds and --sweep are not used with it")
        sweep = SweepDir.open(resume)
        members = shard_of(sweep.members(), part)
        configs = {m.name: _member_config(sweep, m) for m in members}
        return _run(sweep, members, configs, overrides, jobs, threads, progress, out, err)
    if config is None:
        raise ConfigError("missing CONFIG (a YAML experiment config), or --resume SWEEP_DIR")
    if seeds is None and not sweeps:
        raise ConfigError("--jobs, --shard and --print-commands are for sweeps: add --seeds "
                          "S,S... or --sweep KEY=V1,V2")

    def note(text: str) -> None:
        err.print(f"note: {escape(text)}", highlight=False, soft_wrap=True)

    plan = planning.plan(config, overrides, seeds, sweeps, note)
    members = shard_of(plan.members, part)
    if dry_run:
        out.print(_plan_table(plan, members))
        return 0
    if print_commands:
        path = planning.sweep_path(plan, runs_root, run_dir)
        for line in _commands(config, overrides, seeds, sweeps, path, len(plan.members)):
            out.print(line, highlight=False, soft_wrap=True, markup=False)
        return 0
    if part is not None and run_dir is None:
        raise ConfigError("--shard: give every part the same --run-dir, so that they write "
                          "one sweep directory")
    path = planning.sweep_path(plan, runs_root, run_dir)
    sweep = planning.create(plan, path, list(sys.argv), join=part is not None)
    err.print(f"sweep directory: [bold]{escape(str(sweep.path))}[/] ({len(plan.members)} "
              f"members" + (f"; part {part[0]} of {part[1]}: {len(members)}" if part else "")
              + ")", highlight=False)
    configs = {m.name: plan.configs[m.name] for m in members}
    return _run(sweep, members, configs, [], jobs, threads, progress, out, err)


def _member_config(sweep: SweepDir, member: Member) -> Config:
    try:
        return load_config(sweep.config_path(member))
    except ConfigError as e:
        raise RunDirError(f"{sweep.path}: member {member.name}: {e}") from None


def _run(sweep: SweepDir, members: list[Member], configs: dict[str, Config],
         overrides: list[str], jobs: int | None, threads: int | None, progress: bool,
         out: Console, err: Console) -> int:
    """Start, resume or skip each member as its run directory's state says; run them."""
    todo, skipped = [], {}
    sets = [x for o in overrides for x in ("--set", o)]
    for m in members:
        status, path = sweep.status(m), sweep.member_path(m)
        if status == "pending":
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # created by a member that failed before writing anything
            argv = ["train", str(sweep.config_path(m)), "--run-dir", str(path), *sets]
        elif status in FINISHED:
            skipped[m.name] = f"{status} before; skipped"
            continue
        elif status == "running":
            skipped[m.name] = "running in another process; skipped"
            continue
        elif status == "diverged":
            skipped[m.name] = (f"diverged; not retried (fewshot train --resume {path} "
                               "continues it from its last good checkpoint)")
            continue
        else:  # interrupted, killed, failed
            argv = ["train", "--resume", str(path), *sets]
        todo.append(Job(m, [*argv, "--no-progress"], sweep.log_path(m), path,
                        total=configs[m.name].train.iterations, fresh=status == "pending"))
    slots = jobs
    fixed = {configs[j.member.name].train.threads for j in todo}
    if slots is None and threads is None and any(_uses_gpu(c) for c in configs.values()):
        slots = 1  # one GPU: members take turns (--jobs N shares it)
    elif slots is not None and slots > 1 and threads is None:
        threads = max(1, cores() // slots)  # side by side: the cores shared, none measured
    elif threads is None and len(fixed) == 1 and None not in fixed:
        threads = fixed.pop()  # every member's config sets train.threads: nothing to measure

    def record(job: Job) -> None:
        sweep.record(job.member.name, status="running" if job.code is None else
                     outcome_word(job), exit_code=job.code,
                     updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    stopped = run_jobs(todo, slots=slots, threads=threads, console=err,
                       show=progress, on_change=record) if todo else None
    err.print(summary(todo, sweep, skipped))
    bad = failed(todo)
    if stopped is not None:
        err.print(f"stopped; continue every unfinished member with: fewshot train --resume "
                  f"{sweep.path}", highlight=False, soft_wrap=True)
        code = SIGNAL_EXIT.get(stopped, 130)
    elif bad:
        err.print(f"[bold red]error:[/] {len(bad)} of {len(todo)} member(s) did not finish: "
                  + ", ".join(j.member.name for j in bad) + f" (logs in {sweep.path / 'logs'})",
                  highlight=False, soft_wrap=True)
        code = 1
    else:
        code = 0
    out.print(str(sweep.path), highlight=False, soft_wrap=True)
    return code


def _plan_table(plan: planning.Plan, members: list[Member]) -> Table:
    """``--dry-run``: the members and what sets each apart, writing nothing."""
    table = Table(title=f"{len(members)} member(s) of {plan.source}", title_justify="left")
    table.add_column("member")
    for key in plan.axes:
        table.add_column(key)
    table.add_column("iterations", justify="right")
    for m in members:
        table.add_row(m.name, *(m.settings[k] for k in plan.axes),
                      str(plan.configs[m.name].train.iterations))
    return table


def _commands(config: Path, overrides: list[str], seeds: str | None, sweeps: list[str],
              path: Path, n: int) -> list[str]:
    """One command per member: the same sweep, part i of n, in one sweep directory."""
    base = ["fewshot", "train", str(config), *[x for o in overrides for x in ("--set", o)],
            *[x for s in sweeps for x in ("--sweep", s)],
            *(["--seeds", seeds] if seeds is not None else []), "--run-dir", str(path)]
    return [shlex.join([*base, "--shard", f"{i}/{n}", "--no-progress"])
            for i in range(1, n + 1)]


def eval_sweep(path: Path, options: list[str], jobs: int | None, progress: bool,
               out: Console, err: Console, steps: list[int] | None = None) -> int:
    """``fewshot eval`` of every trained member, on the same test tasks and protocol,
    ``jobs`` at a time (default: as many as the cores allow at the members' recorded
    thread counts); then the sweep's table over seeds (as ``fewshot compare``, after
    ``steps`` when given)."""
    sweep = SweepDir.open(path)
    todo, skipped = [], {}
    for m in sweep.members():
        run = sweep.member_path(m)
        if sweep.status(m) == "pending":
            skipped[m.name] = "not trained yet; skipped"
            continue
        todo.append(Job(m, ["eval", str(run), *options, "--no-progress"],
                        sweep.path / "logs" / f"{m.name}.eval.log", run))
    if not todo:
        raise RunDirError(f"{sweep.path}: no member has been trained yet (fewshot train "
                          f"--resume {sweep.path})")
    if jobs is None:
        jobs = max(1, cores() // max(thread_choice(j.run) or 1 for j in todo))
    stopped = run_jobs(todo, slots=jobs, threads=None, console=err, show=progress,
                       what="evaluation")
    err.print(summary(todo, sweep, skipped))
    bad = failed(todo)
    if bad:
        err.print(f"[bold red]error:[/] {len(bad)} of {len(todo)} evaluation(s) failed: "
                  + ", ".join(j.member.name for j in bad) + f" (logs in {sweep.path / 'logs'})",
                  highlight=False, soft_wrap=True)
    if stopped is not None:
        return SIGNAL_EXIT.get(stopped, 130)
    if len(bad) < len(todo):
        _print_groups(sweep, steps, out, err)
    return 1 if bad else 0


def _print_groups(sweep: SweepDir, steps: list[int] | None, out: Console, err: Console
                  ) -> None:
    """The sweep's evaluations over seeds, as ``fewshot compare SWEEP_DIR`` shows them."""
    from .compare import by_protocol, compare_rows
    from .report import compare_table, print_wide

    try:
        rows, warnings = compare_rows([str(sweep.path)], None, sorted(set(steps or [])) or None)
    except FewshotError as e:
        err.print(f"[yellow]warning:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return
    for w in warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    for table in by_protocol(rows):
        print_wide(out, compare_table(table))
