"""Checkpoint selection: does ``best.pt`` beat ``last.pt`` on the test set?

Trains a config once, keeping a checkpoint at every validation
(``train.keep_checkpoints``), then scores on the test set (the evaluation
seed, ``--tasks`` tasks) the checkpoint each selection rule would pick:

- ``mean``: the old rule, the lowest mean validation loss of the tasks that
  did not diverge;
- ``median``: the new rule, the lowest median validation loss with diverged
  tasks counted as infinitely bad;
- ``last``: the final checkpoint.

Usage: ``python benchmarks/selection.py [--config configs/sine-maml.yaml]
[--shots 5,10,20] [--steps 1,10] [--set KEY=VALUE ...] [--write-results]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch

sys.path.insert(0, str(common.ROOT / "src"))

from fewshot_cli.engine import checkpoint  # noqa: E402
from fewshot_cli.engine.evaluator import divergence_summary, load_experiment  # noqa: E402
from fewshot_cli.rundir import RunDir  # noqa: E402


def train(config: str, run: Path, sets: list[str], every: int) -> None:
    args = [sys.executable, "-m", "fewshot_cli", "train", config, "--run-dir", str(run),
            "--no-progress", *common.set_flags([f"train.val_every={every}",
                                                f"train.checkpoint_every={every}",
                                                "train.keep_checkpoints=100000", *sets])]
    subprocess.run(args, check=True)


def pick(rows: list[dict], key: str) -> int:
    vals = [(r[key], r["iteration"]) for r in rows
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return min(vals)[1]


def score(run: RunDir, iteration: int | None, shots: list[int], steps: list[int],
          tasks: int, device: str = "cpu") -> dict[int, list[tuple[float, float]]]:
    """{K: [(mean, ci95) at each of ``steps``]} for one checkpoint."""
    exp, _ = load_experiment(run, "last", device=device)
    if iteration is not None:
        path = run.checkpoint_dir / f"iter-{iteration:07d}.pt"
        exp.algo.load_state_dict(checkpoint.load(path, map_location=exp.device)["algorithm"])
    out = {}
    for k in shots:
        gen = torch.Generator().manual_seed(exp.cfg.eval.seed)
        curves, left = [], tasks
        while left:
            n = min(left, 100)
            batch = exp.source.sample(n, gen, "test", shots=k,
                                      queries=exp.cfg.eval.queries or exp.cfg.task.queries
                                      ).to(exp.device)
            curves.append(exp.algo.adaptation_curve(batch, max(steps), "vmap"))
            left -= n
        rows = divergence_summary(torch.cat(curves))
        metric = "accuracy" if "accuracy" in rows[0] else "loss"
        scale = 100.0 if metric == "accuracy" else 1.0
        out[k] = [(scale * rows[s][metric]["mean"], scale * rows[s][metric]["ci95"])
                  for s in steps]
    return out


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(common.CONFIGS / "sine-maml.yaml"))
    common.add_set_option(ap, dest="sets")
    ap.add_argument("--every", type=int, default=1000, help="validation/checkpoint cadence")
    ap.add_argument("--shots", default="5,10,20")
    ap.add_argument("--steps", default="1,10")
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--run", help="reuse this run directory instead of training")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for training and scoring")
    ap.add_argument("--out", help="also write the table to this file")
    common.add_write_results_option(ap)
    args = ap.parse_args()
    shots = [int(x) for x in args.shots.split(",")]
    steps = [int(x) for x in args.steps.split(",")]
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.run) if args.run else Path(tmp) / "run"
        if not args.run:
            train(args.config, path, [f"device={args.device}", *args.sets], args.every)
        run = RunDir(path)
        rows = [r for r in run.read_metrics() if "val_loss" in r]
        picks = {"mean (old rule)": pick(rows, "val_loss"),
                 "median (new rule)": pick(rows, "val_loss_median"),
                 "last": None}
        last_it = max(r["iteration"] for r in rows)
        results = {name: score(run, it, shots, steps, args.tasks, args.device)
                   for name, it in picks.items()}
    lines = [
        f"## Checkpoint selection: {Path(args.config).name} ({time.strftime('%Y-%m-%d')})", "",
        f"Command: `{common.omp_prefix()}{common.command_line(__file__)}` (validation and a kept "
        f"checkpoint every {args.every} iterations; test set: {args.tasks} tasks of the "
        "evaluation seed; loss, or for classification accuracy "
        "in %, mean ± 95% CI). Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, device {device_name(args.device)}; "
        f"{time.time() - start:.0f} s.", "",
        "| rule | iteration | " + " | ".join(f"K={k}, {s} step(s)" for k in shots for s in steps)
        + " |", "| --- | ---: | " + " | ".join("---:" for _ in shots for _ in steps) + " |",
    ]
    for name, it in picks.items():
        cells = [f"{m:.4f} ± {c:.4f}" for k in shots for (m, c) in results[name][k]]
        lines.append(f"| {name} | {it if it is not None else last_it} | " + " | ".join(cells)
                     + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({k: v for k, v in picks.items()}))
    if args.out:
        Path(args.out).write_text(text)
    if args.write_results:
        common.append(text)


if __name__ == "__main__":
    main()
