"""Time to accuracy: test accuracy at fixed marks of training time, and the first mark
that reaches a target (default: MAML's 98.7% on Omniglot 5-way 1-shot).

    python benchmarks/time_to_accuracy.py CONFIG --budget-minutes M --marks-every-minutes K
        [--set KEY=VALUE ...] [--device cpu|cuda] [--threads N] [--mode single|resume]
        [--tasks 600] [--queries 15] [--steps 3] [--query-batch per_class] [--target 98.7]
        [--work DIR] [--label TEXT] [--out FILE.md] [--json FILE.jsonl] [--write-results]

Training time is the run's own clock: the training loop only, validation included,
process start-up and data loading not (meta.json's ``train_seconds``, metrics.jsonl's
``time``). Marks are at K, 2K, ... minutes of it and at M. Evaluation is
``fewshot eval --checkpoint last`` with the protocol given (by default the target's: 600
test tasks, 15 queries per class in batches of one per class, 3 steps) of a run directory
of its own per mark, ``marks/mark-NN/`` (the run's config, meta and metrics, and the
mark's checkpoint as ``last.pt``), made while no training process runs, so evaluation
never counts in the training time.

``--mode single`` (default): one uninterrupted ``fewshot train`` with ``train.max_seconds``
= M minutes, keeping a checkpoint every ``--checkpoint-every`` iterations
(``train.keep_checkpoints``; 200 on a GPU, 10 otherwise; ``train.log_every`` is cut to
divide it, so each kept checkpoint has a metrics.jsonl row with its time). A mark is the
last kept checkpoint at or before it (the budget's: the final one); the table shows each
one's own training time. Then the marks are evaluated and the other kept checkpoints
deleted. This is the run a researcher would do, paying start-up costs once.

``--mode resume``: ``fewshot train --set train.max_seconds=K*60`` (status "stopped at
train.max_seconds"), evaluate ``last.pt``, ``fewshot train --resume RUN --set
train.max_seconds=2K*60`` (bit-exact), and so on; marks are exact and
``--stop-at-target`` can end early, but every resume adds to the training clock what a
new process pays inside the loop (on an H100 the ``compiled`` path compiled again, about
9 s per resume), and every stop one validation (the "mark val. s" column).

Prints a markdown report; writes it with the numbers as JSON into the run directory
(``time_to_accuracy.md``/``.json``), and optionally appends them to ``--out``, ``--json``
(one JSON object per line) and ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

sys.path.insert(0, str(common.ROOT / "src"))

from fewshot_cli.config import Config, load_config  # noqa: E402

STOPPED = "stopped at train.max_seconds"


def fewshot(*args: str, nproc: int = 1) -> float:
    """Run one ``fewshot`` command (its output passes through), in ``nproc`` processes under
    ``torchrun`` when more than one; its wall seconds."""
    start = time.perf_counter()
    launch = [sys.executable, "-m", "fewshot_cli"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc-per-node", str(nproc), "-m", "fewshot_cli"]
    p = subprocess.run([*launch, *args], cwd=common.ROOT)
    if p.returncode != 0:
        raise SystemExit(f"fewshot {shlex.join(args)} failed (exit status {p.returncode})")
    return time.perf_counter() - start


def logged_times(run: Path) -> dict[int, float]:
    """Training clock (s) at each metrics.jsonl row's iteration, before that iteration's
    validation and checkpoint."""
    return {int(r["iteration"]): float(r["time"]) for r in common.read_metrics(run)}


def keep_mark(run: Path, checkpoint: Path, mark: Path) -> None:
    """A run directory of its own for one mark, with ``checkpoint`` as its ``last.pt``."""
    (mark / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "meta.json", "metrics.jsonl"):
        shutil.copy2(run / name, mark / name)
    shutil.copy2(checkpoint, mark / "checkpoints" / "last.pt")


def evaluate(mark: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``fewshot eval`` of the mark's last.pt (on the device the run trained on); accuracy
    (%) and its 95% CI after ``--steps`` steps."""
    seconds = fewshot("eval", str(mark), "--checkpoint", "last", "--tasks", str(args.tasks),
                      "--queries", str(args.queries), "--steps", str(args.steps),
                      "--query-batch", args.query_batch)
    result = common.read_json(mark / "eval.json")["results"][0]
    acc = {r["step"]: r for r in result["per_step"]}[args.steps].get("accuracy")
    if acc is None:
        raise SystemExit(f"{mark}: not a classification run (no accuracy in eval.json)")
    return {"accuracy": None if acc["mean"] is None else 100 * acc["mean"],
            "ci95": None if acc["ci95"] is None else 100 * acc["ci95"],
            "diverged": result["diverged_tasks"], "protocol": result["settings"]["protocol"],
            "eval_seconds": round(seconds, 1)}


def machine(meta: dict[str, Any]) -> str:
    """CPU model and cores, and the device the run trained on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = meta.get("device", "?")
    gpu = f", GPU {meta.get('device_name')}" if str(device).startswith("cuda") else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; trained on {device}"


def marks(budget_min: float, every_min: float) -> list[float]:
    """Training-time marks in seconds: K, 2K, ... and the budget itself."""
    n = max(1, math.floor(budget_min / every_min + 1e-9))
    out = [round(i * every_min * 60, 3) for i in range(1, n + 1)]
    if budget_min * 60 - out[-1] > 1e-6:
        out.append(round(budget_min * 60, 3))
    return out


def on_gpu(cfg: Config) -> bool:
    if cfg.device == "auto":
        import torch

        return torch.cuda.is_available()
    return cfg.device.startswith("cuda")


def train_single(args: argparse.Namespace, config: Path, run: Path, sets: list[str],
                 cfg: Config) -> list[dict[str, Any]]:
    """One run for the whole budget, kept checkpoints; the rows of the marks, evaluated."""
    every = args.checkpoint_every or (200 if on_gpu(cfg) else 10)
    log_every = math.gcd(cfg.train.log_every, every)
    fewshot("train", str(config), "--run-dir", str(run), "--no-progress",
            *common.set_flags([*sets, f"train.max_seconds={args.budget_minutes * 60}",
                               f"train.checkpoint_every={every}",
                               f"train.log_every={log_every}", "train.keep_checkpoints=1000000"]),
            nproc=args.nproc)
    meta = common.read_json(run / "meta.json")
    if meta.get("status") not in (STOPPED, "completed"):
        print(f"training ended with status {meta.get('status')!r}", file=sys.stderr)
    times = {0: 0.0, **logged_times(run)}
    kept = {int(p.stem.split("-")[1]): p for p in (run / "checkpoints").glob("iter-*.pt")}
    timed = sorted((times[i], i) for i in kept if i in times)
    chosen: list[tuple[float, int]] = []
    targets = marks(args.budget_minutes, args.marks_every_minutes)
    for n, seconds in enumerate(targets, 1):
        before = [t for t in timed if t[0] <= seconds + 1e-9]
        pick = timed[-1] if n == len(targets) else before[-1] if before else None
        if pick is not None and (not chosen or pick[1] > chosen[-1][1]):
            chosen.append((seconds, pick[1]))
    rows = []
    for n, (seconds, it) in enumerate(chosen, 1):
        mark = run / "marks" / f"mark-{n:02d}"
        keep_mark(run, kept[it], mark)
        rows.append(mark_row(n, seconds, times[it], it, None, mark, args, None))
    for path in kept.values():  # the marks have their copies; last.pt stays
        path.unlink()
    return rows


def train_resume(args: argparse.Namespace, config: Path, run: Path, sets: list[str]
                 ) -> list[dict[str, Any]]:
    """One stop and resume per mark; each mark evaluated before training goes on."""
    rows: list[dict[str, Any]] = []
    for n, seconds in enumerate(marks(args.budget_minutes, args.marks_every_minutes), 1):
        clock = f"train.max_seconds={seconds}"
        if n == 1:
            wall = fewshot("train", str(config), "--run-dir", str(run), "--no-progress",
                           *common.set_flags([*sets, clock]))
        else:
            wall = fewshot("train", "--resume", str(run), "--no-progress", "--set", clock)
        meta = common.read_json(run / "meta.json")
        status = meta.get("status", "?")
        if status not in (STOPPED, "completed"):
            print(f"training ended with status {status!r}; no mark {n}", file=sys.stderr)
            break
        mark = run / "marks" / f"mark-{n:02d}"
        keep_mark(run, run / "checkpoints" / "last.pt", mark)
        train_s, it = float(meta["train_seconds"]), int(meta["iteration"])
        logged = logged_times(run).get(it)
        rows.append(mark_row(n, seconds, train_s, it,
                             None if logged is None else train_s - logged, mark, args, wall))
        if (args.stop_at_target and rows[-1]["accuracy"] is not None
                and rows[-1]["accuracy"] >= args.target) or status == "completed":
            break
    return rows


def mark_row(n: int, seconds: float, train_s: float, it: int, val_s: float | None,
             mark: Path, args: argparse.Namespace, wall: float | None) -> dict[str, Any]:
    """One mark: its times and iteration, evaluated (printed as it comes)."""
    row = {"mark": n, "minutes": round(seconds / 60, 4), "train_seconds": round(train_s, 2),
           "iteration": it, "seconds_per_iteration": train_s / max(it, 1),
           "mark_val_seconds": None if val_s is None else round(val_s, 2),
           "train_wall_seconds": None if wall is None else round(wall, 1),
           "checkpoint": str(mark / "checkpoints" / "last.pt"), **evaluate(mark, args)}
    acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.2f} ± {row['ci95']:.2f}%"
    print(f"mark {n}: {train_s / 60:.2f} min of training, iteration {it}, test accuracy {acc}",
          flush=True)
    return row


def report(rec: dict[str, Any]) -> str:
    """The markdown section of one measurement."""
    first = rec["first_at_target"]
    reached = (f"**first mark at or above {rec['target']:g}%: {first['train_seconds'] / 60:.2f} "
               f"min of training** (iteration {first['iteration']}, {first['accuracy']:.2f} ± "
               f"{first['ci95']:.2f}%)" if first else
               f"**{rec['target']:g}% not reached** within {rec['budget_minutes']:g} minutes "
               "of training")
    label = f" ({rec['label']})" if rec["label"] else ""
    lines = [
        f"### Time to accuracy: {rec['config']}{label}, {rec['date']}", "",
        f"Command: `{rec['command']}`", "",
        f"Machine: {rec['machine']}; {rec['threads']} intra-op thread(s)"
        f"{', OMP_NUM_THREADS=' + rec['omp_num_threads'] if rec['omp_num_threads'] else ''}; "
        f"torch {rec['torch']}; vectorize {rec['vectorize']}; mode {rec['mode']}"
        f"{'; ' + str(rec['nproc']) + ' processes' if rec.get('nproc', 1) > 1 else ''}. Run: "
        f"`{rec['run']}`. Test: {rec['tasks']} tasks (the config's eval seed), "
        f"{rec['protocol']}, accuracy after {rec['steps']} steps (mean ± 95% CI). Whole "
        f"command {rec['wall_seconds']:.0f} s.", "",
        reached, "",
        "| mark (min) | training min | iterations | s/it | test accuracy % | mark val. s |"
        " eval s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in rec["marks"]:
        acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.2f} ± {m['ci95']:.2f}"
        hit = " ✓" if m["accuracy"] is not None and m["accuracy"] >= rec["target"] else ""
        val = "-" if m["mark_val_seconds"] is None else f"{m['mark_val_seconds']:.1f}"
        lines.append(f"| {m['minutes']:g} | {m['train_seconds'] / 60:.2f} | {m['iteration']} | "
                     f"{m['seconds_per_iteration']:.3f} | {acc}{hit} | {val} | "
                     f"{m['eval_seconds']:.0f} |")
    if rec["status"] not in (STOPPED, "completed"):
        lines += ["", f"Training ended early: {rec['status']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--budget-minutes", type=float, required=True,
                    help="training time (the run's own clock) to spend in all")
    ap.add_argument("--marks-every-minutes", type=float, required=True,
                    help="evaluate a checkpoint after every this many minutes of training")
    common.add_set_option(ap, help="config override for the run (repeatable)")
    ap.add_argument("--device", default=None, help="cpu | cuda | ... (default: the config's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op CPU threads (default: the run measures, usually 1)")
    ap.add_argument("--mode", choices=("single", "resume"), default="single",
                    help="one run with kept checkpoints, or a stop and resume per mark")
    ap.add_argument("--nproc", type=int, default=1, metavar="N",
                    help="single mode: train in N processes (torchrun --standalone), e.g. 2 "
                         "on a 2-core CPU, where two one-thread processes beat one of two")
    ap.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="single mode: keep a checkpoint every N iterations (default: 200 on "
                         "a GPU, 10 otherwise)")
    ap.add_argument("--root", type=Path, default=common.OMNIGLOT,
                    help="Omniglot folder, for an omniglot config without a task.root --set "
                         "(default: $FEWSHOT_OMNIGLOT or ../shared/data/omniglot)")
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--queries", type=int, default=15, help="test queries per class")
    ap.add_argument("--steps", type=int, default=3, help="test-time inner steps")
    ap.add_argument("--query-batch", choices=("all", "per_class"), default="per_class")
    ap.add_argument("--target", type=float, default=98.7, help="target test accuracy, %%")
    ap.add_argument("--stop-at-target", action="store_true",
                    help="resume mode: stop training at the first mark that reaches the target")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fewshot-tta"),
                    help="parent folder of the run directory")
    ap.add_argument("--name", default=None, help="run folder name (default: CONFIG-stamp)")
    ap.add_argument("--label", default=None, help="what this measurement varies (report)")
    ap.add_argument("--out", type=Path, default=None, help="append the markdown here")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line here")
    common.add_write_results_option(ap)
    args = ap.parse_args()
    if args.marks_every_minutes <= 0 or args.budget_minutes < args.marks_every_minutes:
        ap.error("expected 0 < --marks-every-minutes <= --budget-minutes")
    if args.nproc > 1 and args.mode != "single":
        ap.error("--nproc needs --mode single")

    config = args.config.resolve()
    sets = list(args.overrides)
    if args.device:
        sets.append(f"device={args.device}")
    if args.threads:
        sets.append(f"train.threads={args.threads}")
    cfg = load_config(config, sets)
    if cfg.task.kind == "omniglot" and not any(s.startswith("task.root=") for s in sets):
        sets.insert(0, f"task.root={common.require_omniglot(args.root).resolve()}")
    run = args.work / (args.name or f"{config.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    command = common.omp_prefix() + common.command_line(__file__)
    start = time.perf_counter()
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    if args.mode == "single":
        rows = train_single(args, config, run, sets, cfg)
    else:
        rows = train_resume(args, config, run, sets)

    meta = common.read_json(run / "meta.json")
    first = next((r for r in rows if r["accuracy"] is not None and r["accuracy"] >= args.target),
                 None)
    rec = {
        "label": args.label, "config": args.config.name, "overrides": args.overrides,
        "command": command, "date": date, "machine": machine(meta),
        "threads": meta.get("threads"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "torch": meta.get("torch"), "vectorize": common.vectorize_path(meta),
        "mode": args.mode, "nproc": args.nproc, "run": str(run),
        "budget_minutes": args.budget_minutes,
        "marks_every_minutes": args.marks_every_minutes, "tasks": args.tasks,
        "queries": args.queries, "steps": args.steps, "query_batch": args.query_batch,
        "protocol": rows[0]["protocol"] if rows else "-", "target": args.target,
        "status": meta.get("status"), "first_at_target": first, "marks": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    text = report(rec)
    print(text)
    (run / "time_to_accuracy.md").write_text(text, encoding="utf-8")
    (run / "time_to_accuracy.json").write_text(json.dumps(rec, indent=2) + "\n",
                                                encoding="utf-8")
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    if args.json:
        with args.json.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
    if args.write_results:
        common.append(text)


if __name__ == "__main__":
    main()
