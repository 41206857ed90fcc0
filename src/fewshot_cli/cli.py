"""The ``fewshot`` command: train, eval, plot, compare, predict, export, ls. Thin: each
command parses its options, calls the module that does the work and prints the outcome; the
tables it prints are built in :mod:`.report`."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from . import compare_command, predict_command
from .completion import complete_config, complete_run_dir
from .config import dump_config, load_config
from .data_commands import data_app
from .engine.stopping import SIGNAL_EXIT, terminate_as_interrupt
from .errors import AgreedError, ConfigError, FewshotError, RunDirError
from .options import CheckpointChoice, PlotFormat, QueryBatch, check_device, int_list, passed_on
from .report import ProtocolBars, decode_bars, print_eval, print_runs
from .rundir import RunDir
from .sweepdir import is_sweep_dir

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help=("Optimization-based few-shot meta-learning: MAML and MAML++, Meta-SGD, ANIL, "
          "Reptile, DAML, the LSTM meta-learner."),
)
app.add_typer(data_app, name="data")
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"fewshot {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", metavar="", is_eager=True, callback=_version,
        help="Print the version and exit.")] = False,
) -> None:
    """Optimization-based few-shot meta-learning: MAML and MAML++, Meta-SGD, ANIL, Reptile,
    DAML, the LSTM meta-learner."""


def _fail(e: FewshotError) -> typer.Exit:
    rank = _rank()
    if rank == 0:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    elif not isinstance(e, AgreedError):  # an error all ranks share is printed by rank 0
        err.print(f"[bold red]error:[/] rank {rank}: {escape(str(e))}", highlight=False,
                  soft_wrap=True)
    return typer.Exit(e.exit_code)


def _leave_group() -> None:
    """Every rank finished: leave the process group together (no-op in one process)."""
    if "torch" in sys.modules:
        from .engine.distributed import stop

        stop(clean=True)


def _rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _world() -> int:
    """The number of processes of a ``torchrun`` launch (1 otherwise)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def _one_process(command: str) -> None:
    """``plot`` draws from one process."""
    if _world() > 1:
        raise ConfigError(f"fewshot {command} runs in one process; start it without torchrun")


def _check_best(run: RunDir, which: str, explicit: bool, doing: str, who: str = "") -> None:
    """A run without best.pt: an explicit ``--checkpoint best`` is refused, naming what
    exists; otherwise (the config's eval.checkpoint, a baseline) a warning, and last.pt."""
    last = run.best_fallback() if which == "best" else None
    if last is None:
        return
    why = (f"{run.checkpoint_path('best')} does not exist (the run has no validation split, "
           "or has not validated yet)")
    if explicit:
        raise RunDirError(f"{why}; it has {last}: use --checkpoint last")
    if _rank() == 0:
        err.print(f"[yellow]warning:[/] {escape(who + why)}; {doing} {last} instead",
                  highlight=False, soft_wrap=True)


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(
        metavar="CONFIG", help="YAML experiment config (not with --resume).",
        show_default=False, autocompletion=complete_config)] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Override a config value: section.key=value (YAML; repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(
        metavar="RUN_DIR", help="Continue RUN_DIR from checkpoints/last.pt (exactly).",
        autocompletion=complete_run_dir)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", metavar="", help="Print the resolved config and exit; writes nothing.")
    ] = False,
    run_dir: Annotated[Path | None, typer.Option(
        metavar="PATH", help="Write the run here (must not exist) instead of runs/<name>-<stamp>.")
    ] = None,
    runs_root: Annotated[Path, typer.Option(
        metavar="DIR", help="Folder for new run directories.")] = Path("runs"),
    device: Annotated[str | None, typer.Option(
        metavar="DEVICE", help="auto | cpu | cuda | cuda:N (overrides the config's device).")
    ] = None,
    progress: Annotated[bool, typer.Option(metavar="", help="Show the progress bar.")] = True,
    threads: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Intra-op CPU threads (default: measured, usually 1).",
        show_default=False)] = None,
    seeds: Annotated[str | None, typer.Option(
        metavar="S[,S...]", help="A sweep: one run per seed, in one sweep directory.",
        show_default=False)] = None,
    sweep: Annotated[list[str] | None, typer.Option(
        metavar="KEY=V1,V2", help="A sweep over these values of KEY (YAML; repeatable: the "
        "cartesian product).", show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Sweep members run side by side (default: as many as the "
        "cores allow at the measured thread count).", show_default=False)] = None,
    shard: Annotated[str | None, typer.Option(
        metavar="I/N", help="Run part I of N of the sweep (for a scheduler's job array; "
        "with --run-dir).", show_default=False)] = None,
    print_commands: Annotated[bool, typer.Option(
        "--print-commands", metavar="", help="Print one command per sweep member (for a "
        "scheduler) and exit.")] = False,
) -> None:
    """Meta-train a model into a new run directory, or --resume one; a sweep with --seeds
    or --sweep."""
    overrides = list(set_ or [])
    console = err if _rank() == 0 else Console(stderr=True, quiet=True)
    if threads is not None:
        overrides.append(f"train.threads={threads}")
    got: list[int] = []  # the signal that interrupted it
    try:
        if device is not None:
            check_device(device)
            overrides.append(f"device={device}")
        if (seeds is not None or sweep or jobs is not None or shard is not None
                or print_commands or (resume is not None and is_sweep_dir(resume))):
            _one_process("train with a sweep")
            from .sweep_command import train_sweep

            code = train_sweep(
                config=config, resume=resume, overrides=overrides, seeds=seeds,
                sweeps=list(sweep or []), jobs=jobs, shard=shard, print_commands=print_commands,
                dry_run=dry_run, run_dir=run_dir, runs_root=runs_root, threads=threads,
                progress=progress, out=out, err=err)
            if code:
                raise typer.Exit(code)
            return
        if resume is not None:
            if config is not None:
                raise ConfigError(f"{config}: a CONFIG is not used with --resume ({resume} "
                                  "continues with its own config.yaml); pass one or the other")
            RunDir.open(resume)  # not a run: say so before loading torch
            from .engine.runner import resume as resume_run

            with decode_bars(err, progress and _rank() == 0):
                run, outcome = resume_run(resume, overrides, console=console,
                                          show_progress=progress)
        else:
            if config is None:
                raise ConfigError("missing CONFIG (a YAML experiment config), or --resume RUN_DIR")
            notes: list[str] = []
            cfg = load_config(config, overrides, notes)
            for note in notes if _rank() == 0 else []:
                err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
            if dry_run:
                out.print(dump_config(cfg), end="", highlight=False, markup=False)
                return
            from .engine.runner import start

            with decode_bars(err, progress and _rank() == 0), terminate_as_interrupt() as got:
                run, outcome = start(cfg, runs_root=runs_root, run_dir=run_dir,
                                     console=console, show_progress=progress)
        _leave_group()
    except KeyboardInterrupt:
        err.print("interrupted before the run started; nothing was written", highlight=False)
        raise typer.Exit(SIGNAL_EXIT.get(got[0] if got else signal.SIGINT, 130)) from None
    except FewshotError as e:
        raise _fail(e) from None
    finally:
        if "torch" in sys.modules:
            from .engine.distributed import stop

            stop()
    if _rank() == 0:
        _report(run, outcome)
    elif outcome.exit_code or outcome.status == "diverged":
        raise typer.Exit(outcome.exit_code or 1)


def _report(run, outcome) -> None:  # noqa: ANN001 - RunDir, trainer.Outcome
    meta = outcome.meta
    if outcome.status == "diverged":
        err.print(f"[bold red]error:[/] {outcome.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if outcome.message:
        err.print(outcome.message, highlight=False, soft_wrap=True)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)
    if outcome.trained:
        best = meta.get("best_val")
        best_text = (f", best val. {best['statistic']} loss {best['value']:.4g}"
                     if isinstance(best, dict) and isinstance(best.get("value"), float) else "")
        from .engine.vectorize import recorded

        err.print(f"{outcome.status}: {outcome.iteration} iterations in "
                  f"{meta['wall_seconds']:.1f} s ({recorded(meta)}){best_text}",
                  highlight=False, soft_wrap=True)
    out.print(str(run.path), highlight=False, soft_wrap=True)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="A run directory written by `fewshot train`.",
        autocompletion=complete_run_dir)],
    checkpoint: Annotated[CheckpointChoice | None, typer.Option(
        help="Which checkpoint [default: the config's eval.checkpoint, last].")] = None,
    tasks: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Number of test tasks [default: the run's eval.tasks].")
    ] = None,
    steps: Annotated[str | None, typer.Option(
        metavar="S[,S...]", help="Largest inner-step count; a list (1,10) adapts to the "
        "largest and reports those step counts.")] = None,
    shots: Annotated[str | None, typer.Option(
        metavar="K[,K...]", help="Support examples per task (per class for classification); "
        "a list (5,10,20) evaluates each on the same tasks.")] = None,
    queries: Annotated[int | None, typer.Option(
        min=1, metavar="Q", help="Query examples per task (per class for classification).")] = None,
    seed: Annotated[int | None, typer.Option(
        metavar="SEED", help="Evaluation task seed [default: the run's eval.seed].")] = None,
    inner_lr: Annotated[float | None, typer.Option(metavar="LR",
        help="Inner step size at test time (default: the run's inner_lr).")] = None,
    query_batch: Annotated[QueryBatch | None, typer.Option(
        help="all: classify all queries in one batch; per_class: batches of one query "
             "per class.")] = None,
    baseline: Annotated[list[Path] | None, typer.Option(
        metavar="RUN_DIR", help="Also evaluate this run (e.g. the pretrained baseline) on the "
        "same tasks and protocols; its results go into the evaluated run's eval.json under "
        "its name (repeatable).", autocompletion=complete_run_dir)] = None,
    device: Annotated[str | None, typer.Option(
        metavar="DEVICE", help="auto | cpu | cuda | cuda:N")] = None,
    progress: Annotated[bool, typer.Option(
        metavar="", help="Show a progress bar over the test tasks (on a terminal).")] = True,
    jobs: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="A sweep directory: members evaluated side by side.",
        show_default=False)] = None,
) -> None:
    """Adapt a run (or every member of a sweep) to new test tasks: a table on the terminal
    and eval.json.

    Reports the query loss (and accuracy) after 0..S inner steps, with 95% CIs.
    """
    sync = None
    got: list[int] = []  # the signal that interrupted it
    try:
        if inner_lr is not None and not (math.isfinite(inner_lr) and inner_lr > 0):
            raise ConfigError(f"--inner-lr: expected a finite value > 0, found {inner_lr}")
        shot_list = int_list("--shots", shots, 1)
        step_list = int_list("--steps", steps, 0)
        check_device(device)
        if is_sweep_dir(run_dir):
            _one_process("eval of a sweep")
            options = passed_on(checkpoint=checkpoint and checkpoint.value, tasks=tasks,
                                steps=steps, shots=shots, queries=queries, seed=seed,
                                inner_lr=inner_lr, device=device,
                                query_batch=query_batch and query_batch.value)
            options += [x for b in baseline or [] for x in ("--baseline", str(b))]
            from .sweep_command import eval_sweep

            code = eval_sweep(run_dir, options, jobs, progress, out, err, step_list)
            if code:
                raise typer.Exit(code)
            return
        run = RunDir.open(run_dir)
        baselines = [RunDir.open(b) for b in baseline or []]
        from .engine import threads
        from .engine.evaluator import eval_settings, evaluate_protocols

        threads.for_run(run.read_meta())
        _warn_killed(run)
        cfg = run.read_config()
        largest = max(step_list) if step_list else None
        protocols = [eval_settings(
            cfg, checkpoint=checkpoint and checkpoint.value, tasks=tasks, steps=largest,
            shots=k, queries=queries, seed=seed, query_batch=query_batch and query_batch.value)
            for k in (shot_list or [None])]
        table_steps = step_list if step_list and len(step_list) > 1 else None
        _check_best(run, protocols[0].checkpoint, checkpoint is not None, "evaluating")
        for b in baselines:
            _check_best(b, protocols[0].checkpoint, False, "evaluating", f"--baseline {b.path}: ")
        if _world() > 1:  # under torchrun: the test tasks split over the processes
            from .engine.runner import join

            sync, rank_device = join(cfg, device)
            device = None if rank_device is None else str(rank_device)
        show = progress and _rank() == 0
        rows = [(f"eval K={p.shots or cfg.task.shots}" if len(protocols) > 1 else "eval",
                 p.tasks) for p in protocols]
        with decode_bars(err, show), ProtocolBars(err, show, rows) as bars, \
                terminate_as_interrupt() as got:
            results = evaluate_protocols(run, protocols, device, inner_lr, baselines,
                                         table_steps, sync, bars)
        _leave_group()
    except KeyboardInterrupt:
        err.print(f"interrupted; {run.eval_path} was not changed", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(SIGNAL_EXIT.get(got[0] if got else signal.SIGINT, 130)) from None
    except FewshotError as e:
        raise _fail(e) from None
    finally:
        if sync is not None:
            from .engine.distributed import stop

            stop()
    if _rank() != 0:
        return
    print_eval(out, results)
    try:
        kept = run.write_eval(results)
    except (OSError, FewshotError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        err.print(f"[bold red]error:[/] {run.eval_path}: cannot save the results above "
                  f"({why})", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if kept is not None:
        err.print(f"[yellow]warning:[/] {escape(str(run.eval_path))} held no readable "
                  f"evaluation; kept as {escape(str(kept))}", highlight=False, soft_wrap=True)
    err.print(f"wrote {run.eval_path}", highlight=False)
    if cfg.train.tensorboard:
        _tensorboard_eval(run, results)


def _tensorboard_eval(run: RunDir, results: list[dict]) -> None:
    """A run trained with ``train.tensorboard`` gets its evaluation in its event files too
    (the HParams view's ``eval/...`` metrics); a failure there is a warning."""
    from .engine.tensorboard import log_evaluation

    own = [r for r in results if not r["baseline"]]
    try:
        log_evaluation(run.path / "tensorboard", own, own[0]["checkpoint_iteration"] or 0)
    except (FewshotError, OSError) as e:
        err.print(f"[yellow]warning:[/] {escape(str(e))}; TensorBoard not updated",
                  highlight=False, soft_wrap=True)


def _warn_killed(run) -> None:  # noqa: ANN001 - RunDir
    if run.status() == "killed":
        meta = run.read_meta()
        err.print(f"note: {run.path} was killed while training (no process holds it; last "
                  f"checkpoint at iteration {meta.get('checkpoint_iteration', '?')}); "
                  f"resume it with: fewshot train --resume {run.path}", highlight=False,
                  soft_wrap=True)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="A run directory written by `fewshot train`.",
        autocompletion=complete_run_dir)],
    checkpoint: Annotated[CheckpointChoice, typer.Option(
        help="Checkpoint for the task figures.")] = CheckpointChoice.last,
    format_: Annotated[PlotFormat, typer.Option(
        "--format", help="File format of the figures.")] = PlotFormat.png,
    shots: Annotated[int | None, typer.Option(
        min=1, metavar="K",
        help="Task figures: support examples per task [default: the run's task.shots].",
        show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        min=0, metavar="S", help="Task figures: inner steps [default: algorithm.eval_inner_steps].",
        show_default=False)] = None,
    tasks: Annotated[int, typer.Option(
        min=1, max=12, metavar="N", help="fit.png: test tasks, one panel each.")] = 4,
    seed: Annotated[int | None, typer.Option(
        metavar="SEED", help="Task figures: seed of the test tasks drawn.",
        show_default=False)] = None,
    baseline: Annotated[Path | None, typer.Option(
        metavar="RUN_DIR", help="fit.png: also draw this run's prediction (e.g. the "
        "pretrained baseline) after the same steps.", autocompletion=complete_run_dir)] = None,
) -> None:
    """Draw the run's curves into RUN_DIR/plots/<name>.<format>; for a sweep directory,
    the curves over its seeds."""
    try:
        _one_process("plot")
        if is_sweep_dir(run_dir):
            from .plots.sweep import plot_sweep
            from .sweepdir import SweepDir

            paths, warnings = plot_sweep(SweepDir.open(run_dir), format_.value)
            for w in warnings:
                err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
            for p in paths:
                out.print(str(p), highlight=False, soft_wrap=True)
            return
        run = RunDir.open(run_dir)
        base = RunDir.open(baseline) if baseline is not None else None
        _warn_killed(run)
        # the default is last, so best here is the user's own choice
        _check_best(run, checkpoint.value, True, "drawing from")
        if base is not None:
            _check_best(base, checkpoint.value, False, "drawing from", f"--baseline {base.path}: ")
        from .engine import threads
        from .plots import PLOT_SEED, plot_run

        threads.for_run(run.read_meta())
        with decode_bars(err, True):
            paths = plot_run(run, checkpoint.value, fmt=format_.value, shots=shots,
                             steps=steps, tasks=tasks, seed=PLOT_SEED if seed is None else seed,
                             baseline=base)
    except FewshotError as e:
        for p in getattr(e, "written", []):  # plots.FiguresMissing: drawn before it failed
            out.print(str(p), highlight=False, soft_wrap=True)
        raise _fail(e) from None
    for p in paths:
        out.print(str(p), highlight=False, soft_wrap=True)


app.command("predict")(predict_command.predict)
app.command("export")(predict_command.export)
app.command("compare")(compare_command.compare)


@app.command("ls")
def ls(
    runs_root: Annotated[Path, typer.Argument(
        metavar="[RUNS_ROOT]", help="Folder holding run directories.")] = Path("runs"),
) -> None:
    """One line per run: name, algorithm, task, status, iterations, best validation, start."""
    try:
        from .listing import list_runs

        listed = list_runs(runs_root)
    except FewshotError as e:
        raise _fail(e) from None
    if not listed:
        out.print(f"no run directories in {runs_root}", highlight=False)
        return
    print_runs(out, listed)


def main() -> None:
    """``fewshot``; a ``torchrun`` rank ends through :func:`distributed.leave_process`."""
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        app()
        return
    try:
        app()
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    from .engine.distributed import leave_process

    leave_process(code)


if __name__ == "__main__":
    main()
