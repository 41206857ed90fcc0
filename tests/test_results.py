"""Results a researcher can publish: several protocols per eval kept side by side in
eval.json, baselines on the same tasks, figures in png/pdf/svg, fit.png with every
phase, and an eval table that fits an 80-column terminal."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fewshot_cli.cli import app
from fewshot_cli.config import load_config
from fewshot_cli.plots import fit_tasks, plot_run, spike_free_top
from fewshot_cli.rundir import RunDir
from fewshot_cli.tasks import build as build_tasks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHORT = ["--set", "train.iterations=20", "--set", "train.log_every=5", "--set",
         "train.val_every=10", "--set", "train.val_tasks=5", "--set", "train.checkpoint_every=10",
         "--set", "algorithm.meta_batch=4", "--set", "train.vectorize=vmap", "--no-progress"]
runner = CliRunner()


def invoke(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def train(root: Path, name: str, config: str, *extra: str) -> Path:
    run = root / name
    invoke("train", str(CONFIGS / config), *SHORT, *extra, "--run-dir", str(run))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A short MAML sine run and a short pretrained baseline (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("runs")
    return {"maml": train(root, "sine-maml", "sine-maml.yaml"),
            "pretrain": train(root, "sine-pretrain", "sine-pretrain.yaml")}


def copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def entries(run: Path) -> list[dict]:
    return json.loads((run / "eval.json").read_text())["results"]


def test_multi_shot_eval_keeps_one_entry_per_protocol(runs: dict[str, Path],
                                                      tmp_path: Path) -> None:
    run = copy(runs["maml"], tmp_path)
    invoke("eval", str(run), "--shots", "5,10,20", "--tasks", "12", "--steps", "1,3")
    first = entries(run)
    assert [(e["settings"]["shots"], e["baseline"]) for e in first] == [
        (5, False), (10, False), (20, False)]
    for e in first:
        assert [s["step"] for s in e["per_step"]] == [0, 1, 2, 3]
        assert e["settings"]["table_steps"] == [1, 3] and e["settings"]["tasks"] == 12
        assert all(s["loss"]["n"] == 12 for s in e["per_step"])
    # every K on the same test-task seed: for sinusoids the same amplitudes and phases
    assert len({e["settings"]["seed"] for e in first}) == 1
    source = build_tasks(load_config(run / "config.yaml").task)
    draws = [source.sample(12, torch.Generator().manual_seed(first[0]["settings"]["seed"]),
                           "test", shots=k, queries=100) for k in (5, 10, 20)]
    for d in draws[1:]:
        assert torch.equal(d.info["amplitude"], draws[0].info["amplitude"])
        assert torch.equal(d.info["phase"], draws[0].info["phase"])
    # the top level repeats the first protocol (what readers of the one-result layout read)
    data = json.loads((run / "eval.json").read_text())
    assert data["format"] == 2 and data["settings"]["shots"] == 5
    assert data["per_step"] == first[0]["per_step"]

    # a second eval of one protocol replaces that entry only
    invoke("eval", str(run), "--shots", "10", "--tasks", "12", "--steps", "3",
           "--inner-lr", "0.01")
    second = entries(run)
    assert len(second) == 3
    assert second[0] == first[0] and second[2] == first[2]
    assert second[1]["time"] >= first[1]["time"] and second[1]["settings"]["table_steps"] is None
    # another protocol (other tasks count) is added, not replacing
    invoke("eval", str(run), "--shots", "10", "--tasks", "6", "--steps", "3")
    assert [(e["settings"]["shots"], e["settings"]["tasks"]) for e in entries(run)] == [
        (5, 12), (10, 12), (20, 12), (10, 6)]
    history = (run / "eval-history.jsonl").read_text().splitlines()
    assert len(history) == 2 and len(json.loads(history[-1])["results"]) == 3
    invoke("plot", str(run))
    with Image.open(run / "plots" / "adaptation.png") as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_shots_and_steps_lists_are_checked(runs: dict[str, Path]) -> None:
    for option, value in (("--shots", "5,x"), ("--shots", "0"), ("--steps", "1,-2"),
                          ("--shots", "")):
        r = runner.invoke(app, ["eval", str(runs["maml"]), option, value])
        assert r.exit_code == 2, r.output
        assert "error:" in r.output and option in r.output and "5,10,20" in r.output


def test_old_format_eval_json_still_plots(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy(runs["maml"], tmp_path)
    invoke("eval", str(run), "--tasks", "5", "--steps", "2")
    data = json.loads((run / "eval.json").read_text())
    old = {k: v for k, v in data.items()
           if k not in ("format", "results", "name", "baseline", "algorithm")}
    old["settings"].pop("table_steps")
    (run / "eval.json").write_text(json.dumps(old))
    assert RunDir(run).read_results() == [old]
    paths = plot_run(RunDir(run))
    assert run / "plots" / "adaptation.png" in paths
    # a new eval after an old one keeps the old result as an entry of its own protocol
    invoke("eval", str(run), "--tasks", "5", "--steps", "3")
    got = entries(run)
    assert len(got) == 2 and got[0] == old and got[1]["settings"]["steps"] == 3
    assert json.loads((run / "eval-history.jsonl").read_text().splitlines()[-1]) == old
    # and the same protocol as the old result replaces it
    invoke("eval", str(run), "--tasks", "5", "--steps", "2")
    assert [e["settings"]["steps"] for e in entries(run)] == [2, 3]
    assert "name" in entries(run)[0]


def test_baseline_is_evaluated_on_the_same_tasks_and_plotted(runs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    run = copy(runs["maml"], tmp_path)
    out = invoke("eval", str(run), "--shots", "5,10", "--tasks", "8", "--steps", "2",
                 "--baseline", str(runs["pretrain"]))
    assert "baseline:" in out and "sine-pretrain" in out
    got = entries(run)
    assert [(e["name"], e["baseline"], e["settings"]["shots"]) for e in got] == [
        ("sine-maml", False, 5), ("sine-pretrain", True, 5),
        ("sine-maml", False, 10), ("sine-pretrain", True, 10)]
    assert got[1]["algorithm"] == "pretrain" and got[0]["algorithm"] == "maml"
    for mine, theirs in ((got[0], got[1]), (got[2], got[3])):
        for key in ("shots", "queries", "steps", "seed", "tasks", "inner_lr"):
            assert mine["settings"][key] == theirs["settings"][key], key
        assert mine["per_step"] != theirs["per_step"]
    # exactly the tasks the baseline gets alone (same seed, same source)
    alone = copy(runs["pretrain"], tmp_path)
    invoke("eval", str(alone), "--shots", "5", "--tasks", "8", "--steps", "2")
    assert entries(alone)[0]["per_step"] == got[1]["per_step"]
    # and the run's own numbers do not change with a baseline beside it
    invoke("eval", str(run), "--shots", "5", "--tasks", "8", "--steps", "2")
    assert entries(run)[0]["per_step"] == got[0]["per_step"] and len(entries(run)) == 4

    invoke("plot", str(run), "--baseline", str(runs["pretrain"]), "--tasks", "2")
    for name in ("adaptation", "fit"):
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 500


def test_incompatible_baseline_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    from image_fixtures import make_image_folder

    data = make_image_folder(tmp_path / "data", splits={"train": 5, "test": 5}, per_class=3,
                             size=20)
    images = tmp_path / "images"
    invoke("train", str(CONFIGS / "miniimagenet-5w1s-maml.yaml"), "--run-dir", str(images),
           "--no-progress", "--set", "task.kind=image_folder", "--set", f"task.root={data}",
           "--set", f"task.cache_dir={tmp_path / 'cache'}", "--set", "task.image_size=20",
           "--set", "task.queries=1", "--set", "eval.queries=1", "--set", "model.filters=4",
           "--set", "train.iterations=2", "--set", "train.log_every=1",
           "--set", "train.vectorize=loop")
    run = copy(runs["maml"], tmp_path)
    before = (run / "eval.json").exists()
    for cmd in (["eval", str(run), "--tasks", "3"], ["plot", str(run)]):
        r = runner.invoke(app, [*cmd, "--baseline", str(images)])
        assert r.exit_code == 2, r.output
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.output
        assert str(images) in lines[0] and "task.kind" in lines[0]
        assert "'image_folder'" in lines[0] and "'sinusoid'" in lines[0]
    assert (run / "eval.json").exists() == before
    assert not (run / "plots").exists()
    r = runner.invoke(app, ["eval", str(run), "--baseline", str(run)])
    assert r.exit_code == 2 and "itself" in r.output


@pytest.mark.parametrize("fmt,magic", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_plot_format(fmt: str, magic: bytes, runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy(runs["maml"], tmp_path)
    invoke("eval", str(run), "--tasks", "4", "--steps", "1")
    out = invoke("plot", str(run), "--format", fmt)
    names = ("loss", "metrics", "fit", "adaptation")
    for name in names:
        path = run / "plots" / f"{name}.{fmt}"
        assert str(path) in out
        assert path.read_bytes()[:5].startswith(magic), name
    assert not list((run / "plots").glob("*.png"))
    r = runner.invoke(app, ["plot", str(run), "--format", "gif"])
    assert r.exit_code == 2


def test_fit_tasks_show_every_phase() -> None:
    cfg = load_config(CONFIGS / "sine-chapter.yaml")
    source = build_tasks(cfg.task)
    for seed in range(20):
        for n in (1, 2, 4):
            batch = fit_tasks(source, n, seed)
            phases = sorted({round(p, 4) for p in batch.info["phase"].tolist()})
            assert phases == [0.0, round(math.pi, 4)], (seed, n, phases)
            assert len(batch) == max(n, 2)
            # each panel's points lie on its own curve
            y = source.curve(batch.support_x, batch.info["amplitude"], batch.info["phase"])
            assert torch.allclose(y, batch.support_y)
    # without phase choices: plain draws, as many as asked
    sine = build_tasks(load_config(CONFIGS / "sine-maml.yaml").task)
    assert len(fit_tasks(sine, 3, 0, shots=7)) == 3
    assert fit_tasks(sine, 3, 0, shots=7).support_x.shape[1] == 7


def test_fit_tasks_construct_a_phase_that_never_appears() -> None:
    cfg = load_config(CONFIGS / "sine-chapter.yaml",
                      ["task.phase_choices=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]"])

    class Biased:  # draws phase 0 only
        def __init__(self, inner: object) -> None:
            self.inner, self.cfg = inner, inner.cfg

        def sample(self, n: int, gen: torch.Generator, split: str, **kw: object) -> object:
            batch = self.inner.sample(n, gen, split, **kw)
            batch.info["phase"].zero_()
            batch.support_y = self.inner.curve(batch.support_x, batch.info["amplitude"],
                                               batch.info["phase"])
            batch.query_y = self.inner.curve(batch.query_x, batch.info["amplitude"],
                                             batch.info["phase"])
            return batch

        def curve(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner.curve(*args)

    batch = fit_tasks(Biased(build_tasks(cfg.task)), 4, 0)
    assert sorted(batch.info["phase"].tolist()) == [float(p) for p in range(9)]
    y = build_tasks(cfg.task).curve(batch.query_x, batch.info["amplitude"], batch.info["phase"])
    assert torch.allclose(y, batch.query_y)


def test_fit_png_for_phase_choices(tmp_path: Path) -> None:
    run = train(tmp_path, "chapter", "sine-chapter.yaml")
    out = invoke("plot", str(run), "--tasks", "1", "--shots", "6", "--steps", "2",
                 "--seed", "5")
    assert str(run / "plots" / "fit.png") in out
    with Image.open(run / "plots" / "fit.png") as im:
        assert im.size[0] > 600  # two panels side by side: one per phase


def test_spikes_are_clipped_not_flattening() -> None:
    curve = [4.0, 3.5, 3.4, 480.0, 3.2, 3.0, 37.0, 2.9, 2.8]
    assert spike_free_top([curve]) == 4.0
    assert spike_free_top([[100.0, 30.0, 10.0, 5.0, 4.0, 3.0]]) is None  # early descent
    assert spike_free_top([[1.0, 2.0, 1.5]]) is None


def test_loss_plot_marks_spikes_and_diverged_validation(runs: dict[str, Path],
                                                        tmp_path: Path) -> None:
    run = copy(runs["maml"], tmp_path)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if r["iteration"] == 10:
            r["loss"] = 1e6
        if "val_loss" in r and r["iteration"] == 20:
            r["val_loss"], r["val_diverged"] = None, 5
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    invoke("plot", str(run))
    with Image.open(run / "plots" / "loss.png") as im:
        assert im.format == "PNG"


def test_eval_table_fits_80_columns(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy(runs["maml"], tmp_path)
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "fewshot_cli", "eval", str(run), "--shots",
                        "5,10,20", "--tasks", "6", "--steps", "10", "--baseline",
                        str(runs["pretrain"])], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    lines = (p.stdout + p.stderr).splitlines()
    assert max(len(x) for x in lines) <= 80, [x for x in lines if len(x) > 80]
    assert p.stdout.count("loss mean") == 6
    assert p.stdout.startswith("run: ") and "baseline: " in p.stdout
