"""The LSTM meta-learner's measurements (Ravi & Larochelle 2017; issue 8).

Parts (``--parts``, comma-separated; default ``speed,sine,omniglot,miniimagenet``):

- ``speed``: seconds per meta-iteration (and per task) and peak memory of the Omniglot
  5-way 1-shot meta-LSTM config against MAML's, on random images of the configs' shapes
  (no data set needed), every batching path each algorithm declares, one subprocess per
  configuration and path (peak resident memory above the set-up baseline; on CUDA the
  peak allocated memory).
- ``sine``: ``configs/sine-meta-lstm.yaml`` and ``configs/sine-maml.yaml`` trained for the
  same wall time (``--minutes`` each, or ``--sine-maml RUN`` reuses a MAML run), then both
  evaluated on the same 600 test tasks (the evaluation seed, 100 query points, K = 10):
  MSE ± 95% CI after 0, 1, T/2 and T updates, with the plain-SGD reference ``fewshot eval``
  adds to the meta-LSTM (SGD from its learned init at the best of five fixed rates).
- ``omniglot``: ``configs/omniglot-5w1s-meta-lstm.yaml`` and ``configs/omniglot-5w1s-maml.yaml``
  trained for the same wall time (``--minutes`` each) on this machine, validation accuracy
  against training time for both (the same number of validation tasks; validation about
  ``--val-points`` times in the budget, from the measured iteration time), then the best
  checkpoints on 600 test tasks under the reference protocol (1 query per class, one batch)
  and with ``--queries 15 --query-batch per_class``.
- ``miniimagenet``: with ``--miniimagenet-root`` holding the data, the 5-shot config trained
  for ``--minutes`` on ``--device`` (a GPU) and evaluated on 600 test tasks; otherwise the
  paper's anchors only.

Prints a markdown report; ``--write-results`` also appends it to benchmarks/RESULTS.md.

    python benchmarks/meta_lstm.py --minutes 30 --write-results
    python benchmarks/meta_lstm.py --parts miniimagenet --device cuda --minutes 8 \\
        --miniimagenet-root /data/miniimagenet --write-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch

SPEED_CONFIGS = ("omniglot-5w1s-meta-lstm.yaml", "omniglot-5w1s-maml.yaml")
PARTS = ("speed", "sine", "omniglot", "miniimagenet")


# ----------------------------------------------------------------------------- helpers
def train(config: Path, run: Path, seconds: float, overrides: list[str]) -> dict[str, Any]:
    """Train ``config`` into ``run`` for ``seconds`` of training time; returns meta.json."""
    common.fewshot("train", str(config), "--run-dir", str(run), "--no-progress",
                   *common.set_flags([f"train.max_seconds={seconds}", *overrides]))
    return json.loads((run / "meta.json").read_text())


def evaluate(run: Path, *args: str) -> list[dict[str, Any]]:
    """``fewshot eval RUN ARGS``; the entries of eval.json with this call's protocol (the
    run's and its references'; the benchmark's runs are fresh, each protocol run once)."""
    common.fewshot("eval", str(run), *args)
    data = json.loads((run / "eval.json").read_text())
    latest = data["settings"]
    keys = ("tasks", "steps", "shots", "queries", "seed", "query_batch")
    return [r for r in data["results"]
            if all(r["settings"].get(k) == latest.get(k) for k in keys)]


def cell(stat: dict[str, Any] | None, scale: float = 1.0, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{scale * stat['mean']:.{digits}g} ± {scale * stat['ci95']:.2g}"


def own(results: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in results if not r.get("baseline"))


def reference(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in results if r.get("reference")), None)


def machine(device: str) -> str:
    name = (torch.cuda.get_device_name() if device.startswith("cuda") and
            torch.cuda.is_available() else f"{platform.machine()} CPU, {os.cpu_count()} cores")
    return (f"{name}, torch {torch.__version__}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


# ----------------------------------------------------------------------------- speed
def speed_one(config: str, path: str, iterations: int, device: str) -> dict[str, Any]:
    """In this (fresh) process: meta-iteration times and peak memory of ``config`` on
    random images of its shapes, along ``path``."""
    from fewshot_cli import algorithms, models
    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.config import load_config
    from fewshot_cli.engine.meta_update import meta_update
    from fewshot_cli.tasks.base import TaskBatch, TaskShape

    cfg = load_config(common.CONFIGS / config)
    t = cfg.task
    shape = TaskShape("classification", (1 if t.kind == "omniglot" else 3, t.image_size,
                                         t.image_size), t.ways)
    torch.manual_seed(0)
    algo = algorithms.build(cfg, models.build(cfg.model, shape), shape).to(device)
    gen = torch.Generator().manual_seed(0)
    b = cfg.algorithm.meta_batch

    def part(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(b, t.ways * per_class, *shape.input_shape, generator=gen)
        y = torch.arange(t.ways).repeat(per_class).expand(b, -1).contiguous()
        return x.to(device), y.to(device)

    batch = TaskBatch(*part(t.shots), *part(t.queries))
    optimizer = algo.configure_optimizer()
    cuda = device.startswith("cuda")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(iterations + 1):
        common.sync(device)
        start = time.perf_counter()
        meta_update(algo, batch, path, TrainingProgress(1, 1), optimizer)
        common.sync(device)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return {"times": times, "meta_batch": b, "inner_steps": cfg.algorithm.inner_steps,
            "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 if cuda else
                        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024),
            "memory": "peak allocated (CUDA)" if cuda else "peak RSS above set-up"}


def speed(args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    from fewshot_cli import algorithms
    from fewshot_cli.config import load_config

    lines = ["### Meta-iteration time and peak memory: Omniglot 5-way 1-shot, meta-LSTM "
             "against MAML", "",
             f"Random images of each config's shapes, {args.speed_iterations} timed "
             f"meta-iterations after one warm-up, one process per row; {machine(args.device)}.",
             "", "| config | path | tasks per iteration | inner steps | s / iteration (median, "
             "range) | ms / task | peak memory (MB) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    best: dict[str, float] = {}
    for config in SPEED_CONFIGS:
        cfg = load_config(common.CONFIGS / config)
        for path in algorithms.algorithm_class(cfg.algorithm.kind).paths:
            p = subprocess.run([sys.executable, __file__, "--speed-one", config, path,
                                "--speed-iterations", str(args.speed_iterations),
                                "--device", args.device], capture_output=True, text=True,
                               cwd=common.ROOT)
            if p.returncode != 0:
                lines.append(f"| {config} | {path} | failed: "
                             f"{p.stderr.strip().splitlines()[-1][:120]} | | | | |")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            med = statistics.median(r["times"])
            best[config] = min(best.get(config, float("inf")), med)
            lines.append(f"| {config} | {path} | {r['meta_batch']} | {r['inner_steps']} | "
                         f"{med:.3f} ({min(r['times']):.3f}-{max(r['times']):.3f}) | "
                         f"{1000 * med / r['meta_batch']:.0f} | {r['peak_mb']:.0f} |")
    memory = ("peak allocated (CUDA)" if args.device.startswith("cuda")
              else "peak resident memory above the set-up baseline")
    lines += ["", f"Memory: {memory}.", ""]
    return lines, best


# ----------------------------------------------------------------------------- sine
def sine(args: argparse.Namespace) -> list[str]:
    work = args.work / f"sine-{time.strftime('%Y%m%d-%H%M%S')}"
    seconds = args.minutes * 60
    lstm_run = work / "meta-lstm"
    meta = train(common.CONFIGS / "sine-meta-lstm.yaml", lstm_run, seconds,
                 [f"device={args.device}", *args.overrides])
    if args.sine_maml:
        maml_run, maml_meta = Path(args.sine_maml), json.loads(
            (Path(args.sine_maml) / "meta.json").read_text())
    else:
        maml_run = work / "maml"
        maml_meta = train(common.CONFIGS / "sine-maml.yaml", maml_run, seconds,
                          [f"device={args.device}", *args.maml_overrides])
    steps = 10
    protocol = ["--tasks", str(args.tasks), "--steps", str(steps), "--shots", "10",
                "--queries", "100", "--seed", "20170301", "--checkpoint", "best"]
    mine = evaluate(lstm_run, *protocol)
    theirs = own(evaluate(maml_run, *protocol))
    lstm, ref = own(mine), reference(mine)
    shown = [0, 1, steps // 2, steps]
    lines = ["### Sinusoid regression, K = 10: meta-LSTM against MAML", "",
             f"{machine(args.device)}. Test: {args.tasks} tasks of the evaluation seed, 100 "
             "query points each, best.pt of each run.", "",
             f"- meta-LSTM (`configs/sine-meta-lstm.yaml`): {meta['iteration']} iterations in "
             f"{meta.get('train_seconds', 0):.0f} s (vectorize={common.vectorize_path(meta)}); "
             f"best.pt from iteration {lstm['checkpoint_iteration']}.",
             f"- MAML (`configs/sine-maml.yaml`): {maml_meta['iteration']} iterations in "
             f"{maml_meta.get('train_seconds', 0):.0f} s; best.pt from iteration "
             f"{theirs['checkpoint_iteration']}.", "",
             "| updates | meta-LSTM MSE | " + (f"{ref['name']} | " if ref else "")
             + "MAML (lr 0.01) MSE |", "| ---: | ---: | " + ("---: | " if ref else "") + "---: |"]
    for s in shown:
        cells = [cell(lstm["per_step"][s]["loss"])]
        if ref:
            cells.append(cell(ref["per_step"][s]["loss"]))
        cells.append(cell(theirs["per_step"][s]["loss"]))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if ref:
        tried = ", ".join(f"{t['lr']:g}: {t['loss']:.4g}" if t.get("loss") is not None else
                          f"{t['lr']:g}: diverged" for t in ref["reference"]["tried"])
        lines += ["", f"SGD reference's rate chosen on {ref['reference']['selected_on']} "
                      f"({ref['reference']['selected_by']}): {tried}."]
    return lines + [""]


# ----------------------------------------------------------------------------- omniglot
def omniglot(args: argparse.Namespace, per_iteration: dict[str, float]) -> list[str]:
    if not (args.omniglot_root / "images_background").is_dir():
        return ["### Omniglot 5-way 1-shot: not run", "",
                f"Omniglot not found at {args.omniglot_root} (--omniglot-root).", ""]
    work = args.work / f"omniglot-{time.strftime('%Y%m%d-%H%M%S')}"
    seconds = args.minutes * 60
    runs, metas = {}, {}
    for name, config, extra in (("meta-LSTM", "omniglot-5w1s-meta-lstm.yaml", args.overrides),
                                ("MAML", "omniglot-5w1s-maml.yaml", args.maml_overrides)):
        s_it = per_iteration.get(config)
        every = max(1, int(seconds / args.val_points / s_it)) if s_it else 100
        runs[name] = work / name.lower()
        metas[name] = train(common.CONFIGS / config, runs[name], seconds,
                            [f"task.root={args.omniglot_root}", f"train.val_every={every}",
                             f"train.val_tasks={args.val_tasks}", f"device={args.device}",
                             *extra])
    lines = ["### Omniglot 5-way 1-shot on this machine: meta-LSTM against MAML, same "
             "training time", "", f"{machine(args.device)}; {args.minutes:g} minutes of "
             f"training each (validation included), {args.val_tasks} validation tasks.", ""]
    for name, meta in metas.items():
        lines.append(f"- {name}: {meta['iteration']} iterations in "
                     f"{meta.get('train_seconds', 0):.0f} s (vectorize="
                     f"{common.vectorize_path(meta)}).")
    lines += ["", "Validation accuracy against training time:", "",
              "| algorithm | iteration | seconds | val accuracy % |",
              "| --- | ---: | ---: | ---: |"]
    for name, run in runs.items():
        val = [r for r in common.read_metrics(run) if "val_accuracy" in r]
        marks = val if len(val) <= 12 else [val[int(i * (len(val) - 1) / 11)] for i in range(12)]
        lines += [f"| {name} | {r['iteration']} | {r['time']:.0f} | "
                  f"{100 * r['val_accuracy']:.1f} |" for r in marks]
    lines += ["", f"Test: {args.tasks} tasks, best.pt of each run; accuracy % ± 95% CI after "
              "each run's own number of inner steps (its config's eval.steps).", "",
              "| protocol | meta-LSTM | SGD from the meta-LSTM's init | MAML |",
              "| --- | ---: | ---: | ---: |"]
    protocols = [("1 query per class, one batch (reference)", ["--queries", "1",
                                                               "--query-batch", "all"]),
                 ("15 queries per class, per-class batches", ["--queries", "15",
                                                              "--query-batch", "per_class"])]
    for label, extra in protocols:
        eval_args = ["--tasks", str(args.tasks), "--checkpoint", "best", "--seed", "20170301",
                     *extra]
        mine = evaluate(runs["meta-LSTM"], *eval_args)
        maml = own(evaluate(runs["MAML"], *eval_args))
        ref = reference(mine)
        label += (f" (steps: meta-LSTM {own(mine)['settings']['steps']}, MAML "
                  f"{maml['settings']['steps']})")
        lines.append(f"| {label} | {cell(own(mine)['per_step'][-1]['accuracy'], 100)} | "
                     + (f"{cell(ref['per_step'][-1]['accuracy'], 100)} (lr "
                        f"{ref['reference']['lr']:g}) | " if ref else "- | ")
                     + f"{cell(maml['per_step'][-1]['accuracy'], 100)} |")
    return lines + [""]


# ----------------------------------------------------------------------------- mini-ImageNet
def miniimagenet(args: argparse.Namespace) -> list[str]:
    lines = ["### mini-ImageNet 5-way 5-shot, meta-LSTM", "",
             "Anchors: the paper reports 43.44 ± 0.77% (1-shot) and 60.60 ± 0.71% (5-shot); "
             "the best public PyTorch reproduction reports about 58% (5-shot).", ""]
    root = args.miniimagenet_root
    if root is None or not (root / "images").is_dir():
        return lines + [f"Not run: no data at {root} (--miniimagenet-root).", ""]
    run = args.work / f"miniimagenet-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = train(common.CONFIGS / "miniimagenet-5w5s-meta-lstm.yaml", run, args.minutes * 60,
                 [f"task.root={root}", f"device={args.device}", *args.overrides])
    r = own(evaluate(run, "--tasks", str(args.tasks), "--checkpoint", "best"))
    return lines + [
        f"{machine(args.device)}: {meta['iteration']} of 50,000 episodes in "
        f"{meta.get('train_seconds', 0) / 60:.1f} min (vectorize={common.vectorize_path(meta)}); "
        f"best.pt from iteration {r['checkpoint_iteration']}: "
        f"{cell(r['per_step'][-1]['accuracy'], 100)}% on {args.tasks} test tasks "
        f"(15 queries per class, one batch) after {r['settings']['steps']} updates.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="training time of each run (sine, omniglot, miniimagenet)")
    ap.add_argument("--tasks", type=int, default=600, help="test tasks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--speed-iterations", type=int, default=5)
    ap.add_argument("--sine-maml", default=None, help="a trained sine-maml run to reuse")
    ap.add_argument("--omniglot-root", type=Path, default=common.OMNIGLOT)
    ap.add_argument("--miniimagenet-root", type=Path, default=None)
    ap.add_argument("--val-points", type=int, default=15)
    ap.add_argument("--val-tasks", type=int, default=100)
    common.add_set_option(ap, help="extra --set KEY=VALUE for the meta-LSTM runs")
    ap.add_argument("--maml-set", dest="maml_overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="extra --set KEY=VALUE for the MAML runs")
    ap.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench-meta-lstm")
    common.add_write_results_option(ap)
    ap.add_argument("--speed-one", nargs=2, metavar=("CONFIG", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.speed_one:
        print(json.dumps(speed_one(*args.speed_one, args.speed_iterations, args.device)))
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    lines = [f"## LSTM meta-learner, Ravi & Larochelle 2017 ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{common.command_line(__file__)}`", ""]
    per_iteration: dict[str, float] = {}
    if "speed" in parts:
        more, per_iteration = speed(args)
        lines += more
    if "sine" in parts:
        lines += sine(args)
    if "omniglot" in parts:
        lines += omniglot(args, per_iteration)
    if "miniimagenet" in parts:
        lines += miniimagenet(args)
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
