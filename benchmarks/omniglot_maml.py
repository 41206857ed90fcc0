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
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FEWSHOT_OMNIGLOT",
                                   ROOT.parent / "shared" / "data" / "omniglot"))


def fewshot(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "fewshot_cli", *args], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"fewshot {' '.join(args)} failed:\n{p.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "omniglot-5w1s-maml.yaml")
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-omniglot")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not (args.root / "images_background").is_dir():
        raise SystemExit(f"{args.root}: Omniglot not found (set --root or FEWSHOT_OMNIGLOT)")

    run = args.work / f"{args.config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    sets = [f"task.root={args.root}", f"train.max_seconds={args.minutes * 60}",
            f"train.val_every={args.val_every}", f"device={args.device}", *args.overrides]
    start = time.perf_counter()
    fewshot("train", str(args.config), "--run-dir", str(run), "--no-progress",
            *[x for s in sets for x in ("--set", s)])
    train_wall = time.perf_counter() - start
    fewshot("eval", str(run))
    meta = json.loads((run / "meta.json").read_text())
    result = json.loads((run / "eval.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_accuracy" in r]
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
        f"vectorize={meta['vectorize']['mode']}); whole command {train_wall:.0f} s.",
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
