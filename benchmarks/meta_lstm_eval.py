"""Seconds per evaluated task of the LSTM meta-learner (validation's and ``fewshot eval``'s
adaptation, through the entry points each uses), at 12 and at 100 tasks per chunk, in passes
of ``eval_tasks_at_once`` tasks, next to one training episode on the same path; with
``--one-pass`` also one pass over the whole chunk (eager paths). Random images of the
config's shape (no data set needed), one process; the ``compiled`` path's first call (its
compilation) is reported apart.

    python benchmarks/meta_lstm_eval.py --threads 1 [--config omniglot-5w1s-meta-lstm]
        [--paths fused,compiled] [--one-pass]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common


def batch_of(n: int, shape: Any, ways: int, shots: int, queries: int, gen: Any) -> Any:
    import torch

    from fewshot_cli.tasks.base import TaskBatch

    labels = torch.arange(ways)
    x = torch.rand(n, ways * (shots + queries), *shape, generator=gen)
    return TaskBatch(x[:, :ways * shots], labels.repeat(shots).expand(n, -1).contiguous(),
                     x[:, ways * shots:], labels.repeat(queries).expand(n, -1).contiguous())


def build(config: str) -> tuple[Any, Any, Any]:
    """The config ``configs/CONFIG.yaml``, its task shape and its algorithm (seed 0)."""
    import torch

    from fewshot_cli import algorithms, models
    from fewshot_cli.config import load_config
    from fewshot_cli.tasks.shapes import task_shape

    cfg = load_config(common.CONFIGS / f"{config}.yaml")
    shape = task_shape(cfg.task)
    torch.manual_seed(0)
    return cfg, shape, algorithms.build(cfg, models.build(cfg.model, shape), shape)


def drawer(cfg: Any, shape: Any, gen: Any) -> Any:
    """``draw(n, queries)``: n tasks of the config's shape with that many queries per class
    (or points): the sinusoid's own task source, else random images."""
    if cfg.task.kind == "sinusoid":  # no data needed: the task source itself
        from fewshot_cli import tasks

        source = tasks.build(cfg.task)
        return lambda n, queries: source.sample(n, gen, "val", queries=queries)
    return lambda n, queries: batch_of(n, shape.input_shape, cfg.task.ways, cfg.task.shots,
                                       queries, gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="omniglot-5w1s-meta-lstm")
    parser.add_argument("--tasks", default="12,100")
    parser.add_argument("--paths", default="fused,vmap,loop,compiled")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--one-pass", action="store_true",
                        help="also time one pass over the whole chunk (eager paths)")
    common.add_threads_option(parser, default=1)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    import torch

    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.engine.meta_update import meta_update

    cfg, shape, algo = build(args.config)
    limit = algo.eval_tasks_at_once()
    steps = cfg.algorithm.eval_inner_steps
    gen = torch.Generator().manual_seed(0)
    draw = drawer(cfg, shape, gen)
    lines = [f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
             f"`{args.config}` ({sum(p.numel() for p in algo.model.parameters()):,} learner "
             f"coordinates, {steps} updates at test; `eval_tasks_at_once` = {limit}).", "",
             "| path | what | tasks | seconds per task (passes of at most "
             f"{limit}) | against the path's training episode | first call (s) "
             "| seconds per task (one pass) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for path in args.paths.split(","):
        if path not in algo.available_paths:
            continue
        opt = algo.configure_optimizer()
        train = draw(cfg.algorithm.meta_batch, cfg.task.queries)
        start = time.perf_counter()
        meta_update(algo, train, path, TrainingProgress(1, 10, False), opt)  # warm-up
        first = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.repeat):
            meta_update(algo, train, path, TrainingProgress(i + 2, 10, False), opt)
        episode = (time.perf_counter() - start) / args.repeat / cfg.algorithm.meta_batch
        lines.append(f"| {path} | training episode (one task's meta-update) | "
                     f"{cfg.algorithm.meta_batch} | {episode:.3f} | 1.00 | {first:.1f} | |")
        print(lines[-1], flush=True)
        for queries, what in ((cfg.task.queries, "validation"),
                              (cfg.eval.queries or cfg.task.queries, "eval")):
            for n in (int(x) for x in args.tasks.split(",")):
                batch = draw(n, queries)
                chunks = (queries if cfg.eval.query_batch == "per_class"
                          and shape.problem == "classification" else 1)
                # what each runs: validation the query curve alone, eval with the
                # adaptation's diagnostics (the meta-LSTM's gates per layer)
                run = (algo.adaptation_curve if what == "validation" else algo.evaluate_tasks)
                start = time.perf_counter()  # the first call: a compilation on compiled
                run(batch.split(limit)[0], steps, path, chunks)
                first = time.perf_counter() - start
                start = time.perf_counter()
                run(batch, steps, path, chunks)
                per_task = (time.perf_counter() - start) / n
                whole = ""
                if args.one_pass and path != "compiled":
                    algo.eval_tasks_at_once = lambda: None  # type: ignore[method-assign]
                    start = time.perf_counter()
                    run(batch, steps, path, chunks)
                    whole = f"{(time.perf_counter() - start) / n:.3f}"
                    del algo.eval_tasks_at_once
                per = "queries per class" if shape.problem == "classification" else "query points"
                lines.append(f"| {path} | {what} ({queries} {per}) | {n} | {per_task:.3f} | "
                             f"{per_task / episode:.2f} | {first:.1f} | {whole} |")
                print(lines[-1], flush=True)
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
