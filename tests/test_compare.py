"""``fewshot compare`` and ``fewshot ls``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import SHORT, invoke, runner
from PIL import Image

from fewshot_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, config, extra in (("maml", "sine-maml.yaml", []),
                                ("fomaml", "sine-maml.yaml", ["--set",
                                                              "algorithm.first_order=true"]),
                                ("pretrain", "sine-pretrain.yaml", [])):
        out[name] = root / name
        invoke("train", ROOT / "configs" / config, "--run-dir", out[name], *SHORT, *extra)
    for name in ("maml", "fomaml"):
        invoke("eval", out[name], "--tasks", "6", "--steps", "3")
    return out


def test_compare_puts_runs_in_one_table_and_one_figure(runs: dict[str, Path],
                                                       tmp_path: Path) -> None:
    fig = tmp_path / "compare.png"
    r = runner.invoke(app, ["compare", str(runs["maml"]), str(runs["fomaml"]), "-o", str(fig)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for name, algo in (("maml", "maml"), ("fomaml", "fomaml")):
        row = next(x for x in lines if f" {name} " in x)
        assert algo in row and "10/3" in row and " 10 " in row  # K/steps, iterations
        mean = json.loads((runs[name] / "eval.json").read_text())["per_step"][3]["loss"]["mean"]
        assert f"{mean:.4g}" in row
    assert "warning" not in r.output
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.size[0] > 400


def test_compare_warns_about_different_protocols_and_skips_unevaluated(
        runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    invoke("train", ROOT / "configs" / "sine-maml.yaml", "--run-dir", other, *SHORT)
    invoke("eval", other, "--tasks", "8", "--steps", "3", "--shots", "5")
    r = runner.invoke(app, ["compare", str(runs["maml"]), str(other), str(runs["pretrain"]),
                            "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "different protocol" in text and "shots=5" in text
    assert "different number of test tasks" in text
    assert "no evaluation yet" in text and "pretrain" in text


def test_compare_refuses_when_nothing_was_evaluated(runs: dict[str, Path],
                                                    tmp_path: Path) -> None:
    r = runner.invoke(app, ["compare", str(runs["pretrain"]), "-o", str(tmp_path / "c.png")])
    assert r.exit_code != 0 and "nothing to compare" in r.output
    assert not (tmp_path / "c.png").exists()
    r = runner.invoke(app, ["compare", str(tmp_path)])
    assert r.exit_code != 0 and "error" in r.output and "Traceback" not in r.output


def test_ls_lists_one_line_per_run(runs: dict[str, Path]) -> None:
    root = runs["maml"].parent
    (root / "not-a-run").mkdir(exist_ok=True)
    r = runner.invoke(app, ["ls", str(root)])
    assert r.exit_code == 0, r.output
    rows = {x.split()[0]: x for x in r.output.splitlines() if x.strip()}
    assert set(rows) >= {"maml", "fomaml", "pretrain"} and "not-a-run" not in rows
    assert "fomaml" in rows["fomaml"] and "sinusoid" in rows["maml"]
    assert "completed" in rows["pretrain"] and " 10 " in rows["pretrain"]
    metrics = [json.loads(x) for x in (runs["maml"] / "metrics.jsonl").read_text().splitlines()]
    best = min(m["val_loss_median"] for m in metrics if "val_loss_median" in m)
    assert f"{best:.4g}" in rows["maml"]


def test_ls_refuses_a_missing_folder(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ls", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "no such folder" in r.output
