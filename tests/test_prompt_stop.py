"""A stop that is prompt at every moment of a run: SIGTERM or Ctrl-C during a validation ends
it at once (not at the end of the validation), keeps what a resume needs, and the resumed
run ends as if never stopped; ``fewshot eval`` and a run's set-up stop cleanly too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_resume import rows, same_tensors

from fewshot_cli.config import load_config
from fewshot_cli.engine import checkpoint, trainer
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.engine.stopping import StopSignals
from fewshot_cli.rundir import RunDir

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sine-maml.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigterm_during_a_long_validation_stops_within_seconds(tmp_path: Path) -> None:
    """The final validation (5,000 tasks, one at a time) takes minutes; SIGTERM 2 s into it
    ends the run within 5 s, with status interrupted, last.pt saved at the iteration with
    its validation still to do, and the resume line."""
    path = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fewshot_cli", "train", str(CONFIG), "--run-dir", str(path),
         "--set", "train.iterations=1", "--set", "train.val_tasks=5000", "--set",
         "eval.chunk=1", "--set", "train.vectorize=vmap", "--threads", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    last = path / "checkpoints" / "last.pt"  # written once the validation tasks are drawn
    end = time.monotonic() + 120
    while not last.exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(2.0)  # iteration 1 (milliseconds), then its validation
    assert proc.poll() is None, "the validation was expected to take minutes"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    latency = time.monotonic() - sent
    assert proc.returncode == 143, err
    assert latency < 5.0, f"stopped {latency:.1f} s after SIGTERM"
    assert "interrupted at iteration 1, during its validation" in err, err
    assert f"fewshot train --resume {path}" in err and "Traceback" not in err
    meta = json.loads((path / "meta.json").read_text())
    state = torch.load(path / "checkpoints" / "last.pt", weights_only=True)
    assert meta["status"] == "interrupted" and state["iteration"] == 1
    assert state["trainer"]["pending"] is not None
    # iteration 1's row is written when the resumed run validates it
    assert not (path / "metrics.jsonl").exists() or not rows(path)
    # resumed (with a shorter validation: train.* may change on resume), the run is not
    # "already completed": it validates iteration 1 first, then writes its row
    p = subprocess.run([sys.executable, "-m", "fewshot_cli", "train", "--resume", str(path),
                        "--set", "train.val_tasks=4", "--no-progress"],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, p.stderr
    got = rows(path)
    assert [r["iteration"] for r in got] == [1] and "val_loss" in got[0] and "loss" in got[0]
    assert json.loads((path / "meta.json").read_text())["status"] == "completed"


def _short_config() -> object:
    cfg = load_config(CONFIG, ["train.iterations=12", "train.log_every=3", "train.val_every=4",
                               "train.val_tasks=6", "train.checkpoint_every=5",
                               "algorithm.meta_batch=3", "train.vectorize=vmap"])
    return cfg


def _train(cfg: object, path: Path, stop: StopSignals, resume: dict | None = None
           ) -> trainer.Outcome:
    exp = build_experiment(cfg, torch.device("cpu"))
    run = RunDir(path)
    if resume is None:
        run.path.mkdir()
        run.write_config(cfg)
    return trainer.train(exp, run, "vmap", stop=stop, resume=resume, show_progress=False)


def test_stopped_in_a_validation_then_resumed_ends_bit_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal arriving inside the second validation (iteration 8): last.pt holds iteration
    8 with its validation, log row and checkpoint still to do; resumed, the run's parameters,
    optimiser, random state, best.pt and metrics rows equal an uninterrupted run's."""
    cfg = _short_config()
    with StopSignals() as stop:
        assert _train(cfg, tmp_path / "straight", stop).status == "completed"
    real, calls = trainer.validate, []

    def signalled(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # raised inside the validation below
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "validate", signalled)
    with StopSignals() as stop:
        outcome = _train(cfg, tmp_path / "stopped", stop)
    assert outcome.status == "interrupted" and outcome.iteration == 8 and stop.exit_code == 143
    state = checkpoint.load(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert state["iteration"] == 8 and state["trainer"]["pending"] is not None
    assert max(r["iteration"] for r in rows(tmp_path / "stopped")) == 6
    monkeypatch.setattr(trainer, "validate", real)
    with StopSignals() as stop:
        assert _train(cfg, tmp_path / "stopped", stop, resume=state).status == "completed"
    for which in ("last", "best"):
        a, b = (checkpoint.load(tmp_path / name / "checkpoints" / f"{which}.pt")
                for name in ("straight", "stopped"))
        assert a["iteration"] == b["iteration"]
        assert same_tensors(a["algorithm"], b["algorithm"])
        if which == "last":
            assert same_tensors(a["optimizer"], b["optimizer"])
            assert same_tensors(a["rng"], b["rng"]) and b["trainer"]["pending"] is None
    assert rows(tmp_path / "straight") == rows(tmp_path / "stopped")


def test_sigterm_during_eval_leaves_eval_json_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "fewshot_cli", "train", str(CONFIG), "--run-dir",
                    str(run), "--set", "train.iterations=4", "--set", "train.val_every=2",
                    "--set", "train.val_tasks=4", "--no-progress"],
                   check=True, capture_output=True, env=ENV)
    proc = subprocess.Popen([sys.executable, "-m", "fewshot_cli", "eval", str(run), "--tasks",
                             "2000000", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(8.0)  # imports, the run rebuilt, then the (minutes-long) evaluation
    assert proc.poll() is None
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 5.0
    assert proc.returncode == 143 and "was not changed" in err and "Traceback" not in err, err
    assert not (run / "eval.json").exists()
