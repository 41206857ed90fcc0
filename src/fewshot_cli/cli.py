"""The ``fewshot`` command: train / eval / plot. Thin: parse, call, print."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import dump_config, load_config
from .errors import FewshotError

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


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML experiment config.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value: section.key=value (YAML; repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the resolved config and exit; writes nothing.")] = False,
    run_dir: Annotated[Path | None, typer.Option(
        help="Write the run here (must not exist) instead of runs/<name>-<stamp>.")] = None,
    runs_root: Annotated[Path, typer.Option(help="Folder for new run directories.")] = Path("runs"),
    device: Annotated[str | None, typer.Option(
        help="auto | cpu | cuda | cuda:N (overrides the config's device).")] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Meta-train a model; writes a new run directory."""
    from .engine.trainer import train as run_training
    from .rundir import RunDir

    overrides = list(set_ or [])
    if device:
        overrides.append(f"device={device}")
    try:
        cfg = load_config(config, overrides)
        if dry_run:
            out.print(dump_config(cfg), end="", highlight=False, markup=False)
            return
        from .engine.setup import build_experiment

        exp = build_experiment(cfg)  # data and device errors surface before any folder exists
        run = RunDir.create(cfg.name, runs_root, run_dir)
        err.print(f"run directory: [bold]{run.path}[/]", highlight=False)
        try:
            meta = run_training(exp, run, command=sys.argv, console=err, show_progress=progress)
        except KeyboardInterrupt:
            err.print(f"interrupted; last.pt and metrics are in {run.path}", highlight=False)
            raise typer.Exit(130) from None
        except FewshotError:
            if not run.checkpoint_path("last").exists():
                shutil.rmtree(run.path, ignore_errors=True)  # nothing of value was written
            raise
    except FewshotError as e:
        raise _fail(e) from None
    best = meta.get("best_val_loss")
    best_text = f", best validation loss {best:.4g}" if best is not None and best < float("inf") \
        else ""
    err.print(
        f"{meta['status']}: {meta['iteration']} iterations in {meta['wall_seconds']:.1f} s "
        f"(vectorize={meta['vectorize']['mode']}){best_text}",
        highlight=False,
    )
    out.print(str(run.path), highlight=False)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fewshot train`.")],
    checkpoint: Annotated[str | None, typer.Option(help="best | last")] = None,
    tasks: Annotated[int | None, typer.Option(min=1, help="Number of test tasks.")] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Largest inner-step count.")] = None,
    shots: Annotated[int | None, typer.Option(
        min=1, help="Support examples per task (per class for classification).")] = None,
    queries: Annotated[int | None, typer.Option(
        min=1, help="Query examples per task (per class for classification).")] = None,
    seed: Annotated[int | None, typer.Option(help="Evaluation task seed.")] = None,
    inner_lr: Annotated[float | None, typer.Option(
        help="Inner step size at test time (default: the run's inner_lr).")] = None,
    query_batch: Annotated[str | None, typer.Option(
        help="all: classify all queries in one batch; per_class: batches of one query "
             "per class.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
) -> None:
    """Adapt to new test tasks with 0..S inner steps; prints a table, writes eval.json."""
    from .engine.evaluator import EvalSettings, evaluate
    from .errors import ConfigError
    from .rundir import RunDir

    try:
        if checkpoint not in (None, "best", "last"):
            raise ConfigError(f"--checkpoint: expected best or last, found {checkpoint!r}")
        if inner_lr is not None and inner_lr <= 0:
            raise ConfigError(f"--inner-lr: expected a value > 0, found {inner_lr}")
        if query_batch not in (None, "all", "per_class"):
            raise ConfigError(f"--query-batch: expected all or per_class, found {query_batch!r}")
        run = RunDir.open(run_dir)
        result = evaluate(run, EvalSettings(checkpoint, tasks, steps, shots, queries, seed,
                                            inner_lr, query_batch, device))
    except FewshotError as e:
        raise _fail(e) from None
    _print_eval(result)
    err.print(f"wrote {run.eval_path}", highlight=False)


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
    checkpoint: Annotated[str, typer.Option(help="best | last, for the task figures.")] = "best",
) -> None:
    """Draw the run's curves into RUN_DIR/plots/*.png."""
    from .errors import ConfigError
    from .plots import plot_run
    from .rundir import RunDir

    try:
        if checkpoint not in ("best", "last"):
            raise ConfigError(f"--checkpoint: expected best or last, found {checkpoint!r}")
        paths = plot_run(RunDir.open(run_dir), checkpoint)
    except FewshotError as e:
        raise _fail(e) from None
    for p in paths:
        out.print(str(p), highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
