"""Seconds per meta-update of this tree against another commit, per algorithm and path,
alternating in one process.

The other commit's ``src/fewshot_cli`` is extracted with ``git archive`` into a temporary
folder and imported under another name (``fewshot_other``; the package's imports are
relative), so both versions run side by side in this process on the same machine state.
Each version builds the config's experiment from the same seed and draws the same
meta-batch; a round times ``--steps`` meta-updates of each version, the order swapped
every round (other, this, this, other, ...). Reported: the median seconds per
meta-update over rounds, and the ratio this/other of the medians.

The update is the version's own: ``meta_update(algo, batch, path, progress, optimizer)``
(``fewshot_cli.engine.meta_update``) where it exists, else ``algo.meta_step(batch, path,
progress, optimizer)``.

    python benchmarks/versions_speed.py --other efd1497            # ANIL, Reptile, meta-LSTM
    python benchmarks/versions_speed.py --other efd1497 --rounds 1 --steps 1   # smoke test
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

#: (label, config, overrides) timed by default: the algorithms whose inner gradient moved
#: to the shared helper, on Omniglot 5-way 1-shot.
CASES = [
    ("anil", "omniglot-5w1s-anil.yaml", []),
    ("reptile", "omniglot-5w1s-reptile.yaml", []),
    ("meta_lstm", "omniglot-5w1s-meta-lstm.yaml", []),
]
OTHER = "fewshot_other"


def extract(commit: str, into: Path) -> Path:
    """``src/fewshot_cli`` of ``commit`` as the package ``OTHER`` under ``into``."""
    (common.extract_src(commit, into) / "fewshot_cli").rename(into / OTHER)
    return into


class Version:
    """One version of the package: its experiment for a config, and its meta-update."""

    def __init__(self, package: str) -> None:
        self.name = package
        self.config = importlib.import_module(f"{package}.config")
        self.setup = importlib.import_module(f"{package}.engine.setup")
        self.algorithms = importlib.import_module(f"{package}.algorithms")
        try:
            self.update = importlib.import_module(f"{package}.engine.meta_update").meta_update
        except ImportError:
            self.update = None
        self.progress = (getattr(self.algorithms, "TrainingProgress", None)
                         or self.algorithms.Progress)

    def prepare(self, config: Path, overrides: list[str], path: str) -> Any:
        """A closure that runs one meta-update of the config's experiment on one batch."""
        import torch

        cfg = self.config.load_config(config, overrides)
        exp = self.setup.build_experiment(cfg, torch.device("cpu"))
        batch = exp.source.sample(cfg.algorithm.meta_batch, torch.Generator().manual_seed(0),
                                  "train")
        optimizer = exp.algo.configure_optimizer()
        progress = self.progress(1, 10**6, False)
        if self.update is not None:
            return lambda: self.update(exp.algo, batch, path, progress, optimizer)
        return lambda: exp.algo.meta_step(batch, path, progress, optimizer)


def time_rounds(steps: dict[str, Any], rounds: int, n: int) -> dict[str, list[float]]:
    """Seconds per meta-update of each version, one value per round, alternating."""
    names = list(steps)
    out: dict[str, list[float]] = {k: [] for k in names}
    for fn in steps.values():
        fn()  # warm-up
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            for _ in range(n):
                steps[name]()
            out[name].append((time.perf_counter() - t) / n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="commit to compare against")
    parser.add_argument("--paths", default="loop,fused")
    parser.add_argument("--only", default=None, help="comma-separated case labels")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="meta-updates per round")
    parser.add_argument("--root", type=Path, default=common.OMNIGLOT)
    common.add_threads_option(parser, default=1)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    root = common.require_omniglot(args.root)
    cases = [c for c in CASES if args.only is None or c[0] in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(extract(args.other, Path(tmp))))
        versions = {"other": Version(OTHER), "this": Version("fewshot_cli")}
        for label, config, overrides in cases:
            sets = common.with_omniglot_root(overrides, root)
            for path in args.paths.split(","):
                steps = {k: v.prepare(common.CONFIGS / config, sets, path)
                         for k, v in versions.items()}
                times = time_rounds(steps, args.rounds, args.steps)
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append((label, path, med["other"], med["this"], med["this"] / med["other"]))
                print(f"{label:10s} {path:6s} other {med['other']:.4f} s  this "
                      f"{med['this']:.4f} s  this/other {med['this'] / med['other']:.3f}",
                      flush=True)
    lines = ["| algorithm | path | other s/update | this s/update | this/other |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {p} | {o:.4f} | {t:.4f} | {r:.3f} |" for a, p, o, t, r in rows]
    command = common.omp_prefix() + common.command_line(__file__)
    common.publish(f"Command: `{command}`\n\n" + "\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
