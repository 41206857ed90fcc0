"""The three commands end to end through the CLI, and their behaviour on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from fewshot_cli.cli import app

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sine-maml.yaml"
PRETRAIN = CONFIG.with_name("sine-pretrain.yaml")
SHORT = ["--set", "train.iterations=40", "--set", "train.log_every=5", "--set",
         "train.val_every=20", "--set", "train.val_tasks=10", "--set", "train.checkpoint_every=20",
         "--set", "algorithm.meta_batch=4", "--set", "train.vectorize=vmap", "--no-progress"]
runner = CliRunner()


def train(tmp_path: Path, name: str, *extra: str, config: Path = CONFIG) -> Path:
    run = tmp_path / name
    r = runner.invoke(app, ["train", str(config), *SHORT, *extra, "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    return run


def fewshot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot_cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("runs"), "sine")


def test_train_writes_run_directory(trained: Path) -> None:
    assert (trained / "config.yaml").is_file()
    meta = json.loads((trained / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["iteration"] == 40
    assert meta["vectorize"]["path"] == "vmap" and meta["seed"] == 0
    assert {"torch", "python", "device", "command", "started", "ended"} <= meta.keys()
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["iteration"] for r in train_rows] == list(range(5, 41, 5))
    assert [r["iteration"] for r in val_rows] == [20, 40]
    assert len(train_rows[0]["inner_loss"]) == 1 and train_rows[0]["meta_lr"] == 0.001
    # the support loss after the last inner step, computed on the logged iterations
    assert all(0 < r["inner_loss_after"] for r in train_rows)
    assert len(val_rows[0]["val_loss_steps"]) == 11
    assert (trained / "checkpoints" / "last.pt").is_file()
    assert (trained / "checkpoints" / "best.pt").is_file()


def test_eval_reports_every_step_and_writes_json(trained: Path) -> None:
    r = runner.invoke(app, ["eval", str(trained), "--tasks", "30", "--steps", "3", "--shots", "20",
                            "--inner-lr", "0.01"])
    assert r.exit_code == 0, r.output
    assert "loss mean" in r.output
    result = json.loads((trained / "eval.json").read_text())
    assert result["settings"]["shots"] == 20 and result["settings"]["tasks"] == 30
    steps = result["per_step"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    assert all(s["loss"]["n"] == 30 and s["loss"]["ci95"] > 0 for s in steps)
    assert steps[3]["loss"]["mean"] < steps[0]["loss"]["mean"]
    # a second eval keeps the first in the history
    r = runner.invoke(app, ["eval", str(trained), "--tasks", "10", "--steps", "1"])
    assert r.exit_code == 0, r.output
    history = (trained / "eval-history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["settings"]["tasks"] == 30


def test_eval_counts_diverged_tasks(trained: Path) -> None:
    r = runner.invoke(app, ["eval", str(trained), "--tasks", "20", "--steps", "8",
                            "--inner-lr", "50"])
    assert r.exit_code == 0, r.output
    result = json.loads((trained / "eval.json").read_text())
    last = result["per_step"][-1]["loss"]
    assert result["diverged_tasks"] > 0 and last["diverged"] > 0
    assert last["mean"] is None or last["mean"] == last["mean"]  # never NaN
    assert "diverged" in r.output


def test_plot_writes_valid_pngs(trained: Path) -> None:
    runner.invoke(app, ["eval", str(trained), "--tasks", "10", "--steps", "2"])
    r = runner.invoke(app, ["plot", str(trained)])
    assert r.exit_code == 0, r.output
    for name in ("loss", "metrics", "inner", "fit", "adaptation"):
        path = trained / "plots" / f"{name}.png"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_plot_from_last_checkpoint_only(tmp_path: Path) -> None:
    run = train(tmp_path, "partial")
    (run / "checkpoints" / "best.pt").unlink()
    (run / "eval.json").unlink(missing_ok=True)
    r = runner.invoke(app, ["plot", str(run)])
    assert r.exit_code == 0, r.output
    assert (run / "plots" / "fit.png").is_file()


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    def numbers(run: Path) -> list:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r.get("loss"), r.get("inner_loss"), r.get("val_loss_steps")) for r in rows]

    a = numbers(train(tmp_path, "a"))
    b = numbers(train(tmp_path, "b"))
    c = numbers(train(tmp_path, "c", "--set", "seed=1"))
    assert a == b
    assert a != c


def test_pretrain_baseline_end_to_end(tmp_path: Path) -> None:
    run = train(tmp_path, "pre", config=PRETRAIN)
    r = runner.invoke(app, ["eval", str(run), "--tasks", "10", "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval.json").read_text())["per_step"][2]["loss"]["n"] == 10


def test_first_order_and_loop_paths_train(tmp_path: Path) -> None:
    run = train(tmp_path, "fo", "--set", "algorithm.first_order=true", "--set",
                "train.vectorize=loop", "--set", "algorithm.inner_steps=2")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["vectorize"]["path"] == "loop"
    row = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert len(row["inner_loss"]) == 2


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", str(CONFIG), "--dry-run", "--runs-root", str(tmp_path),
                            "--set", "algorithm.inner_lr=0.02"])
    assert r.exit_code == 0, r.output
    assert "inner_lr: 0.02" in r.output and "kind: sinusoid" in r.output
    assert list(tmp_path.iterdir()) == []


def test_auto_vectorize_measures_and_caches(tmp_path: Path) -> None:
    run = train(tmp_path, "auto", "--set", "train.vectorize=auto")
    info = json.loads((run / "meta.json").read_text())["vectorize"]
    timed = {"vmap", "loop", "fused"}  # compiled is timed only for runs long enough to repay it
    assert info["path"] in timed and set(info["seconds_per_step"]) == timed
    again = train(tmp_path, "auto2", "--set", "train.vectorize=auto")
    assert json.loads((again / "meta.json").read_text())["vectorize"]["source"] == \
        "cached measurement"


# ---------------------------------------------------------------------------- bad input
def _one_line_error(p: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert p.returncode == code, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and lines[0].startswith("error:")
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_config_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nalgorithm:\n  inner_lr: 0\n")
    runs = tmp_path / "runs"
    p = fewshot("train", str(bad), "--runs-root", str(runs))
    _one_line_error(p, 2, str(bad), "algorithm.inner_lr")
    assert not runs.exists()
    p = fewshot("train", str(CONFIG), "--set", "train.iteratons=5", "--runs-root", str(runs))
    _one_line_error(p, 2, "did you mean 'iterations'")
    assert not runs.exists()


def test_existing_run_dir_is_never_overwritten(trained: Path) -> None:
    before = (trained / "metrics.jsonl").read_text()
    p = fewshot("train", str(CONFIG), "--run-dir", str(trained))
    _one_line_error(p, 1, "must not exist")
    assert (trained / "metrics.jsonl").read_text() == before


def test_eval_and_plot_reject_non_run_directories(tmp_path: Path) -> None:
    _one_line_error(fewshot("eval", str(tmp_path)), 1, "not a run directory")
    _one_line_error(fewshot("plot", str(tmp_path / "missing")), 1, "no such run directory")


def test_corrupt_checkpoint_is_one_line(tmp_path: Path) -> None:
    run = train(tmp_path, "corrupt")
    for which in ("best", "last"):
        (run / "checkpoints" / f"{which}.pt").write_bytes(b"not a checkpoint")
    p = fewshot("eval", str(run), "--tasks", "5")
    _one_line_error(p, 1, "corrupt or unreadable checkpoint")
    assert not (run / "eval.json").exists()


def test_time_limit_stops_cleanly(tmp_path: Path) -> None:
    run = train(tmp_path, "timed", "--set", "train.iterations=1000000", "--set",
                "train.max_seconds=1.0")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "stopped at train.max_seconds"
    assert 0 < meta["iteration"] < 1000000
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == meta["iteration"] and "val_loss" in rows[-1]
    assert (run / "checkpoints" / "last.pt").is_file()


def test_eval_of_a_tensorboard_run_writes_its_results_there(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(CONFIG), "--run-dir", str(run),
                            "--no-progress", "--set", "train.iterations=6",
                            "--set", "train.val_tasks=2", "--set", "train.tensorboard=true"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(run), "--tasks", "4", "--steps", "2"])
    assert r.exit_code == 0, r.output
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    final = json.loads((run / "eval.json").read_text())["per_step"][-1]["loss"]["mean"]
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars("eval/loss")] == [
        (6, round(final, 5))]
