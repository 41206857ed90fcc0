"""Omniglot MAML within a wall-time budget: validation accuracy against time,
then test accuracy ± 95% CI on 600 tasks.

    python benchmarks/omniglot_maml.py --minutes 45                  # CPU budget
    python benchmarks/omniglot_maml.py --minutes 6 --device cuda     # a GPU session

Runs ``fewshot train`` with ``train.max_seconds`` (the run stops cleanly,
validated and checkpointed), then ``fewshot eval`` on the best checkpoint,
and prints a markdown report (``--out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common
import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=common.CONFIGS / "omniglot-5w1s-maml.yaml")
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--root", type=Path, default=common.OMNIGLOT)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--val-every", type=int, default=100)
    common.add_set_option(ap)
    ap.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench-omniglot")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    common.require_omniglot(args.root)

    run = args.work / f"{args.config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    sets = [f"task.root={args.root}", f"train.max_seconds={args.minutes * 60}",
            f"train.val_every={args.val_every}", f"device={args.device}", *args.overrides]
    start = time.perf_counter()
    common.fewshot("train", str(args.config), "--run-dir", str(run), "--no-progress",
                   *common.set_flags(sets))
    train_wall = time.perf_counter() - start
    common.fewshot("eval", str(run))
    meta = common.read_json(run / "meta.json")
    result = common.read_json(run / "eval.json")
    val = [r for r in common.read_metrics(run) if "val_accuracy" in r]
    val_tasks = yaml.safe_load((run / "config.yaml").read_text())["train"]["val_tasks"]
    s = result["settings"]

    lines = [
        f"### {args.config.name}, {args.minutes:g}-minute budget ({time.strftime('%Y-%m-%d')}, "
        f"{meta['device']} {meta['device_name']}, {meta['threads']} threads, "
        f"torch {meta['torch']})",
        "",
        f"Command: `python benchmarks/omniglot_maml.py --minutes {args.minutes:g} --device "
        f"{args.device}{''.join(' --set ' + o for o in args.overrides)}`",
        "",
        f"- {meta['iteration']} meta-iterations in {meta['wall_seconds']:.0f} s of training "
        f"({meta['wall_seconds'] / max(meta['iteration'], 1):.3f} s/iteration, "
        f"vectorize={common.vectorize_path(meta)}); whole command {train_wall:.0f} s.",
        f"- Test ({s['tasks']} tasks, {s['protocol']}; {result['checkpoint']}.pt from iteration "
        f"{result['checkpoint_iteration']}):",
        "",
        "| inner steps | accuracy % (95% CI) |",
        "| ---: | ---: |",
    ]
    for r in result["per_step"]:
        a = r["accuracy"]
        lines.append(f"| {r['step']} | {100 * a['mean']:.2f} ± {100 * a['ci95']:.2f} |")
    lines += ["", f"Validation accuracy ({val_tasks} fixed validation tasks, after "
              f"{len(val[0]['val_accuracy_steps']) - 1 if val else '?'} steps) against time:", "",
              "| iteration | seconds | val accuracy % |", "| ---: | ---: | ---: |"]
    marks = val if len(val) <= 15 else [val[int(i * (len(val) - 1) / 14)] for i in range(15)]
    for r in marks:
        lines.append(f"| {r['iteration']} | {r['time']:.0f} | {100 * r['val_accuracy']:.1f} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
