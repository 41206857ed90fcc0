"""Seconds per training episode of the LSTM meta-learner on each batching path, the
``compiled`` one included (its compilation timed apart), in one process: the paths take
turns, round after round, and each path's median is reported. Random images of the
config's shape, or the sinusoid task source (no data set needed).

    python benchmarks/meta_lstm_paths.py --threads 1 --config omniglot-5w1s-meta-lstm
    python benchmarks/meta_lstm_paths.py --threads 1 --config sine-meta-lstm
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
    common.add_threads_option(parser, default=1)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    import torch

    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.engine.meta_update import meta_update

    cfg, shape, algo = build(args.config)
    gen = torch.Generator().manual_seed(0)
    meta_batch = cfg.algorithm.meta_batch
    batch = drawer(cfg, shape, gen)(meta_batch, cfg.task.queries)
    paths = [p for p in args.paths.split(",") if p in algo.available_paths]
    opt = algo.configure_optimizer()
    first: dict[str, float] = {}
    for path in paths:  # the first call of each path (the compilation, for compiled)
        start = time.perf_counter()
        meta_update(algo, batch, path, TrainingProgress(1, 10, False), opt)
        first[path] = time.perf_counter() - start
    times: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(args.rounds):
        for path in common.rotated(paths, r):
            start = time.perf_counter()
            meta_update(algo, batch, path, TrainingProgress(r + 2, 10, False), opt)
            times[path].append((time.perf_counter() - start) / meta_batch)
    best = min(statistics.median(v) for v in times.values())
    lines = [f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
             f"`{args.config}` ({sum(p.numel() for p in algo.model.parameters()):,} learner "
             f"coordinates, T = {cfg.algorithm.inner_steps} updates, meta-batch "
             f"{meta_batch}); {args.rounds} rounds, the paths in turn.", "",
             "| path | seconds per episode (median) | against the fastest | first call |",
             "| --- | ---: | ---: | ---: |"]
    for path in paths:
        median = statistics.median(times[path])
        lines.append(f"| {path} | {median:.4f} | {median / best:.2f}x | {first[path]:.1f} s |")
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
