"""The main job on an idle and on a busy machine: the measured thread choice
against torch's default thread count.

Runs ``fewshot train configs/sine-maml.yaml`` (short, no validation) in
alternating rounds: with the automatic choice (``train.threads`` unset, run
with OMP_NUM_THREADS unset so torch's default is the alternative it weighs)
and with ``--threads`` = torch's default, each alone and beside one
CPU-bound process (a Python busy loop). Reports iterations per second (median
of the log windows after the first) and the thread count each run used.

Usage: ``python benchmarks/threads_busy.py [--rounds 2] [--iterations 600]
[--write-results]``. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CONFIGS, add_write_results_option, publish, window_rates

CONFIG = CONFIGS / "sine-maml.yaml"


def run_once(tmp: Path, name: str, iterations: int, threads: int | None, busy: bool
             ) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["FEWSHOT_CACHE"] = str(tmp / "cache")
    run = tmp / name
    args = [sys.executable, "-m", "fewshot_cli", "train", str(CONFIG), "--run-dir", str(run),
            "--no-progress", "--set", f"train.iterations={iterations}", "--set",
            "train.log_every=100", "--set", "train.val_every=1000000", "--set",
            "train.val_tasks=5", "--set", "train.vectorize=vmap"]
    if threads is not None:
        args += ["--threads", str(threads)]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        subprocess.run(args, env=env, check=True, capture_output=True, timeout=1800)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    used = json.loads((run / "meta.json").read_text())["threads"]
    return statistics.median(window_rates(run)), used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=600)
    add_write_results_option(ap)
    args = ap.parse_args()
    default = torch.get_num_threads()  # this process was started without OMP_NUM_THREADS?
    if "OMP_NUM_THREADS" in os.environ:
        default = os.cpu_count() or default
    cases = [("auto", None), (f"{default} threads (torch default)", default)]
    results: dict[tuple[str, bool], list[float]] = {}
    used: dict[tuple[str, bool], int] = {}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = cases if r % 2 == 0 else cases[::-1]
            for busy in (False, True):
                for label, threads in order:
                    rate, n = run_once(Path(tmp), f"r{r}-{busy}-{threads}", args.iterations,
                                       threads, busy)
                    results.setdefault((label, busy), []).append(rate)
                    used[(label, busy)] = n
                    print(f"round {r + 1}: {label:28s} {'busy' if busy else 'idle'}: "
                          f"{rate:7.1f} it/s ({n} thread(s))", flush=True)
    lines = [f"## Threads on a busy machine: sine-maml ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/threads_busy.py --rounds {args.rounds} "
             f"--iterations {args.iterations}` on {platform.machine()}, {os.cpu_count()} cores "
             f"(OMP_NUM_THREADS unset; busy = one `while True: pass` process beside the run; "
             f"{time.time() - start:.0f} s in all). Iterations per second, median of the log "
             "windows after the first, median over rounds:", "",
             "| threads | used | idle it/s | busy it/s | busy / idle |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for label, _ in cases:
        idle = statistics.median(results[(label, False)])
        busy = statistics.median(results[(label, True)])
        lines.append(f"| {label} | {used[(label, True)]} | {idle:.0f} | {busy:.0f} | "
                     f"{busy / idle:.2f} |")
    publish("\n".join(lines) + "\n", args.write_results)


if __name__ == "__main__":
    main()
