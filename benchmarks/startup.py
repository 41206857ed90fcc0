"""Seconds from ``fewshot train`` to its first training iteration, for this tree and another
commit: what a user waits before the loop starts (building, choosing the batching path and
the thread count, compiling).

Each version runs from its own ``src`` (``PYTHONPATH``; the other commit extracted with
``git archive``) with empty path, thread and ``torch.compile`` caches, and its decoded images cached
beforehand (decoding is not what is timed). The run logs every iteration; the
time is taken when ``metrics.jsonl`` gets its first row (iteration 1 done), and the run is
then stopped with SIGINT. Also reported: the lines the command printed before that.

    python benchmarks/startup.py --other efd1497 configs/omniglot-5w1s-maml-fast.yaml \\
        --set train.max_seconds=600
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def first_iteration(src: Path, config: Path, sets: list[str], tmp: Path, name: str,
                    images: Path, timeout: float) -> tuple[float, str]:
    """Seconds until iteration 1 is logged, and what the command printed by then."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(src), FEWSHOT_CACHE=str(tmp / f"cache-{name}"),
               TORCHINDUCTOR_CACHE_DIR=str(tmp / f"inductor-{name}"))
    decode = ("import sys; from fewshot_cli.config import load_config; "
              "from fewshot_cli.tasks import build; build(load_config(sys.argv[1], "
              "sys.argv[2:]).task)")
    subprocess.run([sys.executable, "-c", decode, str(config), *sets,
                    f"task.cache_dir={images}"], env=env, check=True, capture_output=True)
    run = tmp / f"run-{name}"
    log = (tmp / f"log-{name}").open("w+")
    args = [sys.executable, "-m", "fewshot_cli", "train", str(config), "--run-dir", str(run),
            "--no-progress", *common.set_flags([*sets, f"task.cache_dir={images}",
                                                "train.log_every=1"])]
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while time.perf_counter() - start < timeout:
            if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size:
                break
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"{name}: fewshot train ended first:\n{log.read()[-3000:]}")
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.seek(0)
    said = [line.strip() for line in log.read().splitlines() if line.strip()]
    return seconds, " / ".join(said[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--other", required=True, help="commit to compare against")
    common.add_set_option(parser)
    parser.add_argument("--root", type=Path, default=common.OMNIGLOT)
    parser.add_argument("--timeout", type=float, default=900)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    sets = common.with_omniglot_root(args.overrides, common.require_omniglot(args.root))
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = tmp / "images"
        for i, (label, src) in enumerate(common.versions(args.other, tmp).items()):
            seconds, said = first_iteration(src, args.config, sets, tmp, str(i), images,
                                            args.timeout)
            print(f"{label}: {seconds:.1f} s", flush=True)
            rows.append(f"| {label} | {seconds:.1f} | {said} |")
    text = "\n".join([
        f"Command: `{common.command_line(__file__)}` (OMP_NUM_THREADS unset; empty path, "
        "thread and compile caches; images decoded beforehand).", "",
        "| version | seconds to iteration 1 | printed before it |", "| --- | ---: | --- |",
        *rows])
    common.publish(text, args.write_results)


if __name__ == "__main__":
    main()
