"""Training across processes (``torchrun``, gloo on CPU): equal to one process fed the same
tasks, for every algorithm; exact resume with the same world size and a clear refusal of
another; a rank that dies ends the run cleanly with its checkpoint intact."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from image_fixtures import make_omniglot

from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.engine import checkpoint
from fewshot_cli.engine.distributed import rank_seed, share
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.rundir import RunDir
from fewshot_cli.tasks import TaskBatch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available in this build")


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests"),
       "PYTHONFAULTHANDLER": "1"}  # a rank that aborts prints its Python stacks


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc-per-node N ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *args]


def torchrun(*args: str, nproc: int = 2, timeout: float = 300,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N ARGS`` with one thread per process."""
    r = subprocess.run(torchrun_command(*args, nproc=nproc), env=ENV, capture_output=True,
                       text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def fewshot(*args: str, nproc: int = 2, **kw: object) -> subprocess.CompletedProcess[str]:
    return torchrun("-m", "fewshot_cli", "train", *args, "--no-progress", nproc=nproc, **kw)


def start_training(run: Path, *settings: str) -> subprocess.Popen[str]:
    """Two processes training sine-maml.yaml into ``run`` in the background, in a process
    group of their own (as a terminal's Ctrl-C reaches them)."""
    return subprocess.Popen(
        torchrun_command("-m", "fewshot_cli", "train", str(CONFIGS / "sine-maml.yaml"),
                         "--run-dir", str(run), "--no-progress", *settings),
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def wait_for_checkpoint(run: Path, iteration: int) -> dict[str, object]:
    """meta.json once the run has checkpointed at ``iteration`` or later."""
    meta_path, deadline = run / "meta.json", time.monotonic() + 120
    while time.monotonic() < deadline:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("checkpoint_iteration", 0) >= iteration:
            return meta
        time.sleep(0.05)
    pytest.fail(f"the run never checkpointed at iteration {iteration}")


def concat(parts: list[TaskBatch]) -> TaskBatch:
    """One meta-batch made of the ranks' shares, in rank order."""
    fields = {f.name: None if getattr(parts[0], f.name) is None else
              torch.cat([getattr(p, f.name) for p in parts])
              for f in dataclasses.fields(TaskBatch) if f.name != "info"}
    return TaskBatch(**fields)


def one_process_reference(run: Path, world: int) -> tuple[dict[str, torch.Tensor],
                                                             dict[str, torch.Tensor]]:
    """The run's ``last.pt`` parameters, and those of one process that takes the same
    meta-updates on the whole meta-batch: rank r's share drawn from rank r's stream."""
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    cfg = RunDir(run).read_config()
    exp = build_experiment(cfg, torch.device("cpu"))
    algo = exp.algo
    optimizer = algo.configure_optimizer()
    scheduler = algo.configure_scheduler(optimizer, cfg.train.iterations)
    gens = [torch.Generator().manual_seed(rank_seed(cfg.seed, r)) for r in range(world)]
    total = cfg.algorithm.meta_batch
    path = state["trainer"]["path"]
    for it in range(1, state["iteration"] + 1):
        batch = concat([exp.source.sample(share(total, r, world), g, "train")
                        for r, g in enumerate(gens)])
        logged = it % cfg.train.log_every == 0 or it == cfg.train.iterations
        meta_update(algo, batch.to(exp.device, exp.dtype), path,
                       TrainingProgress(it, cfg.train.iterations, logged), optimizer)
        if scheduler is not None:
            scheduler.step()
    return state["algorithm"], algo.state_dict()


SHORT = ["train.iterations=3", "train.dtype=float64", "train.val_every=2", "train.val_tasks=5",
         "train.log_every=2", "train.checkpoint_every=3", "device=cpu"]


def sine(config: str, *extra: str, vectorize: str = "vmap", name: str | None = None
         ) -> list[object]:
    return [name or config.removesuffix(".yaml"), str(CONFIGS / config),
            [*SHORT, f"train.vectorize={vectorize}", *extra]]


def test_every_algorithm_across_two_processes_equals_one_process(tmp_path: Path) -> None:
    """Two ranks with half the meta-batch each take the meta-updates of one process with
    the whole meta-batch (the same tasks): float64, every algorithm, both batching kinds
    (vmap over an MLP, fused conv4 with batch norm), an uneven split, MAML++'s per-step
    batch-norm statistics and step sizes, the meta-LSTM's clipped gradient."""
    data = make_omniglot(tmp_path / "data", background=(2, 5), evaluation=(2, 4), drawers=3)
    omniglot = [f"task.root={data}", f"task.cache_dir={tmp_path / 'cache'}",
                "task.train_classes=13", "task.val_classes=5", "model.filters=4",
                "algorithm.meta_batch=4"]
    jobs = [
        sine("sine-maml.yaml", "algorithm.meta_batch=16"),
        sine("sine-maml.yaml", "algorithm.meta_batch=5", "algorithm.first_order=true",
             name="fomaml-uneven", vectorize="loop"),
        sine("sine-daml.yaml", "algorithm.meta_batch=6"),
        sine("sine-meta-lstm.yaml", "algorithm.meta_batch=4", "algorithm.inner_steps=3",
             "task.shots=6", vectorize="loop"),
        sine("sine-metasgd.yaml", "algorithm.meta_batch=6"),
        sine("sine-reptile.yaml", "algorithm.meta_batch=4", "algorithm.inner_batch=null"),
        sine("sine-reptile.yaml", "algorithm.meta_batch=5", "algorithm.inner_optimizer=adam",
             "algorithm.inner_lr=0.01", "algorithm.adam_state=carried",
             "algorithm.inner_batch=null", name="reptile-carried-adam"),
        sine("sine-pretrain.yaml", "algorithm.meta_batch=6"),
        ["anil", str(CONFIGS / "omniglot-5w1s-anil.yaml"),
         [*SHORT, *omniglot, "train.vectorize=fused"]],
        ["mamlpp", str(CONFIGS / "omniglot-5w1s-mamlpp.yaml"),
         [*SHORT, *omniglot, "train.vectorize=fused", "algorithm.inner_steps=2"]],
    ]
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps(jobs))
    torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "runs"), str(spec))
    for name, *_ in jobs:
        run = tmp_path / "runs" / str(name)
        meta = json.loads((run / "meta.json").read_text())
        assert meta["distributed"]["world_size"] == 2 and meta["distributed"]["backend"] == "gloo"
        got, want = one_process_reference(run, 2)
        assert got.keys() == want.keys()
        for k in want:
            # atol: a conv bias before batch norm has a zero gradient up to rounding, which
            # Adam's normalisation turns into steps of ~1e-10 that depend on summation order.
            assert torch.allclose(got[k], want[k], rtol=1e-9, atol=1e-8), (name, k)
        start = checkpoint.load(run / "checkpoints" / "last.pt")
        assert not all(torch.equal(start["algorithm"][k], v) for k, v in
                       build_experiment(RunDir(run).read_config(), torch.device("cpu"))
                       .algo.state_dict().items()), f"{name}: nothing was trained"


def test_resume_is_exact_with_the_same_world_size_and_refused_with_another(
        tmp_path: Path) -> None:
    cfg = str(CONFIGS / "sine-maml.yaml")
    common = ["--set", "train.dtype=float64", "--set", "train.val_every=3",
              "--set", "train.checkpoint_every=3", "--set", "train.log_every=3",
              "--set", "device=cpu", "--set", "train.vectorize=vmap",
              "--set", "algorithm.meta_batch=8"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    fewshot(cfg, "--run-dir", str(whole), *common, "--set", "train.iterations=6")
    fewshot(cfg, "--run-dir", str(part), *common, "--set", "train.iterations=3")
    def files() -> dict[Path, tuple[bytes, int]]:  # all but the lock, which resuming takes
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in part.rglob("*")
                if p.is_file() and p.name != ".lock"}

    before = files()
    r = subprocess.run([sys.executable, "-m", "fewshot_cli", "train", "--resume", str(part),
                        "--set", "train.iterations=6"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "trained with 2 process(es), resumed with 1" in r.stderr
    assert "Traceback" not in r.stderr
    assert before == files()
    fewshot("--resume", str(part), "--set", "train.iterations=6")
    a = checkpoint.load(whole / "checkpoints" / "last.pt")
    b = checkpoint.load(part / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for k, v in a["algorithm"].items():
        assert torch.equal(v, b["algorithm"][k]), k
    rows = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [3, 6]
    meta = json.loads((part / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["resumed"][0]["iteration"] == 3


def test_a_rank_that_dies_ends_the_run_cleanly(tmp_path: Path) -> None:
    """SIGKILL rank 1 mid-run: rank 0 ends within the timeout, the status is failed and
    names the rank, and last.pt still loads at its checkpoint iteration."""
    run = tmp_path / "run"
    proc = start_training(run, "--set", "device=cpu", "--set", "train.checkpoint_every=20",
                          "--set", "train.dist_timeout=60", "--set", "train.vectorize=vmap")
    try:
        meta = wait_for_checkpoint(run, 20)
        os.kill(meta["distributed"]["pids"][1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "failed", meta
    assert meta["failure"]["rank"] == 1, meta["failure"]
    assert "distributed training failed" in err
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["iteration"] == meta["checkpoint_iteration"] >= 20


def test_a_rank_that_raises_is_named_with_its_error(tmp_path: Path) -> None:
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps([sine("sine-maml.yaml", "train.iterations=50",
                                     "train.checkpoint_every=5")]))
    r = torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "runs"), str(spec),
                 "1:12", check=False)
    assert r.returncode != 0
    run = tmp_path / "runs" / "sine-maml"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["failure"]["rank"] == 1, meta
    assert "injected failure at iteration 12" in meta["failure"]["error"]
    assert checkpoint.load(run / "checkpoints" / "last.pt")["iteration"] == 10


def test_fewer_tasks_than_processes_is_one_error_line(tmp_path: Path) -> None:
    r = fewshot(str(CONFIGS / "sine-maml.yaml"), "--run-dir", str(tmp_path / "run"),
                "--set", "algorithm.meta_batch=1", "--set", "device=cpu", check=False)
    assert r.returncode != 0 and not (tmp_path / "run").exists()
    ours = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: algorithm.meta_batch: 1 tasks cannot be split over 2 processes "
                    "(each needs at least one)"]


def test_ctrl_c_stops_every_rank_at_one_iteration_and_resumes_exactly(tmp_path: Path) -> None:
    """SIGINT to the whole launch (Ctrl-C): the ranks agree on the iteration, last.pt is
    saved there with every rank's random state, and resuming ends where an uninterrupted
    run ends, bit for bit."""
    common = ["--set", "device=cpu", "--set", "train.vectorize=vmap", "--set",
              "train.dtype=float64", "--set", "train.checkpoint_every=50", "--set",
              "train.iterations=1500", "--set", "algorithm.meta_batch=8"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    fewshot(str(CONFIGS / "sine-maml.yaml"), "--run-dir", str(whole), *common)
    proc = start_training(part, *common)
    try:
        wait_for_checkpoint(part, 50)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    meta = json.loads((part / "meta.json").read_text())
    assert meta["status"] == "interrupted", err[-3000:]
    stopped = checkpoint.load(part / "checkpoints" / "last.pt")
    assert stopped["iteration"] == meta["iteration"] < 1500 and len(stopped["rng_ranks"]) == 2
    fewshot("--resume", str(part))
    a = checkpoint.load(whole / "checkpoints" / "last.pt")
    b = checkpoint.load(part / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 1500
    for k, v in a["algorithm"].items():
        assert torch.equal(v, b["algorithm"][k]), k


def test_eval_split_over_processes_writes_what_one_process_writes(tmp_path: Path) -> None:
    """``torchrun ... fewshot_cli eval``: each rank adapts every other chunk of the test
    tasks; rank 0 writes the same eval.json as one process (but for times)."""
    run = tmp_path / "run"
    one = [sys.executable, "-m", "fewshot_cli"]
    subprocess.run([*one, "train", str(CONFIGS / "sine-maml.yaml"), "--run-dir", str(run),
                    "--no-progress", "--set", "train.iterations=50", "--set", "device=cpu"],
                   env=ENV, check=True, capture_output=True, timeout=300)
    subprocess.run([*one, "eval", str(run), "--tasks", "250"], env=ENV, check=True,
                   capture_output=True, timeout=300)
    alone = json.loads((run / "eval.json").read_text())
    r = torchrun("-m", "fewshot_cli", "eval", str(run), "--tasks", "250")
    assert r.stderr.count("wrote ") == 1  # rank 0 alone reports and writes
    split = json.loads((run / "eval.json").read_text())

    def timeless(x: object) -> object:
        if isinstance(x, dict):
            return {k: timeless(v) for k, v in x.items() if k not in ("time", "seconds")}
        return [timeless(v) for v in x] if isinstance(x, list) else x

    assert timeless(split) == timeless(alone)


def test_a_torchrun_rank_ends_through_leave_process(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """Under torchrun ``fewshot`` exits with ``leave_process(code)`` (no interpreter
    teardown), the command's own exit code kept; in one process it returns as usual."""
    from fewshot_cli import cli
    from fewshot_cli.engine import distributed

    codes: list[int] = []
    monkeypatch.setattr(distributed, "leave_process", codes.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["fewshot", "--help"], ["fewshot", "eval", str(tmp_path / "nothing")]):
        monkeypatch.setattr(sys, "argv", argv)
        cli.main()
    assert codes[0] == 0 and codes[1] != 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code != 0 and len(codes) == 2
