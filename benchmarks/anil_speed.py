"""Seconds per meta-iteration of ANIL against MAML on the Omniglot 5-way 1-shot shapes.

ANIL (Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature Reuse?") adapts the
head alone on body features computed once per task; MAML runs (and, second order,
differentiates twice through) the whole network at every inner step. This measures what
that saves. Both algorithms are built from their configs (``configs/omniglot-5w1s-maml.yaml``,
``configs/omniglot-5w1s-anil.yaml``: conv4 with 64 filters, stride 2, 28x28 images, meta-batch
32, 1 query per class), with the same initial weights, on one batch of random images (no data
set needed), for every inner-step count in ``--steps`` and batching path in ``--paths``.

One meta-iteration is the engine's ``meta_update`` (meta-loss, backward, Adam step) on an iteration
that is not logged. Every configuration runs in this one process and they alternate (the
order rotates every round), so a change in machine load hits all alike; each row reports
the median and range over ``--iterations`` rounds after one warm-up round, and ``others``
is the mean number of cores other processes kept busy meanwhile (from ``/proc/stat``;
above ~0.1 the numbers are contended).

    python benchmarks/anil_speed.py                         # steps 1 and 5, fused and vmap
    python benchmarks/anil_speed.py --iterations 20 --threads 1 --write-results
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from types import SimpleNamespace

import common
import torch
from conv4_speed import random_batch

from fewshot_cli import algorithms, models
from fewshot_cli.algorithms import Algorithm, TrainingProgress
from fewshot_cli.config import load_config, validate
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.tasks.base import TaskBatch, TaskShape

KINDS = {"maml": "omniglot-5w1s-maml.yaml", "anil": "omniglot-5w1s-anil.yaml"}


class Case:
    """One algorithm at one inner-step count along one path, with its own optimiser."""

    def __init__(self, kind: str, steps: int, path: str, args: argparse.Namespace) -> None:
        data = load_config(common.CONFIGS / KINDS[kind]).to_dict()
        data["algorithm"].update(inner_steps=steps, first_order=args.first_order)
        if args.meta_batch:
            data["algorithm"]["meta_batch"] = args.meta_batch
        if args.filters:
            data["model"]["filters"] = args.filters
        cfg = validate(data, KINDS[kind])
        t = cfg.task
        shape = TaskShape("classification", (1, t.image_size, t.image_size), t.ways)
        torch.manual_seed(args.seed)  # the same initial network for every case
        dtype = getattr(torch, args.dtype)
        self.algo: Algorithm = algorithms.build(cfg, models.build(cfg.model, shape), shape)
        self.algo.to(args.device, dtype)
        if path not in self.algo.available_paths:
            raise SystemExit(f"{kind} cannot run the {path} path "
                             f"(it has {', '.join(self.algo.available_paths)})")
        self.optimizer = self.algo.configure_optimizer()
        self.kind, self.steps, self.path, self.device = kind, steps, path, args.device
        self.meta_batch = cfg.algorithm.meta_batch
        self.batch: TaskBatch = random_batch(SimpleNamespace(
            seed=args.seed, channels=1, image_size=t.image_size, meta_batch=self.meta_batch,
            ways=t.ways, shots=t.shots, queries=t.queries), dtype, args.device)
        self.done = 0

    def step(self) -> tuple[float, float]:
        """One meta-iteration: wall seconds and the cores others kept busy meanwhile."""
        self.done += 1
        common.sync(self.device)
        b0, c0, t0 = common.busy_seconds(), time.process_time(), time.perf_counter()
        meta_update(self.algo, self.batch, self.path,
                    TrainingProgress(self.done, 10**6, logged=False),
                            self.optimizer)
        common.sync(self.device)
        wall, cpu, b1 = time.perf_counter() - t0, time.process_time() - c0, common.busy_seconds()
        return wall, common.others_busy_cores(b0, b1, cpu, wall)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="1,5", help="inner-step counts, comma-separated")
    p.add_argument("--paths", default="fused,vmap", help="batching paths, comma-separated")
    p.add_argument("--iterations", type=int, default=10, help="timed rounds")
    p.add_argument("--meta-batch", type=int, default=None, help="default: the configs' (32)")
    p.add_argument("--filters", type=int, default=None, help="default: the configs' (64)")
    p.add_argument("--first-order", action="store_true")
    common.add_threads_option(p)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    common.add_write_results_option(p)
    args = p.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    return args


def report(args: argparse.Namespace, cases: list[Case], times: dict[int, list[float]],
           others: list[float]) -> str:
    def cell(ts: list[float]) -> str:
        return f"{statistics.median(ts):.3f} ({min(ts):.3f}–{max(ts):.3f})"

    first = cases[0]
    lines = [
        "### ANIL against MAML: seconds per meta-iteration, Omniglot 5-way 1-shot shapes",
        "",
        f"`{common.command_line(__file__, args.argv)}`",
        "",
        f"conv4 from the configs ({first.algo.model.head.in_features} features), meta-batch "
        f"{first.meta_batch} of random 28x28 images, 1 support and 1 query image per class, "
        f"{'first' if args.first_order else 'second'} order, {args.dtype}; meta_update "
        f"(meta-loss, backward, Adam) on a non-logged iteration; {args.iterations} rounds "
        f"after one warm-up, all cases alternating in one process. {machine(args)}; other "
        f"processes kept {statistics.fmean(others):.2f} cores busy on average.",
        "",
        "| inner steps | path | MAML s/it, median (range) | ANIL s/it, median (range) "
        "| MAML / ANIL |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    by = {(c.kind, c.steps, c.path): i for i, c in enumerate(cases)}
    for steps in args.steps:
        for path in args.paths:
            m, a = times[by["maml", steps, path]], times[by["anil", steps, path]]
            lines.append(f"| {steps} | {path} | {cell(m)} | {cell(a)} | "
                         f"{statistics.median(m) / statistics.median(a):.2f}× |")
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    return f"{name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    cases = [Case(kind, steps, path, args) for steps in args.steps for path in args.paths
             for kind in KINDS]
    for case in cases:  # warm-up: first calls build kernels and caches
        case.step()
    times: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    others: list[float] = []
    order = list(range(len(cases)))
    for r in range(args.iterations):
        for i in common.rotated(order, r):
            wall, busy = cases[i].step()
            times[i].append(wall)
            if busy == busy:  # not NaN
                others.append(busy)
    common.publish(report(args, cases, times, others or [float("nan")]), args.write_results)


if __name__ == "__main__":
    main()
