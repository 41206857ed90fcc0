"""Stopping a training run part-way and resuming it, for tests of exact resume."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from fewshot_cli.engine import checkpoint
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.engine.trainer import StopSignals, train
from fewshot_cli.rundir import RunDir


class StopAfter(StopSignals):
    """A stop request (as SIGINT) once ``iterations`` iterations have run."""

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.checks = iterations + 1

    @property
    def requested(self) -> bool:  # type: ignore[override]
        self.checks -= 1
        if self.checks <= 0:
            self.signum = signal.SIGINT
        return self.checks <= 0


def interrupted_and_resumed_equals_uninterrupted(cfg: Any, tmp_path: Path, path: str) -> None:
    """Train ``cfg`` straight through, and again stopped half-way then resumed from
    ``last.pt``: every parameter, buffer, and the optimiser's state end identical."""
    finals = []
    for name, stop in (("straight", StopSignals()), ("stopped", StopAfter(2))):
        exp = build_experiment(cfg, torch.device("cpu"))
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        run.write_config(cfg)
        outcome = train(exp, run, path, stop=stop, show_progress=False)
        if name == "stopped":
            assert outcome.status == "interrupted" and outcome.iteration == 2
            exp = build_experiment(cfg, torch.device("cpu"))
            state = checkpoint.load(run.checkpoint_path("last"))
            outcome = train(exp, run, path, stop=StopSignals(), resume=state, show_progress=False)
        assert outcome.status == "completed"
        finals.append(checkpoint.load(run.checkpoint_path("last")))
    a, b = finals
    assert a["algorithm"].keys() == b["algorithm"].keys()
    assert all(torch.equal(a["algorithm"][k], b["algorithm"][k]) for k in a["algorithm"])
    assert a["scheduler"] == b["scheduler"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
