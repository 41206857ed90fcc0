"""Wall time of a sweep over seeds with the default ``--jobs`` against ``--jobs 1`` (the
members one after another), same code, alternating which goes first in each round.

Each case is the whole command, ``fewshot train CONFIG --seeds ... --no-progress`` into a
fresh sweep directory; the members' own training seconds (meta.json) are reported too.
The load other processes put on the machine during each case is measured from
``/proc/stat`` (a timing is contended above ~0.1 busy cores).

    python benchmarks/sweep_speed.py configs/sine-maml.yaml --seeds 0,1,2,3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def one(config: Path, seeds: str, jobs: str | None, sets: list[str], target: Path
        ) -> dict[str, float]:
    """Run the sweep; its wall time, the members' summed training time and the load."""
    args = [sys.executable, "-m", "fewshot_cli", "train", str(config), "--seeds", seeds,
            "--run-dir", str(target), "--no-progress", *common.set_flags(sets)]
    if jobs is not None:
        args += ["--jobs", jobs]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, start = common.busy_seconds(), time.perf_counter()
    p = subprocess.run(args, cwd=common.ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    busy1 = common.busy_seconds()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"sweep failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    train = 0.0
    threads = set()
    for member in json.loads((target / "sweep.json").read_text())["members"]:
        meta = json.loads((target / member["name"] / "meta.json").read_text())
        train += meta.get("train_seconds") or 0.0
        threads.add(meta["vectorize"]["threads"]["threads"])
    return {"wall": wall, "train": train, "others": common.others_busy_cores(
        busy0, busy1, cpu, wall), "threads": float(max(threads))}


def torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--rounds", type=int, default=2)
    common.add_set_option(parser)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    cases = {"default --jobs": None, "--jobs 1": "1"}
    rows, times = [], {k: [] for k in cases}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for r in range(args.rounds):
            for label in common.rotated(list(cases), r):
                target = tmp / f"sweep-{r}-{cases[label] or 'default'}"
                got = one(args.config, args.seeds, cases[label], args.overrides, target)
                shutil.rmtree(target)
                times[label].append(got["wall"])
                print(f"round {r + 1}, {label}: {got['wall']:.1f} s", flush=True)
                rows.append(f"| {r + 1} | {label} | {got['wall']:.1f} | {got['train']:.1f} | "
                            f"{int(got['threads'])} | {got['others']:.2f} |")
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    text = "\n".join([
        f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, torch {torch_version()}.", "",
        "| round | case | wall s | members' training s (sum) | threads per member | "
        "others' busy cores |", "| ---: | --- | ---: | ---: | ---: | ---: |", *rows, "",
        f"Mean wall time: default --jobs {mean['default --jobs']:.1f} s, --jobs 1 "
        f"{mean['--jobs 1']:.1f} s: {mean['--jobs 1'] / mean['default --jobs']:.2f}x."])
    common.publish(text, args.write_results)


if __name__ == "__main__":
    main()
