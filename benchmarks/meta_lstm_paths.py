"""Seconds per training episode of the LSTM meta-learner on each batching path, the
``compiled`` one included (its compilation timed apart), in one process: the paths take
turns, round after round, and each path's median is reported. Random images of the
config's shape, or the sinusoid task source (no data set needed).

    python benchmarks/meta_lstm_paths.py --threads 1 --config omniglot-5w1s-meta-lstm
    python benchmarks/meta_lstm_paths.py --threads 1 --config sine-meta-lstm
    python benchmarks/meta_lstm_paths.py --threads 1 --meta-batch 1,4 --paths fused

``--meta-batch`` times episodes in meta-batches of those sizes instead of the config's
(seconds per episode, so that the sizes can be set against each other).
"""

from __future__ import annotations

import argparse
import statistics
import time

import common
from meta_lstm_eval import build, drawer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="omniglot-5w1s-meta-lstm")
    parser.add_argument("--paths", default="fused,vmap,loop,compiled")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--meta-batch", default=None,
                        help="meta-batch sizes to time, comma-separated (default: the config's)")
    common.add_threads_option(parser, default=1)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    import torch

    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.engine.meta_update import meta_update

    cfg, shape, algo = build(args.config)
    gen = torch.Generator().manual_seed(0)
    sizes = ([int(x) for x in args.meta_batch.split(",")] if args.meta_batch
             else [cfg.algorithm.meta_batch])
    batches = {b: drawer(cfg, shape, gen)(b, cfg.task.queries) for b in sizes}
    cases = [(p, b) for p in args.paths.split(",") if p in algo.available_paths for b in sizes]
    opt = algo.configure_optimizer()
    first: dict[tuple[str, int], float] = {}
    for path, b in cases:  # the first call of each (the compilation, for compiled)
        start = time.perf_counter()
        meta_update(algo, batches[b], path, TrainingProgress(1, 10, False), opt)
        first[path, b] = time.perf_counter() - start
    times: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for path, b in common.rotated(cases, r):
            start = time.perf_counter()
            meta_update(algo, batches[b], path, TrainingProgress(r + 2, 10, False), opt)
            times[path, b].append((time.perf_counter() - start) / b)
    best = min(statistics.median(v) for v in times.values())
    lines = [f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
             f"`{args.config}` ({sum(p.numel() for p in algo.model.parameters()):,} learner "
             f"coordinates, T = {cfg.algorithm.inner_steps} updates); {args.rounds} rounds, "
             "the cases in turn.", "",
             "| path | meta-batch | seconds per episode (median) | against the fastest "
             "| first call |", "| --- | ---: | ---: | ---: | ---: |"]
    for path, b in cases:
        median = statistics.median(times[path, b])
        lines.append(f"| {path} | {b} | {median:.4f} | {median / best:.2f}x | "
                     f"{first[path, b]:.1f} s |")
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
