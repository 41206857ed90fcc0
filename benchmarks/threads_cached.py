"""A thread choice cached on a quiet machine, used beside a busy process: the automatic
choice against ``--threads 1``, for this tree and another commit.

The cache is left as a quiet machine leaves it when two threads measured faster than
one by more than the margin (``{"1": 1.0, "2": 0.7}`` under the run's own cache key,
written by the version under test). Then ``fewshot train configs/sine-maml.yaml`` runs
beside one CPU-bound process (a Python busy loop), with the automatic choice and with
``--threads 1``, alternating, ``--rounds`` times, each version run from its own
``src`` (``PYTHONPATH``; the other commit extracted with ``git archive``).

Reported per version: seconds of training (meta.json ``train_seconds``) and the threads
used, median over rounds, and the ratio auto / one thread (the target: at most 1.3).

    python benchmarks/threads_cached.py --other efd1497
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

CONFIG = common.CONFIGS / "sine-maml.yaml"
SEED_CACHE = """
import json, sys, torch
from pathlib import Path
from fewshot_cli.config import load_config
from fewshot_cli.engine import vectorize
from fewshot_cli.engine.setup import build_experiment
cfg = load_config(sys.argv[1], sys.argv[3:])
torch.set_num_threads(1)  # the count the key is computed under when a run chooses
exp = build_experiment(cfg, torch.device("cpu"))
key = json.dumps([vectorize.cache_key(exp), "vmap", [1, 2]])
Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
(Path(sys.argv[2]) / "threads.json").write_text(json.dumps({key: {"1": 1.0, "2": 0.7}}))
"""


def run(src: Path, cache: Path, out: Path, sets: list[str], threads: int | None
        ) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(src), FEWSHOT_CACHE=str(cache))
    args = [sys.executable, "-m", "fewshot_cli", "train", str(CONFIG), "--run-dir", str(out),
            "--no-progress", *common.set_flags(sets)]
    if threads is not None:
        args += ["--threads", str(threads)]
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=1800)
    meta = json.loads((out / "meta.json").read_text())
    return float(meta["train_seconds"]), int(meta["threads"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1000)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    sets = [f"train.iterations={args.iterations}", "train.val_every=1000000",
            "train.val_tasks=5", "train.vectorize=vmap", "device=cpu"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, src in common.versions(args.other, tmp).items():
            seconds: dict[str, list[float]] = {"auto": [], "1": []}
            used: dict[str, int] = {}
            for r in range(args.rounds):
                for mode in (("auto", "1") if r % 2 == 0 else ("1", "auto")):
                    cache = tmp / f"cache-{len(rows)}-{r}-{mode}"
                    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
                    subprocess.run([sys.executable, "-c", SEED_CACHE, str(CONFIG), str(cache),
                                    *sets], env={**env, "PYTHONPATH": str(src)}, check=True)
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    try:
                        s, n = run(src, cache, tmp / f"run-{len(rows)}-{r}-{mode}", sets,
                                   None if mode == "auto" else 1)
                    finally:
                        hog.kill()
                        hog.wait()
                    seconds[mode].append(s)
                    used[mode] = n
                    print(f"{label}: round {r + 1}, {mode:4s}: {s:.2f} s ({n} thread(s))",
                          flush=True)
            auto, one = (statistics.median(seconds[m]) for m in ("auto", "1"))
            rows.append(f"| {label} | {used['auto']} | {auto:.2f} | {one:.2f} | "
                        f"{auto / one:.2f} |")
    text = "\n".join([
        f"Command: `{common.command_line(__file__)}` (OMP_NUM_THREADS unset; one busy loop "
        f"beside each run; {args.iterations} iterations of sine-maml.yaml on vmap; cache "
        "seeded with two threads 1.43x faster than one). Seconds of training, median of "
        f"{args.rounds} rounds:", "",
        "| version | threads used (auto) | auto s | --threads 1 s | auto / one |",
        "| --- | ---: | ---: | ---: | ---: |", *rows])
    common.publish(text, args.write_results)


if __name__ == "__main__":
    main()
