"""Where the LSTM meta-learner's time goes: ``torch.profiler`` over one training episode and
over the evaluation of a few tasks, on each batching path; the operators that take the
most time (self CPU time, summed over calls), as shares of the profiled total. Random
images of the config's shape (no data set needed).

    python benchmarks/meta_lstm_profile.py --threads 1 --paths fused,vmap,loop
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import common
from meta_lstm_eval import batch_of, build


def top_operators(fn: Callable[[], object], top: int) -> tuple[float, list[tuple[str, float]]]:
    """Seconds ``fn()`` took under the profiler, and its ``top`` operators by self CPU time
    with their shares of the total self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return took, [(e.key, e.self_cpu_time_total / total) for e in events[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="omniglot-5w1s-meta-lstm")
    parser.add_argument("--paths", default="fused,vmap,loop")
    parser.add_argument("--tasks", type=int, default=3, help="tasks evaluated at once")
    parser.add_argument("--top", type=int, default=6)
    common.add_threads_option(parser, default=1)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    import torch

    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.engine.meta_update import meta_update

    cfg, shape, algo = build(args.config)
    gen = torch.Generator().manual_seed(0)
    ways, shots = cfg.task.ways, cfg.task.shots
    train = batch_of(cfg.algorithm.meta_batch, shape.input_shape, ways, shots,
                     cfg.task.queries, gen)
    tasks = batch_of(args.tasks, shape.input_shape, ways, shots, cfg.eval.queries or 1, gen)
    steps = cfg.algorithm.eval_inner_steps
    opt = algo.configure_optimizer()
    lines = [f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
             f"`{args.config}`; self CPU time per operator as a share of the profiled total.",
             "", "| path | what | seconds (profiled) | operators by self time |",
             "| --- | --- | ---: | --- |"]
    for path in args.paths.split(","):
        if path not in algo.available_paths:
            continue
        cases = {
            "training episode": lambda p=path: meta_update(
                algo, train, p, TrainingProgress(2, 10, False), opt),
            f"evaluation of {args.tasks} tasks ({steps} updates)": lambda p=path:
                algo.evaluate_tasks(tasks, steps, p),
        }
        for what, fn in cases.items():
            fn()  # warm-up
            took, ops = top_operators(fn, args.top)
            shares = ", ".join(f"{name} {share:.0%}" for name, share in ops)
            lines.append(f"| {path} | {what} | {took:.2f} | {shares} |")
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
