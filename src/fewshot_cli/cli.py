"""The ``fewshot`` command: train / eval / plot. Thin: parse, call, print."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import DEVICE_PATTERN, dump_config, load_config, quote
from .errors import ConfigError, FewshotError
from .rundir import RunDir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Optimization-based few-shot meta-learning experiments: MAML, FOMAML and baselines.",
)
out = Console()
err = Console(stderr=True)


def _fail(e: FewshotError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


class CheckpointChoice(str, Enum):
    best = "best"
    last = "last"


class QueryBatch(str, Enum):
    all = "all"
    per_class = "per_class"


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(
        help="YAML experiment config (not with --resume).", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Override a config value: section.key=value (YAML; repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(
        metavar="RUN_DIR", help="Continue RUN_DIR from checkpoints/last.pt (exactly).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the resolved config and exit; writes nothing.")] = False,
    run_dir: Annotated[Path | None, typer.Option(
        metavar="PATH", help="Write the run here (must not exist) instead of runs/<name>-<stamp>.")
    ] = None,
    runs_root: Annotated[Path, typer.Option(
        metavar="DIR", help="Folder for new run directories.")] = Path("runs"),
    device: Annotated[str | None, typer.Option(
        metavar="DEVICE", help="auto | cpu | cuda | cuda:N (overrides the config's device).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Meta-train a model into a new run directory, or --resume one."""
    overrides = list(set_ or [])
    try:
        if device is not None:
            _check_device(device)
            overrides.append(f"device={device}")
        if resume is not None:
            if config is not None:
                raise ConfigError(f"{config}: a CONFIG is not used with --resume ({resume} "
                                  "continues with its own config.yaml); pass one or the other")
            RunDir.open(resume)  # not a run: say so before loading torch
            from .engine.runner import resume as resume_run

            run, outcome = resume_run(resume, overrides, console=err, show_progress=progress)
        else:
            if config is None:
                raise ConfigError("missing CONFIG (a YAML experiment config), or --resume RUN_DIR")
            cfg = load_config(config, overrides)
            if dry_run:
                out.print(dump_config(cfg), end="", highlight=False, markup=False)
                return
            from .engine.runner import start

            run, outcome = start(cfg, runs_root=runs_root, run_dir=run_dir, console=err,
                                 show_progress=progress)
    except KeyboardInterrupt:
        err.print("interrupted before the run started; nothing was written", highlight=False)
        raise typer.Exit(130) from None
    except FewshotError as e:
        raise _fail(e) from None
    _report(run, outcome)


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
        best = meta.get("best_val_loss")
        best_text = f", best validation loss {best:.4g}" if isinstance(best, float) else ""
        mode = (meta.get("vectorize") or {}).get("mode")
        err.print(f"{outcome.status}: {outcome.iteration} iterations in "
                  f"{meta['wall_seconds']:.1f} s (vectorize={mode}){best_text}",
                  highlight=False, soft_wrap=True)
    out.print(str(run.path), highlight=False, soft_wrap=True)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fewshot train`.")],
    checkpoint: Annotated[CheckpointChoice | None, typer.Option(
        help="Which checkpoint [default: the config's eval.checkpoint, best].")] = None,
    tasks: Annotated[int | None, typer.Option(min=1, help="Number of test tasks.")] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Largest inner-step count.")] = None,
    shots: Annotated[int | None, typer.Option(
        min=1, help="Support examples per task (per class for classification).")] = None,
    queries: Annotated[int | None, typer.Option(
        min=1, help="Query examples per task (per class for classification).")] = None,
    seed: Annotated[int | None, typer.Option(help="Evaluation task seed.")] = None,
    inner_lr: Annotated[float | None, typer.Option(
        help="Inner step size at test time (default: the run's inner_lr).")] = None,
    query_batch: Annotated[QueryBatch | None, typer.Option(
        help="all: classify all queries in one batch; per_class: batches of one query "
             "per class.")] = None,
    device: Annotated[str | None, typer.Option(
        metavar="DEVICE", help="auto | cpu | cuda | cuda:N")] = None,
) -> None:
    """Adapt to new test tasks with 0..S inner steps; prints a table, writes eval.json."""
    try:
        if inner_lr is not None and not (math.isfinite(inner_lr) and inner_lr > 0):
            raise ConfigError(f"--inner-lr: expected a finite value > 0, found {inner_lr}")
        _check_device(device)
        run = RunDir.open(run_dir)
        from .engine.evaluator import eval_settings, evaluate

        _warn_killed(run)
        settings = eval_settings(
            run.read_config(), checkpoint=checkpoint and checkpoint.value, tasks=tasks,
            steps=steps, shots=shots, queries=queries, seed=seed,
            query_batch=query_batch and query_batch.value)
        result = evaluate(run, settings, device, inner_lr)
    except FewshotError as e:
        raise _fail(e) from None
    _print_eval(result)
    try:
        run.write_eval(result)
    except OSError as e:
        err.print(f"[bold red]error:[/] {run.eval_path}: cannot save the results above "
                  f"({e.strerror or e})", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    err.print(f"wrote {run.eval_path}", highlight=False)


def _check_device(device: str | None) -> None:
    """A --device that names no device fails here, before torch is loaded (whether the
    device exists is checked when the run is built)."""
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"--device: expected auto, cpu, cuda, cuda:N or mps, "
                          f"found {quote(device)}")


def _warn_killed(run) -> None:  # noqa: ANN001 - RunDir
    if run.status() == "killed":
        meta = run.read_meta()
        err.print(f"note: {run.path} was killed while training (no process holds it; last "
                  f"checkpoint at iteration {meta.get('checkpoint_iteration', '?')}); "
                  f"resume it with: fewshot train --resume {run.path}", highlight=False,
                  soft_wrap=True)


def _fmt(stat: dict, scale: float = 1.0, digits: int = 4) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{scale * stat['mean']:.{digits}g} ± {scale * stat['ci95']:.2g}"


def _print_eval(result: dict) -> None:
    s = result["settings"]
    classification = "accuracy" in result["per_step"][0]
    table = Table(title=(
        f"{result['run']} ({result['checkpoint']}.pt, iteration {result['checkpoint_iteration']}):"
        f" {s['tasks']} test tasks, K={s['shots']}, inner lr {s['inner_lr']:g}"))
    table.add_column("steps", justify="right")
    if classification:
        table.add_column("accuracy % (95% CI)", justify="right")
    table.add_column("loss mean (95% CI)", justify="right")
    table.add_column("loss median", justify="right")
    table.add_column("diverged", justify="right")
    for r in result["per_step"]:
        cells = [str(r["step"])]
        if classification:
            cells.append(_fmt(r["accuracy"], 100))
        med = r["loss"]["median"]
        cells += [_fmt(r["loss"]), "-" if med is None else f"{med:.4g}",
                  str(r["loss"]["diverged"])]
        table.add_row(*cells)
    out.print(table)
    out.print(f"protocol: {s['protocol']}", highlight=False)
    if result["diverged_tasks"]:
        out.print(f"[yellow]{result['diverged_tasks']} task(s) diverged (non-finite loss) and are "
                  "left out of the means at the steps where they diverged[/]")


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fewshot train`.")],
    checkpoint: Annotated[CheckpointChoice, typer.Option(
        help="Checkpoint for the task figures.")] = CheckpointChoice.best,
) -> None:
    """Draw the run's curves into RUN_DIR/plots/*.png."""
    try:
        run = RunDir.open(run_dir)
        _warn_killed(run)
        from .plots import plot_run

        paths = plot_run(run, checkpoint.value)
    except FewshotError as e:
        raise _fail(e) from None
    for p in paths:
        out.print(str(p), highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
