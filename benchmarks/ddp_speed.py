"""Seconds per meta-iteration of one run split across processes, and the all-reduce's share.

Run it as one process or under ``torchrun``; every process builds the config, samples its
share of each meta-batch from its own stream and takes meta-steps exactly as the trainer
does (the engine's ``meta_update`` with its :class:`Sync`); nothing is written but one JSON
line on rank 0. Per iteration it times the whole step (between two barriers, so the slowest
rank sets it) and, inside it, the meta-gradient all-reduce (``Sync.gradients``) apart
from the wait for the slowest rank before it (a barrier put in front of it to measure).

    python benchmarks/ddp_speed.py configs/omniglot-5w1s-maml.yaml --iters 20
    torchrun --standalone --nproc-per-node 2 benchmarks/ddp_speed.py \\
        configs/omniglot-5w1s-maml.yaml --iters 20
    # on one GPU shared by two processes: --set train.dist_backend=gloo

Options: ``--set key=value`` (config overrides), ``--warmup N``, ``--path`` (batching path;
default: the config's, else ``fused`` where the algorithm has it, else ``vmap``),
``--tasks-per-rank`` (a list: time each per-rank share, ``meta_batch = share x world``).
The Omniglot root comes from ``FEWSHOT_OMNIGLOT`` or ``../shared/data/omniglot``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from common import OMNIGLOT, add_set_option, with_omniglot_root
from common import sync as sync_device

from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.config import load_config
from fewshot_cli.engine import distributed, runner, threads
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.engine.setup import build_experiment


def measure(config: str, overrides: list[str], tasks_per_rank: int | None, iters: int,
            warmup: int, path_arg: str | None) -> dict[str, Any]:
    cfg = load_config(config, overrides)
    sync, device = runner.join(cfg)
    if tasks_per_rank is not None:
        cfg.algorithm.meta_batch = tasks_per_rank * sync.world
    exp = build_experiment(cfg, device, sync)
    threads.apply(cfg.train.threads or max(1, (os.cpu_count() or 1)
                                           // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    paths = exp.algo.available_paths
    path = path_arg or (cfg.train.vectorize if cfg.train.vectorize in paths else
                        "fused" if "fused" in paths else "vmap")
    share = sync.split(cfg.algorithm.meta_batch)
    gen = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed, sync.rank))
    optimizer = exp.algo.configure_optimizer()
    reduce_s: list[float] = []
    wait_s: list[float] = []
    real = sync.gradients

    def timed_gradients(module: torch.nn.Module) -> None:
        """The wait for the slowest rank (a barrier), then the all-reduce alone."""
        sync_device(exp.device)
        t = time.perf_counter()
        if sync.active:
            dist.barrier()
        u = time.perf_counter()
        real(module)
        sync_device(exp.device)
        wait_s.append(u - t)
        reduce_s.append(time.perf_counter() - u)

    sync.gradients = timed_gradients  # type: ignore[method-assign]
    steps: list[float] = []
    for i in range(warmup + iters):
        batch = exp.source.sample(share, gen, "train").to(exp.device, exp.dtype)
        if sync.active:
            dist.barrier()
        sync_device(exp.device)
        t = time.perf_counter()
        meta_update(exp.algo, batch, path, TrainingProgress(i + 1, warmup + iters, False),
                    optimizer)
        sync_device(exp.device)
        if sync.active:
            dist.barrier()
        steps.append(time.perf_counter() - t)
    steps, reduces = steps[warmup:], reduce_s[warmup:] or [0.0]
    per_rank = sync.gather({"step": statistics.median(steps),
                            "reduce": statistics.median(reduces),
                            "wait": statistics.median(wait_s[warmup:] or [0.0])})
    params = sum(p.numel() for p in exp.algo.parameters() if p.requires_grad)
    return {"world": sync.world, "backend": distributed.backend(), "device": str(exp.device),
            "path": path, "meta_batch": cfg.algorithm.meta_batch, "tasks_per_rank": share,
            "threads": torch.get_num_threads(), "s_per_it": statistics.median(steps),
            "p10": sorted(steps)[len(steps) // 10], "p90": sorted(steps)[9 * len(steps) // 10],
            "allreduce_s": max(r["reduce"] for r in per_rank),
            "allreduce_share": max(r["reduce"] for r in per_rank) / statistics.median(steps),
            "wait_for_slowest_s": max(r["wait"] for r in per_rank),
            "allreduce_bytes": params * torch.finfo(exp.dtype).bits // 8,
            "meta_parameters": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    add_set_option(ap)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--path", default=None)
    ap.add_argument("--tasks-per-rank", default=None,
                    help="comma-separated per-rank shares to time, e.g. 32,16,8,4,2,1")
    args = ap.parse_args()
    overrides = list(args.overrides)
    if "omniglot" in Path(args.config).name:
        overrides = with_omniglot_root(overrides, OMNIGLOT)
    shares = ([int(s) for s in args.tasks_per_rank.split(",")] if args.tasks_per_rank
              else [None])
    for n in shares:
        row = measure(args.config, overrides, n, args.iters, args.warmup, args.path)
        row.update(config=args.config, overrides=overrides, torch=torch.__version__,
                   machine=platform.node(), date=time.strftime("%Y-%m-%d %H:%M"),
                   command=" ".join(sys.argv),
                   load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(row), flush=True)
    distributed.stop()


if __name__ == "__main__":
    main()
