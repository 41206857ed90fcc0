"""Cost of drawing one meta-batch of image tasks and handing it to the training device,
with the decoded images on the CPU (gathered there, then copied) and, on a GPU, with
``task.images_on_device`` (only the drawn indices are copied; the batch is built on the
GPU). Checks that both give the same tasks.

    python benchmarks/task_sampling.py [CONFIG] [--device cuda] [--iters 200] [--set K=V ...]

Default config: configs/omniglot-5w1s-maml-fast.yaml (meta-batch 32, 15 queries per class).
Prints one JSON line per placement: median ms per meta-batch (p10-p90), bytes copied.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import CONFIGS, OMNIGLOT, ROOT, add_set_option, sync

sys.path.insert(0, str(ROOT / "src"))

from fewshot_cli import tasks  # noqa: E402
from fewshot_cli.config import apply_overrides, load_config, validate  # noqa: E402


def timed(source, n: int, device: torch.device, iters: int) -> tuple[list[float], object]:
    gen = torch.Generator().manual_seed(0)
    times, batch = [], None
    for i in range(iters + 5):
        sync(device)
        start = time.perf_counter()
        batch = source.sample(n, gen, "train").to(device, torch.float32)
        sync(device)
        if i >= 5:
            times.append(1e3 * (time.perf_counter() - start))
    return times, batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(CONFIGS / "omniglot-5w1s-maml-fast.yaml"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=200)
    add_set_option(ap)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    cfg = load_config(Path(args.config))
    data = cfg.to_dict()
    if cfg.task.kind == "omniglot" and OMNIGLOT.is_dir():
        data["task"]["root"] = str(OMNIGLOT)
    cfg = validate(apply_overrides(data, args.overrides), args.config, args.overrides)
    device = torch.device(args.device)
    n = cfg.algorithm.meta_batch
    placements = [("cpu images", False)] + ([("images on device", True)]
                                            if device.type != "cpu" else [])
    batches = {}
    for name, placed in placements:
        source = tasks.build(cfg.task)
        if placed:
            source.place(device)
        times, batch = timed(source, n, device, args.iters)
        batches[name] = batch
        q = statistics.quantiles(times, n=10)
        copied = (0 if device.type == "cpu" else batch.support_x.nbytes + batch.query_x.nbytes
                  if not placed else (batch.support_x.shape[1] + batch.query_x.shape[1]) * n * 8)
        print(json.dumps({"placement": name, "device": str(device), "meta_batch": n,
                          "queries": cfg.task.queries,
                          "ms_median": round(statistics.median(times), 3),
                          "ms_p10": round(q[0], 3), "ms_p90": round(q[-1], 3),
                          "bytes_to_device": copied}))
    if len(batches) == 2:
        a, b = batches.values()
        same = all(torch.equal(x, y) for x, y in ((a.support_x, b.support_x),
                                                  (a.query_x, b.query_x),
                                                  (a.query_y, b.query_y)))
        print(json.dumps({"same_tasks": same}))
        if not same:
            raise SystemExit("images on device drew other tasks than images on the CPU")


if __name__ == "__main__":
    main()
