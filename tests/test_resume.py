"""Stops that lose nothing and exact resume: SIGKILL / SIGINT / SIGTERM at random
moments, then ``fewshot train --resume``, end bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sine-maml.yaml"
# checkpoint_every is not a multiple of log_every, so an open log window is saved and restored.
SHORT = ["--set", "train.iterations=600", "--set", "train.log_every=20", "--set",
         "train.val_every=150", "--set", "train.val_tasks=10", "--set",
         "train.checkpoint_every=35", "--set", "algorithm.meta_batch=5", "--set",
         "train.vectorize=vmap", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fewshot_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot_cli", *args], capture_output=True,
                          text=True, timeout=300, env=ENV)


def rows(path: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    out = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("time"), row.pop("its_per_s", None)
        out.append(row)
    return out


def same_tensors(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def assert_identical(ref: Path, other: Path) -> None:
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(other / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 600
    assert same_tensors(a["algorithm"], b["algorithm"])
    assert same_tensors(a["optimizer"], b["optimizer"])
    assert same_tensors(a["rng"], b["rng"])
    assert rows(ref) == rows(other)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "run"
    p = run("train", str(CONFIG), *SHORT, "--run-dir", str(path))
    assert p.returncode == 0, p.stderr
    return path


def wait_for(path: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moment_then_resume_is_bit_identical(
        reference: Path, tmp_path: Path, seed: int) -> None:
    path = tmp_path / "run"
    proc = start("train", str(CONFIG), *SHORT, "--run-dir", str(path))
    wait_for(path / "checkpoints" / "last.pt")
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    meta = json.loads((path / "meta.json").read_text())
    if meta["status"] == "running":  # killed mid-run: status shows it to every reader
        p = run("eval", str(path), "--tasks", "2", "--steps", "1")
        assert "was killed while training" in p.stderr, p.stderr
    p = run("train", "--resume", str(path), "--no-progress")
    assert p.returncode == 0, p.stderr
    assert_identical(reference, path)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["resumed"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_sigterm_save_and_resume(reference: Path, tmp_path: Path, sig: int) -> None:
    path = tmp_path / "run"
    proc = start("train", str(CONFIG), *SHORT, "--set", "train.iterations=100000", "--run-dir",
                 str(path))
    wait_for(path / "metrics.jsonl")  # training is under way
    proc.send_signal(sig)
    proc.send_signal(sig)  # a second signal during the save changes nothing
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    assert "Traceback" not in err and f"fewshot train --resume {path}" in err
    meta = json.loads((path / "meta.json").read_text())
    state = torch.load(path / "checkpoints" / "last.pt", weights_only=True)
    assert meta["status"] == "interrupted" and state["iteration"] == meta["iteration"] > 0
    # no row past the saved iteration, so resume neither duplicates nor loses one
    assert max(r["iteration"] for r in rows(path)) <= state["iteration"]
    p = run("train", "--resume", str(path), "--set", "train.iterations=600", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert_identical(reference, path)


def test_second_writer_is_refused_and_completed_run_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "run"
    proc = start("train", str(CONFIG), *SHORT, "--set", "train.iterations=100000", "--run-dir",
                 str(path))
    try:
        wait_for(path / "checkpoints" / "last.pt")
        p = run("train", "--resume", str(path), "--no-progress")
        assert p.returncode == 1 and "being trained by another process" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 143
    state = torch.load(path / "checkpoints" / "last.pt", weights_only=True)
    done = state["iteration"]
    assert done > 0
    if state["trainer"]["pending"] is not None:  # stopped inside a validation: finish it
        p = run("train", "--resume", str(path), "--set", f"train.iterations={done}",
                "--no-progress")
        assert p.returncode == 0 and "completed" in p.stderr, p.stderr
    def stamps() -> dict:  # every run file but the lock, whose holder's pid changes
        return {f: f.stat().st_mtime_ns for f in path.rglob("*") if f.name != ".lock"}

    before = stamps()
    p = run("train", "--resume", str(path), "--set", f"train.iterations={done}", "--no-progress")
    assert p.returncode == 0 and "already completed" in p.stderr, p.stderr
    # nothing written: not config.yaml for the --set, not meta.json, no checkpoint
    assert before == stamps()


def test_killed_before_first_checkpoint_resumes_from_start(reference: Path,
                                                          tmp_path: Path) -> None:
    """A run directory with config and meta but no checkpoint (killed during setup)."""
    path = tmp_path / "run"
    p = run("train", str(CONFIG), *SHORT, "--run-dir", str(path))
    assert p.returncode == 0
    for f in (path / "checkpoints").iterdir():
        f.unlink()
    (path / "metrics.jsonl").write_text('{"iteration": 20, "loss": 1.0}\n')
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "status": "running", "iteration": 0}))
    p = run("train", "--resume", str(path), "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "was killed" in p.stderr
    assert_identical(reference, path)


def test_extend_a_completed_run(reference: Path, tmp_path: Path) -> None:
    """Training 300 then extending to 600 equals training 600 (the schedule is constant)."""
    path = tmp_path / "run"
    p = run("train", str(CONFIG), *SHORT, "--set", "train.iterations=300", "--run-dir", str(path))
    assert p.returncode == 0
    p = run("train", "--resume", str(path), "--set", "train.iterations=600", "--no-progress")
    assert p.returncode == 0, p.stderr
    a = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(path / "checkpoints" / "last.pt", weights_only=True)
    assert same_tensors(a["algorithm"], b["algorithm"])
    assert same_tensors(a["optimizer"], b["optimizer"])
    assert rows(path) == rows(reference)  # 300 is a logging and a validation iteration anyway
