"""Sinusoid MAML benchmark: the MAML paper's regression protocol, end to end.

1. ``fewshot train configs/sine-maml.yaml`` in full (wall time of the whole
   command, validation and checkpoints included), and the pretrained
   baseline (``configs/sine-pretrain.yaml``: the same config with
   ``algorithm.kind: pretrain``).
2. ``fewshot eval`` of both at K = 5, 10, 20 on 600 test tasks (100 query
   points each), reporting the MSE after 0, 1 and 10 steps; the baseline is
   also evaluated over a sweep of test-time step sizes and its best kept.
3. Meta-training speed of the vmap and loop paths, alternating in one
   process (meta-iterations per second: median and spread).

Prints a markdown report; ``--out FILE`` also writes it there.

    python benchmarks/sine_maml.py                       # full protocol (~10 min on 2 cores)
    python benchmarks/sine_maml.py --iterations 2000     # quick look
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from common import CONFIGS, ROOT, fewshot, read_json, set_flags, vectorize_path

CONFIG = CONFIGS / "sine-maml.yaml"
PRETRAIN_CONFIG = CONFIGS / "sine-pretrain.yaml"
SHOTS = (5, 10, 20)
REPORT_STEPS = (0, 1, 10)
BASELINE_LRS = (0.001, 0.003, 0.01, 0.02, 0.05)


def train(config: Path, run_dir: Path, iterations: int | None, *overrides: str) -> float:
    args = ["train", str(config), "--run-dir", str(run_dir)]
    if iterations:
        args += ["--set", f"train.iterations={iterations}"]
    args += set_flags(overrides)
    start = time.perf_counter()
    fewshot(*args)
    return time.perf_counter() - start


def evaluate(run_dir: Path, shots: int, inner_lr: float | None = None, tasks: int = 600
             ) -> dict:
    args = ["eval", str(run_dir), "--shots", str(shots), "--tasks", str(tasks), "--steps", "10"]
    if inner_lr is not None:
        args += ["--inner-lr", str(inner_lr)]
    fewshot(*args)
    return read_json(run_dir / "eval.json")


def cell(result: dict, step: int) -> str:
    s = result["per_step"][step]["loss"]
    text = f"{s['mean']:.3f} ± {s['ci95']:.3f}"
    return text + (f" ({s['diverged']} diverged)" if s["diverged"] else "")


def speed(iterations: int, rounds: int) -> dict[str, list[float]]:
    """Meta-iterations/s of vmap and loop, alternating rounds in this process."""
    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.config import load_config
    from fewshot_cli.engine.setup import build_experiment

    cfg = load_config(CONFIG, ["device=cpu"])
    exp = build_experiment(cfg)
    opt = exp.algo.configure_optimizer()
    progress = TrainingProgress(1, 1)
    gen = torch.Generator().manual_seed(0)
    rates: dict[str, list[float]] = {"vmap": [], "loop": []}

    def run(mode: str, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            batch = exp.source.sample(cfg.algorithm.meta_batch, gen, "train")
            loss, _ = exp.algo.meta_loss(batch, mode, progress)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n / (time.perf_counter() - start)

    for mode in rates:
        run(mode, 20)  # warm-up
    for _ in range(rounds):
        for mode in rates:
            rates[mode].append(run(mode, iterations if mode == "vmap" else iterations // 5))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=None,
                    help="training iterations (default: the config's 70,000)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-sine")
    ap.add_argument("--speed-rounds", type=int, default=7)
    ap.add_argument("--tasks", type=int, default=600,
                    help="test tasks per evaluation (600 is the protocol; fewer for a smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    maml_dir = args.work / f"maml-{stamp}"
    base_dir = args.work / f"pretrain-{stamp}"

    maml_wall = train(CONFIG, maml_dir, args.iterations)
    base_wall = train(PRETRAIN_CONFIG, base_dir, args.iterations)
    maml_meta = read_json(maml_dir / "meta.json")

    lines = [
        f"### Sinusoid MAML ({time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()},"
        f" {torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        f"Command: `python benchmarks/sine_maml.py"
        f"{' --iterations ' + str(args.iterations) if args.iterations else ''}"
        f"{' --tasks ' + str(args.tasks) if args.tasks != 600 else ''}`",
        "",
        f"- `fewshot train configs/sine-maml.yaml`: {maml_meta['iteration']} iterations, "
        f"{maml_wall:.1f} s for the whole command ({maml_meta['wall_seconds']:.1f} s in the "
        f"training loop, vectorize={vectorize_path(maml_meta)}); pretrained baseline "
        f"{base_wall:.1f} s.",
        "",
        f"MSE on {args.tasks} test tasks (100 query points each), mean ± 95% CI, test step "
        "size 0.01 unless noted:",
        "",
        "| model | K | 0 steps | 1 step | 10 steps |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for k in SHOTS:
        r = evaluate(maml_dir, k, tasks=args.tasks)
        lines.append(f"| MAML | {k} | " + " | ".join(cell(r, s) for s in REPORT_STEPS) + " |")
    for k in SHOTS:
        results = {lr: evaluate(base_dir, k, lr, args.tasks) for lr in BASELINE_LRS}
        r = results[0.01]
        lines.append(f"| pretrained | {k} | " + " | ".join(cell(r, s) for s in REPORT_STEPS)
                     + " |")

        def final(res: dict) -> float:
            m = res["per_step"][10]["loss"]["mean"]
            return m if m is not None else float("inf")

        best_lr = min(results, key=lambda lr: final(results[lr]))
        rb = results[best_lr]
        lines.append(f"| pretrained, best lr {best_lr:g} | {k} | "
                     + " | ".join(cell(rb, s) for s in REPORT_STEPS) + " |")

    rates = speed(iterations=500, rounds=args.speed_rounds)
    med = {m: statistics.median(v) for m, v in rates.items()}
    lines += [
        "",
        f"Meta-training speed, sine-maml (meta-batch 25, second order), {args.speed_rounds} "
        "alternating rounds in one process:",
        "",
        "| path | median it/s | min | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for m, v in rates.items():
        lines.append(f"| {m} | {med[m]:.0f} | {min(v):.0f} | {max(v):.0f} |")
    lines += ["", f"vmap / loop = {med['vmap'] / med['loop']:.1f}x", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
