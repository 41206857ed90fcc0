"""How long does it take to use a trained model: ``fewshot_cli.load`` + ``adapt`` +
``predict_proba`` for one 5-way 1-shot Omniglot task with 75 query images (real Omniglot
files, decoded and prepared as training prepared them), in one process, and ``fewshot
predict`` as a whole command (interpreter, imports, the same work, the table).

    python benchmarks/predict_latency.py --run RUN_DIR [--repeat 5] [--threads 1]

RUN_DIR is a trained Omniglot 5-way 1-shot run (any algorithm). The task: the first image
of each of 5 characters of ``images_evaluation`` as the support set, the next 15 of each as
queries.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def task_folders(root: Path, into: Path, ways: int = 5, queries: int = 15) -> None:
    """``into/support/<char>/`` (1 image each) and ``into/query/<char>/`` (``queries``)."""
    chars = sorted((root / "images_evaluation").glob("*/character*"))[::40][:ways]
    for c in chars:
        files = sorted(c.glob("*.png"))
        name = f"{c.parent.name}_{c.name}"
        for part, chosen in (("support", files[:1]), ("query", files[1:1 + queries])):
            (into / part / name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, into / part / name / f.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained Omniglot 5w1s run")
    parser.add_argument("--root", type=Path, default=common.OMNIGLOT, help="Omniglot folder")
    parser.add_argument("--repeat", type=int, default=5)
    common.add_threads_option(parser, default=1)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    common.require_omniglot(args.root)
    start = time.perf_counter()
    import torch

    import fewshot_cli

    imported = time.perf_counter() - start
    common.set_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="predict-latency-"))
    try:
        task_folders(args.root, tmp)
        support = sorted(str(p) for p in (tmp / "support").glob("*/*.png"))
        labels = [Path(p).parent.name for p in support]
        query = sorted(str(p) for p in (tmp / "query").glob("*/*.png"))
        rows: dict[str, list[float]] = {"load": [], "adapt": [], "predict": [], "total": []}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            model = fewshot_cli.load(args.run, device="cpu")
            t1 = time.perf_counter()
            adapted = model.adapt(support, labels)
            t2 = time.perf_counter()
            proba = adapted.predict_proba(query)
            t3 = time.perf_counter()
            for key, seconds in zip(rows, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                rows[key].append(seconds)
        assert proba.shape == (75, 5)
        command = [sys.executable, "-m", "fewshot_cli", "predict", str(args.run), "--support",
                   str(tmp / "support"), "--query", str(tmp / "query"), "--device", "cpu"]
        whole = []
        for _ in range(3):
            t0 = time.perf_counter()
            p = subprocess.run(command, capture_output=True, text=True)
            whole.append(time.perf_counter() - t0)
            if p.returncode != 0:
                raise SystemExit(f"fewshot predict failed:\n{p.stderr[-2000:]}")
        lines = p.stdout.count("\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def ms(v: list[float]) -> str:
        return f"{1000 * v[0]:.0f} | {1000 * statistics.median(v[1:] or v):.0f}"

    cfg = model.config
    text = "\n".join([
        f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; run "
        f"`{cfg.name}` ({model.kind}, {cfg.model.kind} {getattr(cfg.model, 'filters', '')} "
        f"filters, {model.steps} test-time steps).", "",
        "One 5-way 1-shot task, 75 query images, real Omniglot files (in one process; first "
        f"call, then the median of the next {args.repeat - 1}):", "",
        "| step | first (ms) | then (ms) |", "| --- | ---: | ---: |",
        f"| import torch + fewshot_cli | {1000 * imported:.0f} | – |",
        f"| `fewshot_cli.load(run)` | {ms(rows['load'])} |",
        f"| `adapt` (5 support images: decode, {model.steps} steps) | {ms(rows['adapt'])} |",
        f"| `predict_proba` (75 query images: decode, one forward pass) | "
        f"{ms(rows['predict'])} |",
        f"| load + adapt + predict | {ms(rows['total'])} |",
        "",
        f"`fewshot predict RUN --support DIR --query DIR` as a whole command (a new Python "
        f"process each time, {lines} lines printed): "
        f"{', '.join(f'{s:.2f}' for s in whole)} s (median {statistics.median(whole):.2f} s).",
    ])
    common.publish(text, args.write_results)


if __name__ == "__main__":
    main()
