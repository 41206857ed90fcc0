"""Run under ``torchrun`` by tests/test_distributed.py: train each config of a JSON list
(``[[name, config, [overrides...]], ...]``) into ``OUT/name`` through the engine's own
start-up, the way ``fewshot train`` does, in one launch of the process group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from fewshot_cli.config import load_config
from fewshot_cli.engine import distributed, runner, trainer


def fail_on_rank(rank: int, iteration: int) -> None:
    """Make rank ``rank`` raise in its meta-update at ``iteration`` (a rank's own error)."""
    real = trainer.meta_update

    def meta_update(algo, batch, path, progress, optimizer):  # noqa: ANN001, ANN202
        if algo.settings.group.rank == rank and progress.iteration == iteration:
            raise ValueError(f"injected failure at iteration {iteration}")
        return real(algo, batch, path, progress, optimizer)

    trainer.meta_update = meta_update


def main() -> None:
    out, jobs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    if len(sys.argv) > 3:
        fail_on_rank(*(int(v) for v in sys.argv[3].split(":")))
    quiet = Console(stderr=True, quiet=True)
    for name, config, overrides in jobs:
        cfg = load_config(config, overrides)
        _, outcome = runner.start(cfg, runs_root=out, run_dir=out / name, console=quiet,
                                  show_progress=False)
        assert outcome.status == "completed", (name, outcome.status, outcome.message)
    distributed.stop(clean=True)
    distributed.leave_process(0)


if __name__ == "__main__":
    main()
