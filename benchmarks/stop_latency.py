"""How long after SIGTERM does a run stop: during training iterations, a validation, the
final validation and ``fewshot eval``, for the Omniglot 5-way 1-shot MAML and meta-LSTM
configs on real Omniglot. Each moment is reached by watching the run directory (a metrics
row, then the time of an iteration and a second), then SIGTERM is sent and the seconds to
the process's exit are measured.

    python benchmarks/stop_latency.py [--configs omniglot-5w1s-maml,omniglot-5w1s-meta-lstm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
#: Test tasks of the ``fewshot eval`` that is stopped.
EVAL_TASKS = 6000


def launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fewshot_cli", *args], cwd=common.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV)


def wait_rows(run: Path, n: int, proc: subprocess.Popen, timeout: float = 900) -> list[dict]:
    """Wait until ``metrics.jsonl`` has ``n`` rows; return them."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before the moment was reached:\n"
                             f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        path = run / "metrics.jsonl"
        rows = ([json.loads(x) for x in path.read_text().splitlines()]
                if path.exists() else [])
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise SystemExit(f"{run}: {n} metrics rows never appeared")


def stop(proc: subprocess.Popen) -> tuple[float, int, str]:
    """SIGTERM; the seconds until the process exited, its status and what it said it did
    (its ``interrupted ...`` line)."""
    if proc.poll() is not None:  # the moment was missed: nothing to measure
        raise SystemExit(f"{proc.args[3]} {proc.args[4]} ended before the signal was sent")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=900)
    lines = [x for x in err.strip().splitlines() if x.startswith("interrupted")]
    return time.monotonic() - sent, proc.returncode, (lines or ["(nothing said)"])[-1]


def measure(config: str, root: Path, tmp: Path) -> list[tuple[str, float, int, str]]:
    base = [f"task.root={root}", "train.log_every=1", "train.vectorize=fused"]
    cfg = str(common.CONFIGS / f"{config}.yaml")
    out = []

    def sets(extra: list[str]) -> list[str]:
        return common.set_flags(base + extra) + ["--threads", "1", "--no-progress"]

    # training iterations, no validation due
    run = tmp / f"{config}-train"
    p = launch(["train", cfg, "--run-dir", str(run), *sets(["train.val_every=100000"])])
    rows = wait_rows(run, 2, p)
    time.sleep(min(rows[1]["time"] - rows[0]["time"], 5) * 0.5)
    latency, code, said = stop(p)
    out.append(("a training iteration", latency, code, said))
    # a validation (val_every 2: it starts after iteration 2's update)
    run = tmp / f"{config}-val"
    p = launch(["train", cfg, "--run-dir", str(run), *sets(["train.val_every=2"])])
    rows = wait_rows(run, 1, p)
    time.sleep(rows[0]["time"] + 1.0)
    latency, code, said = stop(p)
    out.append(("a validation (val_tasks 200)", latency, code, said))
    # the final validation, of the run kept for eval
    run = tmp / f"{config}-final"
    p = launch(["train", cfg, "--run-dir", str(run), *sets(["train.iterations=2",
                                                            "train.val_every=100000"])])
    rows = wait_rows(run, 1, p)
    time.sleep(rows[0]["time"] + 1.0)
    latency, code, said = stop(p)
    out.append(("the final validation", latency, code, said))
    # fewshot eval on that run's last.pt, of more tasks than the 12 s before the signal
    # can finish (MAML's 600 can, on a fast core)
    p = launch(["eval", str(run), "--no-progress", "--tasks", str(EVAL_TASKS)])
    time.sleep(12.0)
    latency, code, said = stop(p)
    out.append((f"fewshot eval ({EVAL_TASKS} tasks)", latency, code, said))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="omniglot-5w1s-maml,omniglot-5w1s-meta-lstm")
    parser.add_argument("--root", type=Path, default=common.OMNIGLOT)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    root = common.require_omniglot(args.root)
    tmp = Path(tempfile.mkdtemp(prefix="stop-latency-"))
    lines = [f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}; one "
             "thread per process, SIGTERM at each moment, seconds until the process exited.",
             "", "| config | moment | seconds to exit | exit status | last line |",
             "| --- | --- | ---: | ---: | --- |"]
    try:
        for config in args.configs.split(","):
            for moment, latency, code, last in measure(config, root, tmp):
                lines.append(f"| {config} | {moment} | {latency:.2f} | {code} | {last} |")
                print(lines[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
