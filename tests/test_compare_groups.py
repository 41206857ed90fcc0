"""``fewshot compare``: runs grouped by setting (seeds pooled), statistics across seeds, the
choice of evaluation (--shots, --steps, the latest), sweep directories, and the md, csv,
latex and json formats."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import SHORT, invoke, runner

from fewshot_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
LR1, LR2 = "algorithm.inner_lr=0.01", "algorithm.inner_lr=0.02"


def _train(run: Path, *sets: str) -> Path:
    invoke("train", ROOT / "configs" / "sine-maml.yaml", "--run-dir", run, *SHORT,
           *[x for s in sets for x in ("--set", s)])
    invoke("eval", run, "--tasks", "6", "--steps", "3")
    return run


def _sweep_json(path: Path, members: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "sweep.json").write_text(json.dumps({
        "format": 1, "axes": {"seed": [m.split("=")[1] for m in members]},
        "members": [{"name": m, "settings": {"seed": m.split("=")[1]}} for m in members]}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2 seeds x 2 inner step sizes: the 0.01 seeds are the members of a sweep."""
    root = tmp_path_factory.mktemp("groups")
    sweep = root / "sweep"
    _sweep_json(sweep, ["seed=0", "seed=1"])
    out = {"sweep": sweep}
    for seed in (0, 1):
        out[f"a{seed}"] = _train(sweep / f"seed={seed}", f"seed={seed}")
        out[f"b{seed}"] = _train(root / f"lr2-s{seed}", f"seed={seed}", LR2)
    return out


def _compare(*args: object, ok: bool = True):  # noqa: ANN202
    r = runner.invoke(app, ["compare", *map(str, args)])
    assert (r.exit_code == 0) == ok, r.output
    return r


def _step(run: Path, step: int, metric: str = "loss") -> dict:
    result = json.loads((run / "eval.json").read_text())["results"][0]
    return next(row for row in result["per_step"] if row["step"] == step)[metric]


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_seeds_of_one_setting_are_pooled(runs: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = _compare(runs["sweep"], runs["b0"], runs["b1"], "--format", "json")
    records = json.loads(r.stdout)
    assert [x["group"] for x in records] == [LR1, LR2]
    assert not (tmp_path / "compare.png").exists()  # no figure unless -o, for machine formats
    for rec, (x, y) in zip(records, [("a0", "a1"), ("b0", "b1")]):
        means = [_step(runs[x], 3)["mean"], _step(runs[y], 3)["mean"]]
        cis = [_step(runs[x], 3)["ci95"], _step(runs[y], 3)["ci95"]]
        assert rec["n"] == 2 and rec["runs"] == [runs[x].name, runs[y].name]
        assert rec["step"] == 3 and rec["metric"] == "loss" and rec["shots"] == 10
        assert rec["mean"] == pytest.approx(np.mean(means))
        assert rec["std"] == pytest.approx(np.std(means, ddof=1))
        assert rec["ci95_mean"] == pytest.approx(np.mean(cis))
        assert rec["tasks"] == 6 and rec["iterations_mean"] == 10
    assert records[1]["settings"] == {"algorithm.inner_lr": 0.02}


def test_the_table_shows_one_line_per_group_and_writes_the_figure(
        runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = _compare(runs["sweep"], runs["b0"], runs["b1"])
    lines = r.stdout.splitlines()
    assert "K=10" in r.stdout and "6 test tasks" in r.stdout and "eval seed" in r.stdout
    for label, x, y in ((LR1, "a0", "a1"), (LR2, "b0", "b1")):
        row = next(line for line in lines if label in line)
        means = [_step(runs[x], 3)["mean"], _step(runs[y], 3)["mean"]]
        assert f"{np.mean(means):.4g} ± {np.std(means, ddof=1):.2g}" in row
        assert " 2 " in row and "10/3" in row and "maml" in row
    assert (tmp_path / "compare.png").is_file() and "wrote" in r.stderr
    assert "wrote" not in r.stdout


def test_only_ignored_keys_differ_within_a_group(runs: dict[str, Path], tmp_path: Path) -> None:
    same = _copy(runs["b0"], tmp_path / "renamed")
    cfg = yaml.safe_load((same / "config.yaml").read_text())
    cfg.update(name="other", seed=7)
    cfg["train"].update(threads=2, tensorboard=True)
    (same / "config.yaml").write_text(yaml.safe_dump(cfg))
    rec = json.loads(_compare(runs["b0"], same, "--format", "json").stdout)
    assert len(rec) == 1 and rec[0]["n"] == 2 and rec[0]["std"] == 0
    assert rec[0]["group"] == f"maml {runs['b0'].name}, renamed"
    cfg["train"]["log_every"] = 2  # may change what is learned (extra forward passes)
    (same / "config.yaml").write_text(yaml.safe_dump(cfg))
    rec = json.loads(_compare(runs["b0"], same, "--format", "json").stdout)
    assert [x["group"] for x in rec] == ["train.log_every=5", "train.log_every=2"]


def test_formats(runs: dict[str, Path]) -> None:
    args = (runs["sweep"], runs["b0"], runs["b1"], "--steps", "0,3")
    md = _compare(*args, "--format", "md").stdout
    assert md.startswith("**protocol: K=10") and "6 test tasks" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 and re.fullmatch(r"\|[-:|]+\|", table[1])
    assert all(line.count(" | ") == table[0].count(" | ") for line in table[2:])
    assert "after 0 steps" in table[0] and "after 3 steps" in table[0]
    assert table[2].startswith(f"| {LR1} | maml | 2 |")

    rows = list(csv.DictReader(io.StringIO(_compare(*args, "--format", "csv").stdout)))
    assert len(rows) == 2 * 2  # groups x steps (loss only: regression)
    assert {(x["group"], x["step"], x["metric"]) for x in rows} == {
        (g, s, "loss") for g in (LR1, LR2) for s in ("0", "3")}
    assert rows[0]["runs"] == "seed=0;seed=1" and rows[0]["n"] == "2"

    tex = _compare(*args, "--format", "latex").stdout
    assert tex.startswith("% protocol: K=10")
    for part in (r"\toprule", r"\midrule", r"\bottomrule", r"$\pm$", r"inner\_lr",
                 r"\begin{tabular}", r"95\% CI"):
        assert part in tex
    body = [line.replace(" & ", " ") for line in tex.splitlines() if not line.startswith("%")]
    assert not any(re.search(r"(?<!\\)[_%&#]", line) for line in body)

    records = json.loads(_compare(*args, "--format", "json").stdout)
    assert len(records) == 4 and {x["step"] for x in records} == {0, 3}


def test_latest_evaluation_and_the_protocol_options(runs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    run = _copy(runs["b0"], tmp_path / "run")
    (run / "eval.json").unlink()
    invoke("eval", run, "--tasks", "6", "--steps", "3", "--shots", "5")
    time.sleep(1.05)  # eval.json's times have whole seconds
    invoke("eval", run, "--tasks", "6", "--steps", "3", "--shots", "10")
    rec = json.loads(_compare(run, "--format", "json").stdout)
    assert [x["shots"] for x in rec] == [10]
    rec = json.loads(_compare(run, "--format", "json", "--shots", "5", "--steps", "1,2").stdout)
    assert [(x["shots"], x["step"]) for x in rec] == [(5, 1), (5, 2)]
    r = _compare(run, runs["b1"], "--steps", "4", ok=False)
    assert "nothing to compare" in r.stderr and "K=5, 3 steps" in r.stderr
    r = _compare(run, runs["b1"], "--shots", "5", "--format", "json")
    assert [x["runs"] for x in json.loads(r.stdout)] == [["run"]]
    assert "no evaluation with K=5" in r.stderr and "K=10, 3 steps" in r.stderr


def test_an_unreadable_evaluation_is_named_and_left_out(runs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    bad = _copy(runs["b1"], tmp_path / "bad")
    (bad / "eval.json").write_text("{not json")
    r = _compare(runs["b0"], bad, "--format", "csv")
    text = " ".join(r.stderr.split())
    assert f"{bad / 'eval.json'}: unreadable (not JSON" in text and "left out" in text
    assert "no evaluation yet" not in text
    assert len(list(csv.DictReader(io.StringIO(r.stdout)))) == 1  # stdout: the table only


def test_a_sweep_directory_stands_for_its_members(runs: dict[str, Path], tmp_path: Path
                                                  ) -> None:
    sweep = tmp_path / "sweep"
    _sweep_json(sweep, ["seed=0", "seed=1", "seed=2", "seed=3"])
    for m in ("seed=0", "seed=1"):
        _copy(runs["sweep"] / m, sweep / m)
    (_copy(runs["sweep"] / "seed=0", sweep / "seed=2") / "eval.json").unlink()
    fig = tmp_path / "c.svg"
    r = _compare(sweep, sweep / "seed=1", "--format", "json", "-o", fig)  # seed=1 once
    rec = json.loads(r.stdout)
    assert len(rec) == 1 and rec[0]["n"] == 2 and rec[0]["group"] == "maml sweep"
    text = " ".join(r.stderr.split())
    assert "seed=2: no evaluation yet" in text and "seed=3 have no run directory" in text
    assert fig.is_file()


def test_accuracy_is_compared_in_percent(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(runs["b0"], tmp_path / "cls")
    data = json.loads((run / "eval.json").read_text())
    for row in data["results"][0]["per_step"]:
        row["accuracy"] = {"n": 6, "diverged": 0, "mean": 0.5 + 0.01 * row["step"],
                           "ci95": 0.1, "median": 0.5, "std": 0.1}
    (run / "eval.json").write_text(json.dumps(data))
    rows = list(csv.DictReader(io.StringIO(_compare(run, "--format", "csv").stdout)))
    acc = next(x for x in rows if x["metric"] == "accuracy_pct")
    assert float(acc["mean"]) == pytest.approx(53.0) and float(acc["ci95_mean"]) == 10
    md = _compare(run, "--format", "md").stdout
    assert "accuracy % after 3 steps" in md and "| 53 ± – | 10 |" in md


def test_bad_options_are_one_error_line(runs: dict[str, Path], tmp_path: Path) -> None:
    for args, what in ((["--steps", "3,x"], "--steps"), (["-o", tmp_path / "c.txt"], "--output"),
                       (["--format", "md", "-o", tmp_path / "c.txt"], "--output")):
        r = _compare(runs["b0"], *args, ok=False)
        assert what in r.stderr and "Traceback" not in r.output
    assert not r.stdout
