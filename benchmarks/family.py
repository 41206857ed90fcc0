"""Every algorithm on the same budget: sine K = 10 and Omniglot 5-way 1-shot.

Each method is trained from its bundled config for the same wall-clock budget
(``train.max_seconds``; validation only at the stop, so it does not eat the budget),
evaluated on the same 600 test tasks with one protocol per task family, and the table
is produced by ``fewshot compare``. Two trainings run side by side, one intra-op thread
each (the machine has 2 cores), so every method trains on one core.

    python benchmarks/family.py [--sine-seconds 180] [--omniglot-seconds 300]
        [--parts sine,omniglot] [--methods maml,anil,...] [--root DIR] [--write-results]

Schedules that the configs anneal over ``train.iterations`` (Reptile's outer step,
MAML++'s multi-step-loss weights and cosine learning rate) are cut short by the budget,
as they would be for a user who stops a run early; the table says how many iterations
each method reached.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch
import yaml

#: method -> (config, algorithm-section changes) per task family.
SINE: dict[str, tuple[str, dict[str, Any]]] = {
    "maml": ("sine-maml.yaml", {}),
    "fomaml": ("sine-maml.yaml", {"first_order": True}),
    "metasgd": ("sine-metasgd.yaml", {}),
    "anil": ("sine-maml.yaml", {"kind": "anil", "first_order": None}),
    "reptile": ("sine-reptile.yaml", {}),
    "mamlpp": ("sine-maml.yaml", {"inner_steps": 5, "msl_iterations": 5000,
                                   "learned_inner_lrs": True, "cosine_meta_lr": True,
                                   "meta_lr_final": 1e-5}),
    "daml": ("sine-maml.yaml", {"kind": "daml", "loss_hidden": [40, 40], "loss_norm": "l2"}),
    "meta_lstm": ("sine-meta-lstm.yaml", {}),
}
OMNIGLOT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "maml": ("omniglot-5w1s-maml.yaml", {}),
    "fomaml": ("omniglot-5w1s-fomaml.yaml", {}),
    "metasgd": ("omniglot-5w1s-metasgd.yaml", {}),
    "anil": ("omniglot-5w1s-anil.yaml", {}),
    "reptile": ("omniglot-5w1s-reptile.yaml", {}),
    "mamlpp": ("omniglot-5w1s-mamlpp.yaml", {}),
    "daml": ("omniglot-5w1s-maml.yaml", {"kind": "daml", "hidden": "last",
                                          "loss_hidden": [64], "first_order": None}),
    "meta_lstm": ("omniglot-5w1s-meta-lstm.yaml", {}),
}
#: The one evaluation protocol of each family (fewshot eval options).
EVAL = {"sine": ["--queries", "100", "--steps", "1,10"],
        "omniglot": ["--queries", "1", "--query-batch", "all"]}


def config_file(family: str, method: str, tmp: Path) -> Path:
    """The method's config with its algorithm changes applied (a key set to None is
    removed), written to ``tmp``."""
    table = SINE if family == "sine" else OMNIGLOT_METHODS
    name, changes = table[method]
    data = yaml.safe_load((common.CONFIGS / name).read_text())
    algo = dict(data.get("algorithm") or {})
    for k, v in changes.items():
        if v is None:
            algo.pop(k, None)
        else:
            algo[k] = v
    data["algorithm"] = algo
    data["name"] = f"{family}-{method}"
    path = tmp / f"{family}-{method}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


#: Every ``fewshot`` process of this script runs on one intra-op thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_fewshot(*args: str) -> subprocess.Popen:
    """``fewshot ARGS`` in the background, its output collected."""
    return subprocess.Popen([sys.executable, "-m", "fewshot_cli", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train_all(jobs: list[tuple[str, Path, Path, float]], parallel: int) -> None:
    """Train ``(label, config, run_dir, seconds)`` jobs, ``parallel`` at a time."""
    running: list[tuple[str, subprocess.Popen]] = []
    queue = list(jobs)
    while queue or running:
        while queue and len(running) < parallel:
            label, cfg, run, seconds = queue.pop(0)
            sets = [f"train.max_seconds={seconds}", "train.val_every=100000000",
                    "train.checkpoint_every=100000000", "train.threads=1", "device=cpu"]
            if "omniglot" in label:
                sets.append(f"task.root={common.OMNIGLOT}")
            args = ["train", str(cfg), "--run-dir", str(run), "--no-progress",
                    *common.set_flags(sets)]
            print(f"training {label} for {seconds:g} s", flush=True)
            running.append((label, start_fewshot(*args)))
        time.sleep(2)
        for item in list(running):
            label, proc = item
            if proc.poll() is not None:
                output = proc.stdout.read() if proc.stdout else ""
                if proc.returncode != 0:
                    print(f"{label} failed:\n{output}", flush=True)
                running.remove(item)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="sine,omniglot")
    ap.add_argument("--methods", default=",".join(SINE))
    ap.add_argument("--sine-seconds", type=float, default=180.0)
    ap.add_argument("--omniglot-seconds", type=float, default=300.0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--omniglot-tasks", type=int, default=600,
                    help="Omniglot test tasks (the meta-LSTM's evaluation is slow on a CPU)")
    ap.add_argument("--root", help="keep the runs here (default: a temporary folder)")
    common.add_write_results_option(ap)
    args = ap.parse_args()
    parts = args.parts.split(",")
    methods = args.methods.split(",")
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = Path(args.root) if args.root else tmp / "runs"
        root.mkdir(parents=True, exist_ok=True)
        jobs = []
        for family in parts:
            seconds = args.sine_seconds if family == "sine" else args.omniglot_seconds
            for m in methods:
                jobs.append((f"{family}-{m}", config_file(family, m, tmp),
                             root / f"{family}-{m}", seconds))
        train_all(jobs, args.parallel)
        lines = [f"## Every algorithm on the same budget ({time.strftime('%Y-%m-%d')})", "",
                 f"Command: `{common.command_line(__file__)}`. Machine: "
                 f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
                 f"{args.parallel} trainings side by side, one thread each; "
                 f"{(time.time() - start) / 60:.0f} min in all.", ""]
        for family in parts:
            runs = [root / f"{family}-{m}" for m in methods
                    if (root / f"{family}-{m}" / "meta.json").exists()]
            tasks = "600" if family == "sine" else str(args.omniglot_tasks)
            for run in runs:
                common.fewshot("eval", str(run), "--checkpoint", "last", "--tasks", tasks,
                               *EVAL[family], env=ENV, cwd=None)
            seconds = args.sine_seconds if family == "sine" else args.omniglot_seconds
            table = common.fewshot("compare", *map(str, runs), "-o",
                                   str(tmp / f"{family}.png"), env=ENV, cwd=None)
            lines += [f"### {family}: {seconds:g} s of training per method", "",
                      f"Evaluation: `fewshot eval RUN --checkpoint last --tasks {tasks} "
                      f"{' '.join(EVAL[family])}`; the table is `fewshot compare`'s.", "",
                      "```", str(table).rstrip(), "```", ""]
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
