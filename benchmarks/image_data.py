"""Omniglot loading and episodic sampling speed.

Measures building the Omniglot task source (maml split, 28x28, rotations) with an
empty cache folder (decode + resize + save) and again with the cache filled,
then the time to draw one meta-batch of tasks: 5-way 1-shot with meta-batch 32
and 20-way 5-shot with meta-batch 16 (one query per shot, as the MAML reference
code draws them). Prints a markdown table.

    python benchmarks/image_data.py [--root PATH] [--threads N] [--batches 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import OMNIGLOT, add_threads_option, require_omniglot, set_threads

from fewshot_cli.config import OmniglotTask
from fewshot_cli.tasks import omniglot


def timed(fn, repeat: int = 1) -> tuple[float, object]:  # noqa: ANN001
    """Median wall time of ``fn()`` over ``repeat`` calls, and its last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=OMNIGLOT, help="Omniglot folder")
    add_threads_option(ap)
    ap.add_argument("--batches", type=int, default=300, help="meta-batches timed per setting")
    args = ap.parse_args()
    set_threads(args.threads)
    require_omniglot(args.root)

    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as cache:
        cfg = OmniglotTask(root=str(args.root), cache_dir=cache)
        first, src = timed(lambda: omniglot.build(cfg))
        cached, src = timed(lambda: omniglot.build(cfg), repeat=3)
        size = sum(f.stat().st_size for f in Path(cache).glob("*.pt")) / 2**20
    rows.append(("Omniglot first load (decode 32,460 PNGs + resize + save cache)",
                 f"{first:.2f} s"))
    rows.append(("Omniglot cached load (median of 3)", f"{cached:.2f} s"))
    rows.append(("cache file size", f"{size:.1f} MiB"))

    for ways, shots, meta_batch in ((5, 1, 32), (20, 5, 16)):
        task = omniglot.build(cfg.model_copy(update={"ways": ways, "shots": shots,
                                                     "queries": shots}))
        g = torch.Generator().manual_seed(0)
        for _ in range(20):  # warm-up
            task.sample(meta_batch, g)
        times = []
        for _ in range(args.batches):
            t0 = time.perf_counter()
            task.sample(meta_batch, g)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times) * 1e3
        mean = statistics.fmean(times) * 1e3
        rows.append((
            f"sample {ways}-way {shots}-shot ({shots} query), meta-batch {meta_batch}",
            f"{med:.2f} ms median, {mean:.2f} ms mean ({med / meta_batch * 1e3:.0f} us/task)",
        ))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; {src.summary()}\n")
    print("| measurement | value |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
