"""The textbook exercise: test L1 after 0 and after the evaluation steps, per phase.

Usage: ``python benchmarks/chapter.py RUN_DIR [RUN_DIR ...] [--tasks 600]
[--write-results]`` for runs of ``configs/sine-chapter*.yaml``. Test tasks
come from the evaluation seed; each phase's tasks are summarised on their own
(mean ± 95% CI), with the training time from ``meta.json``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from common import add_write_results_option, command_line, publish

from fewshot_cli.engine.evaluator import load_experiment, summarize
from fewshot_cli.rundir import RunDir


def per_phase(run: RunDir, which: str, tasks: int) -> tuple[int, dict[float, list[dict]]]:
    exp, state = load_experiment(run, which, device="cpu")
    steps = exp.cfg.algorithm.eval_inner_steps
    gen = torch.Generator().manual_seed(exp.cfg.eval.seed)
    queries = exp.cfg.eval.queries or exp.cfg.task.queries
    batch = exp.source.sample(tasks, gen, "test", queries=queries)
    curve = exp.algo.adaptation_curve(batch, steps, "vmap")[..., 0]  # [tasks, steps + 1]
    phases = batch.info["phase"]
    out = {}
    for p in sorted(set(phases.tolist())):
        mask = phases == p
        out[p] = [summarize(curve[mask, 0]), summarize(curve[mask, steps])]
    return state.get("iteration"), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--tasks", type=int, default=600)
    add_write_results_option(ap)
    args = ap.parse_args()
    lines = [f"## The textbook exercise (sine-chapter), {time.strftime('%Y-%m-%d')}", "",
             f"Command: `{command_line(__file__, args.runs)}`; {args.tasks} test "
             "tasks of the evaluation seed, 100 query points each; test L1 mean ± 95% CI.", "",
             "| config | checkpoint (iteration) | phase | tasks | L1 before adaptation | "
             "L1 after the steps | training time |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for path in args.runs:
        run = RunDir.open(path)
        meta = run.read_meta()
        cfg = run.read_config()
        for which in ("best", "last"):
            it, res = per_phase(run, which, args.tasks)
            for p, (before, after) in res.items():
                name = "π" if abs(p - math.pi) < 1e-6 else f"{p:g}"
                lines.append(
                    f"| {cfg.name} ({cfg.algorithm.eval_inner_steps} steps) | {which} ({it}) | "
                    f"{name} | {before['n']} | {before['mean']:.3f} ± {before['ci95']:.3f} | "
                    f"{after['mean']:.3f} ± {after['ci95']:.3f} | "
                    f"{meta.get('train_seconds', meta.get('wall_seconds', '?'))} s |")
    publish("\n".join(lines) + "\n", args.write_results)


if __name__ == "__main__":
    main()
