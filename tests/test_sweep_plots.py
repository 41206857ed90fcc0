"""The figures of a sweep directory (``plots.sweep``): one line per setting, the mean over
its seeds, from members trained and evaluated with the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SHORT, invoke
from PIL import Image

from fewshot_cli.errors import RunDirError
from fewshot_cli.plots import plot_sweep
from fewshot_cli.plots.sweep import adaptation_curves, training_curves
from fewshot_cli.sweepdir import SweepDir

ROOT = Path(__file__).resolve().parents[1]
LRS = ("0.01", "0.02")
SEEDS = ("0", "1")


def _name(lr: str, seed: str) -> str:
    return f"inner_lr={lr}_seed={seed}"


def _plan(path: Path, lrs: tuple[str, ...] = LRS, seeds: tuple[str, ...] = SEEDS) -> None:
    path.mkdir(parents=True, exist_ok=True)
    members = [{"name": _name(lr, s), "settings": {"algorithm.inner_lr": lr, "seed": s}}
               for lr in lrs for s in seeds]
    (path / "sweep.json").write_text(json.dumps(
        {"format": 1, "axes": {"algorithm.inner_lr": list(lrs), "seed": list(seeds)},
         "members": members}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny members (2 inner learning rates x 2 seeds), trained and evaluated."""
    root = tmp_path_factory.mktemp("sweep") / "sweep"
    _plan(root)
    for lr in LRS:
        for s in SEEDS:
            run = root / _name(lr, s)
            invoke("train", ROOT / "configs" / "sine-maml.yaml", "--run-dir", run, *SHORT,
                   "--set", f"seed={s}", "--set", f"algorithm.inner_lr={lr}")
            invoke("eval", run, "--tasks", "4", "--steps", "3")
    return root


@pytest.fixture
def copy(sweep: Path, tmp_path: Path) -> Path:
    """A copy of the sweep this test may change."""
    return Path(shutil.copytree(sweep, tmp_path / "sweep"))


def _eval(run: Path) -> dict:
    data = json.loads((run / "eval.json").read_text())
    return data["results"][0] if "results" in data else data


def _losses(run: Path, what: str = "mean") -> list[float]:
    return [row["loss"][what] for row in _eval(run)["per_step"]]


def test_adaptation_curves_are_the_mean_over_seeds(sweep: Path) -> None:
    curves, warnings = adaptation_curves(SweepDir(sweep))
    assert warnings == []
    assert [c.label for c in curves] == [f"algorithm.inner_lr={lr} (2 seeds)" for lr in LRS]
    for c, lr in zip(curves, LRS):
        values = np.array([_losses(sweep / _name(lr, s)) for s in SEEDS])
        assert c.settings == {"algorithm.inner_lr": lr}
        assert c.members == [_name(lr, s) for s in SEEDS]
        assert c.steps == [0, 1, 2, 3] and c.band_kind == "std"
        assert list(c.mean) == ["loss"]  # regression: no accuracy panel
        np.testing.assert_allclose(c.mean["loss"], values.mean(axis=0))
        np.testing.assert_allclose(c.band["loss"], values.std(axis=0, ddof=1))
        assert c.band["loss"][0] > 0  # two seeds do not give the same model


def test_training_curves_are_the_mean_over_seeds(sweep: Path) -> None:
    settings, warnings = training_curves(SweepDir(sweep))
    assert warnings == [] and len(settings) == 2
    for s, lr in zip(settings, LRS):
        rows = [[json.loads(x) for x in (sweep / _name(lr, seed) / "metrics.jsonl")
                 .read_text().splitlines()] for seed in SEEDS]
        assert len(s.runs["loss"]) == 2 and "val_loss" in s.runs
        iterations, mean = s.mean["loss"]
        assert iterations == [5, 10]
        np.testing.assert_allclose(mean, np.mean([[r["loss"] for r in rr] for rr in rows], 0))
        np.testing.assert_allclose(s.mean["val_loss"][1],
                                   np.mean([[r["val_loss"] for r in rr] for rr in rows], 0))


def test_plot_sweep_writes_both_figures(copy: Path) -> None:
    written, warnings = plot_sweep(SweepDir(copy))
    assert warnings == []
    assert written == [copy / "plots" / "adaptation.png", copy / "plots" / "training.png"]
    for p in written:
        with Image.open(p) as im:
            assert im.format == "PNG" and 500 < im.size[0] < 3000 and 300 < im.size[1] < 3000
    written, _ = plot_sweep(SweepDir(copy), fmt="svg")
    assert [p.name for p in written] == ["adaptation.svg", "training.svg"]
    assert "± 1 std" in written[0].read_text()


def test_unevaluated_member_is_left_out_and_a_single_seed_gets_its_ci(copy: Path) -> None:
    lone = copy / _name("0.02", "1")
    (lone / "eval.json").unlink()
    (copy / _name("0.01", "0") / "eval.json").write_text("{not json")
    curves, warnings = adaptation_curves(SweepDir(copy))
    text = " ".join(warnings)
    assert _name("0.02", "1") in text and f"fewshot eval {copy}" in text
    assert "unreadable" in text and _name("0.01", "0") in text
    assert all(c.band_kind == "ci95" for c in curves)
    one = curves[1]
    assert one.members == [_name("0.02", "0")] and "1 seed" in one.label and "95% CI" in one.label
    np.testing.assert_allclose(one.mean["loss"], _losses(copy / _name("0.02", "0")))
    np.testing.assert_allclose(one.band["loss"], _losses(copy / _name("0.02", "0"), "ci95"))
    written, warned = plot_sweep(SweepDir(copy))
    assert len(written) == 2 and any("fewshot eval" in w for w in warned)


def test_different_step_counts_and_protocols_are_said(copy: Path) -> None:
    run = copy / _name("0.02", "1")
    invoke("eval", run, "--tasks", "4", "--steps", "2", "--shots", "5")  # now the latest
    curves, warnings = adaptation_curves(SweepDir(copy))
    assert curves[0].steps == [0, 1, 2, 3] and curves[1].steps == [0, 1, 2]
    values = np.array([_losses(copy / _name("0.02", "0"))[:3],
                       [r["loss"]["mean"] for r in json.loads((run / "eval.json").read_text())
                        ["results"][-1]["per_step"]]])
    np.testing.assert_allclose(curves[1].mean["loss"], values.mean(axis=0))
    text = " ".join(warnings)
    assert "different step counts" in text and "different shots" in text and "shots=5" in text


def test_only_seeds_label_the_line_with_the_config_name(sweep: Path, tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps(
        {"format": 1, "axes": {"seed": list(SEEDS)},
         "members": [{"name": f"seed={s}", "settings": {"seed": s}} for s in SEEDS]}))
    for s in SEEDS:
        (root / f"seed={s}").symlink_to(sweep / _name("0.01", s))
    curves, _ = adaptation_curves(SweepDir(root))
    assert [c.label for c in curves] == ["sine-maml (2 seeds)"]


def test_nothing_trained_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    _plan(root)
    with pytest.raises(RunDirError, match="nothing to plot yet"):
        plot_sweep(SweepDir(root))
    assert not (root / "plots").exists()
    (root / _name("0.01", "0")).mkdir()  # started, no metrics row yet
    (root / _name("0.01", "0") / "config.yaml").write_text("name: x\n")
    with pytest.raises(RunDirError, match="nothing to plot yet"):
        plot_sweep(SweepDir(root))


def test_accuracy_is_drawn_in_percent_and_unstarted_members_are_named(copy: Path) -> None:
    shutil.rmtree(copy / _name("0.02", "1"))  # a member the sweep has not started
    for lr, s in ((lr, s) for lr in LRS for s in SEEDS):
        path = copy / _name(lr, s) / "eval.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for result in data["results"]:
            for row in result["per_step"]:
                row["accuracy"] = {"mean": 0.2 + 0.1 * row["step"] + 0.01 * int(s),
                                   "ci95": 0.05}
        path.write_text(json.dumps(data))
    curves, warnings = adaptation_curves(SweepDir(copy))
    np.testing.assert_allclose(curves[0].mean["accuracy"], [20.5, 30.5, 40.5, 50.5])
    np.testing.assert_allclose(curves[0].band["accuracy"], [np.std([0, 1], ddof=1)] * 4)
    np.testing.assert_allclose(curves[1].band["accuracy"], [5.0] * 4)  # one seed: its CI
    written, warnings = plot_sweep(SweepDir(copy))
    assert len(written) == 2
    assert any("not started" in w and _name("0.02", "1") in w for w in warnings)
    with Image.open(written[0]) as im:
        assert im.size[0] > 1000  # two panels side by side
