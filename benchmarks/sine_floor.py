"""Sinusoid MAML meta-iteration floor: milliseconds per meta-update of configs/sine-maml.yaml
(MLP 1-40-40-1, 25 tasks, K = 10 + 10, one second-order inner step, Adam) by variant.

Variants, all timed in this one process on copies of one algorithm, alternating in
rounds (every variant once per round, the order rotated each round), after a warm-up
(the compilations happen there and are reported apart):

* the eager paths ``vmap`` (torch.func.vmap) and ``fused`` (the MLP's ``forward_tasks``,
  one ``baddbmm`` per layer over a task dimension); ``loop`` is ~15x slower and left out;
* ``fused-plainloss``: ``fused`` with the per-task MSE written out (no ``vmap`` of the
  loss; fewer autograd nodes per inner step), as an experiment;
* ``compiled``: the ``compiled`` path (one ``torch.compile``d meta-gradient); with
  ``--cpp-wrapper`` also ``compiled-cppwrap`` (inductor's C++ wrapper);
* ``+fusedadam`` variants: the same with ``torch.optim.Adam(fused=True)`` (the optimiser
  the config builds is the default for-loop Adam).

A meta-update is ``meta_update`` on a pre-sampled meta-batch (a ring of 16) with a
non-logged ``TrainingProgress``, as most training iterations are. Each cell is the median over
rounds of the per-round median. Prints a markdown table.

    python benchmarks/sine_floor.py                      # ~1-2 min after compilation
    python benchmarks/sine_floor.py --rounds 3 --iters 50   # quick look
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
from common import CONFIGS, rotated

from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import load_config
from fewshot_cli.engine import compiled
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.engine.setup import build_experiment

CONFIG = CONFIGS / "sine-maml.yaml"


class PlainLossMAML(MAML):
    """MAML whose fused per-task loss is written out instead of mapped with ``vmap``."""

    def per_task(self, fn, out, y, ctx):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        if ctx.fused and fn.__name__ == "mse":
            return (out - y).pow(2).flatten(1).mean(1)
        return super().per_task(fn, out, y, ctx)


def make_variants(algo: MAML, cpp_wrapper: bool
                  ) -> dict[str, Callable[[object, TrainingProgress], None]]:
    """Variant name -> one meta-update on a batch, each with its own algorithm copy."""
    variants: dict[str, Callable[[object, TrainingProgress], None]] = {}

    def add(name: str, path: str, base: MAML, fused_adam: bool = False,
            before: Callable[[], None] | None = None) -> None:
        a = copy.deepcopy(base)
        opt = (torch.optim.Adam(a.parameters(), lr=a.cfg.meta_lr, fused=True) if fused_adam
               else a.configure_optimizer())

        def step(batch: object, progress: TrainingProgress) -> None:
            if before is not None:
                before()
            meta_update(a, batch, path, progress, opt)  # type: ignore[arg-type]
        variants[name] = step

    plain = copy.deepcopy(algo)
    plain.__class__ = PlainLossMAML
    add("vmap", "vmap", algo)
    add("fused", "fused", algo)
    add("fused-plainloss", "fused", plain)
    default_fn = compiled._compiled

    def use_default() -> None:
        compiled._compiled = default_fn

    add("compiled", "compiled", algo, before=use_default)
    add("compiled+fusedadam", "compiled", algo, fused_adam=True, before=use_default)
    if cpp_wrapper:
        fn = torch.compile(torch.func.grad_and_value(compiled._objective, argnums=1,
                                                     has_aux=True),
                           fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
        add("compiled-cppwrap", "compiled", algo,
            before=lambda: setattr(compiled, "_compiled", lambda graphs: fn))
    return variants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=200, help="meta-updates per variant per round")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpp-wrapper", action="store_true",
                    help="also time inductor's C++ wrapper (one more compilation)")
    args = ap.parse_args()

    cfg = load_config(CONFIG, ["device=cpu"])
    exp = build_experiment(cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batches = [exp.source.sample(cfg.algorithm.meta_batch, gen, "train") for _ in range(16)]
    progress = TrainingProgress(2, cfg.train.iterations, logged=False)
    variants = make_variants(exp.algo, args.cpp_wrapper)  # type: ignore[arg-type]

    torch.set_num_threads(min(args.threads))
    first: dict[str, float] = {}
    for name, step in variants.items():  # warm-up: the compilations happen here
        t = time.perf_counter()
        step(batches[0], progress)
        first[name] = time.perf_counter() - t
        for b in batches:
            step(b, progress)

    per_round: dict[tuple[int, str], list[float]] = {}
    names = list(variants)
    for r in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name in rotated(names, r):
                step = variants[name]
                for b in batches[:4]:
                    step(b, progress)
                times = []
                for i in range(args.iters):
                    t = time.perf_counter()
                    step(batches[i % len(batches)], progress)
                    times.append(time.perf_counter() - t)
                per_round.setdefault((threads, name), []).append(statistics.median(times))

    print(f"# Sinusoid MAML meta-update floor ({platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.rounds} rounds x {args.iters} updates)\n")
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''} ms (min-max)" for t in args.threads)
    print(f"| variant | {head} | first call s |")
    print("|---|" + "---|" * len(args.threads) + "---|")
    for name in names:
        cells = []
        for t in args.threads:
            rounds = [x * 1e3 for x in per_round[(t, name)]]
            cells.append(f"{statistics.median(rounds):.3f} ({min(rounds):.3f}-{max(rounds):.3f})")
        print(f"| {name} | {' | '.join(cells)} | {first[name]:.2f} |")


if __name__ == "__main__":
    main()
