"""DAML's measurements: the chapter exercise, the cross-domain sinusoid, and speed.

Usage::

    python benchmarks/daml.py --chapter RUN --cross RUN --naive RUN [--speed] [--write-results]

``--chapter``: a finished run of ``configs/sine-daml-chapter.yaml``: the share of test
tasks whose adapted curve is closer (L1 over [-2pi, 2pi]) to its own phase's curve, and the
L1 error to the true curve after adaptation and unadapted. ``--cross`` and ``--naive``: runs
of ``configs/sine-daml.yaml`` and ``configs/sine-daml-naive.yaml``: target-domain MSE ± CI
on the same test tasks for DAML, naive MAML on the demonstration, and DAML's unadapted
network. ``--speed``: meta-training iterations per second of DAML and of MAML on the same
sinusoid setting (meta-batch 25, one inner step, second order, vmap), alternating in one
process. Every evaluation uses the run's own ``eval`` section (600 tasks, evaluation seed).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from common import CONFIGS, add_write_results_option, command_line, publish

from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.config import load_config
from fewshot_cli.engine.evaluator import eval_settings, evaluate_protocols
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.rundir import RunDir


def _fmt(stat: dict, scale: float = 1.0) -> str:
    return f"{scale * stat['mean']:.4g} ± {scale * stat['ci95']:.2g}"


def _training(run: RunDir) -> str:
    rows = run.read_metrics()
    last = rows[-1] if rows else {}
    return f"{last.get('iteration', '?')} iterations in {last.get('time', 0) / 60:.1f} min"


def chapter(path: str) -> list[str]:
    run = RunDir.open(path)
    cfg = run.read_config()
    r = evaluate_protocols(run, [eval_settings(cfg)])[0]
    probe, steps = r["probe"], r["settings"]["steps"]
    loss = r["per_step"]
    return [
        f"### sine-daml-chapter.yaml, full schedule ({_training(run)}, "
        f"{r['checkpoint']}.pt)", "",
        f"Run `{path}`; {r['settings']['tasks']} test tasks of the evaluation seed; "
        f"after {steps} inner steps, each on one fresh demonstration point.", "",
        "| measure | unadapted | adapted | target |",
        "| --- | ---: | ---: | --- |",
        f"| tasks closer to their own phase's curve (%) | "
        f"{_fmt(probe['phase_identified']['before'], 100)} | "
        f"{_fmt(probe['phase_identified']['after'], 100)} | ≥ 99% adapted |",
        f"| L1 to the true curve on [−2π, 2π], 200 points | "
        f"{_fmt(probe['curve_l1']['before'])} | {_fmt(probe['curve_l1']['after'])} | "
        "< 0.1 adapted; ≈ 0.64 or worse unadapted |",
        f"| target L1 on 100 query points | {_fmt(loss[0]['loss'])} | "
        f"{_fmt(loss[steps]['loss'])} | |", ""]


def cross(daml: str, naive: str) -> list[str]:
    run = RunDir.open(daml)
    cfg = run.read_config()
    ours, base = evaluate_protocols(run, [eval_settings(cfg)], baselines=[RunDir.open(naive)])
    steps = ours["settings"]["steps"]
    return [
        "### sine-daml.yaml against naive MAML (sine-daml-naive.yaml)", "",
        f"DAML run `{daml}` ({_training(run)}), naive run `{naive}` "
        f"({_training(RunDir.open(naive))}); {ours['settings']['tasks']} test tasks of the "
        f"evaluation seed, the same for both, {ours['settings']['queries']} target points "
        f"each; {ours['checkpoint']}.pt of each; target-domain MSE mean ± 95% CI.", "",
        "| model | target MSE | curve L1 on [−5, 5] |", "| --- | ---: | ---: |",
        f"| DAML, unadapted | {_fmt(ours['per_step'][0]['loss'])} | "
        f"{_fmt(ours['probe']['curve_l1']['before'])} |",
        f"| naive MAML, unadapted | {_fmt(base['per_step'][0]['loss'])} | "
        f"{_fmt(base['probe']['curve_l1']['before'])} |",
        f"| naive MAML on the demonstration, {steps} step(s) | "
        f"{_fmt(base['per_step'][steps]['loss'])} | "
        f"{_fmt(base['probe']['curve_l1']['after'])} |",
        f"| **DAML, {steps} step(s)** | {_fmt(ours['per_step'][steps]['loss'])} | "
        f"{_fmt(ours['probe']['curve_l1']['after'])} |", ""]


def speed(rounds: int = 5, iterations: int = 150) -> list[str]:
    """Iterations per second of DAML and MAML, alternating in one process."""
    exps = {}
    for name, config in (("DAML", "sine-daml.yaml"), ("MAML (naive)", "sine-daml-naive.yaml")):
        cfg = load_config(CONFIGS / config, ["device=cpu"])
        exp = build_experiment(cfg, torch.device("cpu"))
        exps[name] = (exp, exp.algo.configure_optimizer())
    gen = torch.Generator().manual_seed(0)
    batches = [next(iter(exps.values()))[0].source.sample(25, gen, "train")
               for _ in range(iterations)]
    rates: dict[str, list[float]] = {name: [] for name in exps}
    for r in range(rounds + 1):
        for name, (exp, opt) in exps.items():
            start = time.perf_counter()
            for i, b in enumerate(batches):
                meta_update(exp.algo, b, "vmap",
                            TrainingProgress(i + 1, iterations, logged=False), opt)
            if r:  # the first round warms up
                rates[name].append(iterations / (time.perf_counter() - start))
    med = {n: statistics.median(v) for n, v in rates.items()}
    return [
        "### Meta-training speed, DAML against MAML", "",
        f"Same sinusoid tasks (meta-batch 25, one inner step, second order, vmap), "
        f"{rounds} alternating rounds of {iterations} iterations after one warm-up round; "
        f"torch threads: {torch.get_num_threads()}.", "",
        "| algorithm | it/s, median (min–max) |", "| --- | ---: |",
        *[f"| {n} | {med[n]:.0f} ({min(v):.0f}–{max(v):.0f}) |" for n, v in rates.items()],
        "", f"DAML takes {med['MAML (naive)'] / med['DAML']:.2f}× MAML's time per iteration "
        "(its inner step also runs the loss network on the output and hidden activations).",
        ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chapter")
    ap.add_argument("--cross")
    ap.add_argument("--naive")
    ap.add_argument("--speed", action="store_true")
    add_write_results_option(ap)
    args = ap.parse_args()
    lines = [f"## DAML ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
             f"{command_line(__file__)}`. Machine: "
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}.", ""]
    if args.chapter:
        lines += chapter(args.chapter)
    if args.cross and args.naive:
        lines += cross(args.cross, args.naive)
    if args.speed:
        lines += speed()
    publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
