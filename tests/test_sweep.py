"""Sweeps: ``fewshot train --seeds/--sweep`` writes a sweep directory of ordinary runs, run
side by side as their own processes; stopping, resuming, failing members, parts for a
scheduler, and ``eval``/``plot`` of the sweep directory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import SHORT, invoke, runner
from PIL import Image

from fewshot_cli.cli import app
from fewshot_cli.sweepdir import SweepDir

ROOT = Path(__file__).resolve().parents[1]
SINE = ROOT / "configs" / "sine-maml.yaml"


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["loss"]) for r in rows if "loss" in r]


def statuses(sweep: Path) -> dict[str, str]:
    return {m["name"]: m["status"] for m in json.loads((sweep / "sweep.json").read_text())
            ["members"]}


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = tmp_path_factory.mktemp("sweeps") / "sine"
    invoke("train", SINE, *SHORT, "--seeds", "0,1", "--run-dir", sweep)
    return sweep


def test_sweep_of_two_seeds_trains_ordinary_runs(two_seeds: Path, tmp_path: Path) -> None:
    assert statuses(two_seeds) == {"seed=0": "completed", "seed=1": "completed"}
    plan = json.loads((two_seeds / "sweep.json").read_text())
    assert plan["axes"] == {"seed": ["0", "1"]}
    for m in plan["members"]:
        meta = json.loads((two_seeds / m["name"] / "meta.json").read_text())
        assert meta["status"] == "completed" and meta["iteration"] == 10
        assert (two_seeds / "logs" / f"{m['name']}.log").is_file()
    # a member is the run the same settings give on their own
    alone = tmp_path / "alone"
    invoke("train", SINE, *SHORT, "--set", "seed=1", "--threads", "1", "--run-dir", alone)
    assert losses(two_seeds / "seed=1") == losses(alone)
    assert losses(two_seeds / "seed=0") != losses(alone)


def test_eval_and_plot_of_a_sweep_directory(two_seeds: Path) -> None:
    r = runner.invoke(app, ["eval", str(two_seeds), "--tasks", "4", "--steps", "1,2"])
    assert r.exit_code == 0, r.output
    settings = []
    for name in ("seed=0", "seed=1"):
        data = json.loads((two_seeds / name / "eval.json").read_text())
        settings.append({k: data["settings"][k] for k in ("tasks", "seed", "shots", "steps")})
    assert settings[0] == settings[1] == {"tasks": 4, "seed": settings[0]["seed"], "shots": 10,
                                          "steps": 2}
    r = runner.invoke(app, ["plot", str(two_seeds)])
    assert r.exit_code == 0, r.output
    for name in ("adaptation.png", "training.png"):
        with Image.open(two_seeds / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] > 400


@pytest.mark.parametrize(("args", "expected"), [
    (["--sweep", "algorithm.no_such_key=1,2"], "no_such_key"),
    (["--sweep", "algorithm.inner_lr=0.01,oops"], "sweep member inner_lr=oops"),
    (["--seeds", "0,0"], "repeated"),
    (["--seeds", "0,1", "--sweep", "seed=2,3"], "seed is swept"),
    (["--sweep", "algorithm.inner_lr=0.1", "--set", "algorithm.inner_lr=0.2"], "both --set"),
    (["--seeds", "0,1", "--shard", "0/2"], "--shard"),
    (["--seeds", "0,1", "--shard", "1/2"], "--run-dir"),
    (["--jobs", "2"], "are for sweeps"),
])
def test_bad_sweeps_are_one_error_and_write_nothing(tmp_path: Path, args: list[str],
                                                    expected: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", str(SINE), *SHORT, *args])
    assert r.exit_code != 0
    assert expected in " ".join(r.output.split()) and "Traceback" not in r.output
    assert not any(tmp_path.iterdir())


def test_dry_run_lists_members_and_print_commands_gives_one_part_each(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", str(SINE), "--seeds", "0,1", "--sweep",
                            "model.hidden=[8],[8,8]", "--dry-run"])
    assert r.exit_code == 0, r.output
    for name in ("hidden=8_seed=0", "hidden=8_seed=1", "hidden=8-8_seed=0",
                 "hidden=8-8_seed=1"):
        assert name in r.output
    target = tmp_path / "sw"
    r = runner.invoke(app, ["train", str(SINE), "--seeds", "0,1,2", "--run-dir", str(target),
                            "--print-commands"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3 and not target.exists()
    for i, line in enumerate(lines, 1):
        assert line.startswith("fewshot train ") and f"--shard {i}/3" in line
        assert f"--run-dir {target}" in line and "--seeds 0,1,2" in line


def test_shards_fill_one_sweep_directory(tmp_path: Path) -> None:
    target = tmp_path / "sw"
    for part in ("2/2", "1/2"):
        invoke("train", SINE, *SHORT, "--seeds", "0,1,2", "--run-dir", target, "--shard", part)
        if part == "2/2":
            assert statuses(target) == {"seed=0": "pending", "seed=1": "completed",
                                        "seed=2": "pending"}
    assert set(statuses(target).values()) == {"completed"}
    # a part of another plan does not join it
    r = runner.invoke(app, ["train", str(SINE), *SHORT, "--seeds", "0,1", "--run-dir",
                            str(target), "--shard", "1/2"])
    assert r.exit_code != 0 and "other members" in r.output


def test_a_failing_member_does_not_stop_the_others(tmp_path: Path) -> None:
    target = tmp_path / "sw"
    r = runner.invoke(app, ["train", str(SINE), *SHORT, "--sweep",
                            "algorithm.inner_lr=0.01,1e30", "--run-dir", str(target)])
    assert r.exit_code == 1, r.output
    assert statuses(target) == {"inner_lr=0.01": "completed", "inner_lr=1e30": "diverged"}
    text = " ".join(r.output.split())
    assert "1 of 2 member(s) did not finish: inner_lr=1e30" in text
    # resuming skips both: one finished, one diverged (said, not retried)
    r = runner.invoke(app, ["train", "--resume", str(target)])
    assert r.exit_code == 0, r.output
    assert "diverged; not retried" in " ".join(r.output.split())


def test_a_stopped_sweep_resumes_every_member_exactly(tmp_path: Path) -> None:
    target = tmp_path / "sw"
    long = [*SHORT, "--set", "train.iterations=600", "--set", "train.log_every=10",
            "--set", "train.checkpoint_every=10", "--set", "train.val_every=300"]
    proc = subprocess.Popen([sys.executable, "-m", "fewshot_cli", "train", str(SINE), *long,
                             "--seeds", "0,1", "--jobs", "1", "--run-dir", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = target / "seed=0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert statuses(target) == {"seed=0": "interrupted", "seed=1": "pending"}
    stopped_at = json.loads((target / "seed=0" / "meta.json").read_text())["iteration"]
    assert 0 < stopped_at < 600
    assert b"fewshot train --resume" in stderr
    invoke("train", "--resume", target)
    assert statuses(target) == {"seed=0": "completed", "seed=1": "completed"}
    meta = json.loads((target / "seed=0" / "meta.json").read_text())
    assert meta["resumed"][0]["iteration"] == stopped_at
    alone = tmp_path / "alone"
    invoke("train", SINE, *long, "--set", "seed=0", "--threads", "1", "--run-dir", alone)
    assert losses(target / "seed=0") == losses(alone)
    assert SweepDir(target).status(SweepDir(target).members()[1]) == "completed"


def test_ls_lists_sweep_members(two_seeds: Path) -> None:
    text = invoke("ls", two_seeds.parent)
    assert f"{two_seeds.name}/seed=0" in text and f"{two_seeds.name}/seed=1" in text
    text = invoke("ls", two_seeds)
    assert text.count("seed=0") == 1 and "completed" in text


def test_member_names_and_values() -> None:
    from fewshot_cli.sweep import members_of, parse_axes, split_values

    assert split_values("5, [40,40],{a: 1, b: 2},'x,y'") == ["5", "[40,40]", "{a: 1, b: 2}",
                                                              "'x,y'"]
    axes = parse_axes("0,1", ["algorithm.inner_lr=-1,sum/K", "task.shots=5"])
    assert list(axes) == ["algorithm.inner_lr", "task.shots", "seed"]  # seeds vary last
    names = [m.name for m in members_of(axes)]
    assert names == ["inner_lr=-1_seed=0", "inner_lr=-1_seed=1", "inner_lr=sum-K_seed=0",
                     "inner_lr=sum-K_seed=1"]  # only what varies; signs kept
    both = members_of(parse_axes(None, ["task.shots=1,2", "eval.shots=3,4"]))
    assert both[0].name == "task.shots=1_eval.shots=3"  # a shared last part: the full key
    assert both[0].overrides == ["task.shots=1", "eval.shots=3"]


def test_threads_fixed_by_every_members_config_are_not_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fewshot_cli.sweep_command as sweep_command

    seen: list[int | None] = []
    real = sweep_command.run_jobs

    def spy(jobs: list, **kw: object) -> object:
        seen.append(kw["threads"])  # type: ignore[arg-type]
        return real(jobs, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep_command, "run_jobs", spy)
    invoke("train", SINE, *SHORT, "--seeds", "0,1", "--set", "train.threads=1",
           "--run-dir", tmp_path / "fixed")
    # members that fix different thread counts: the first measures as before
    invoke("train", SINE, *SHORT, "--seeds", "0", "--sweep", "train.threads=1,2",
           "--run-dir", tmp_path / "mixed")
    assert seen == [1, None]
    assert statuses(tmp_path / "fixed") == {"seed=0": "completed", "seed=1": "completed"}
