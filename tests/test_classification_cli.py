"""Few-shot image classification through the CLI: real Omniglot (when present),
and the mini-ImageNet and image-folder layouts on generated fixtures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import invoke, runner, sets
from image_fixtures import make_image_folder, make_miniimagenet
from PIL import Image

from fewshot_cli.cli import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REAL_OMNIGLOT = Path(
    os.environ.get("FEWSHOT_OMNIGLOT")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
)


def test_short_omniglot_maml_run_learns(tmp_path: Path) -> None:
    if not (REAL_OMNIGLOT / "images_background").is_dir():
        pytest.skip(f"real Omniglot not found at {REAL_OMNIGLOT} (set FEWSHOT_OMNIGLOT)")
    run = tmp_path / "omniglot"
    invoke("train", str(CONFIGS / "omniglot-5w1s-maml.yaml"), "--run-dir", str(run),
           "--no-progress", *sets(task__root=REAL_OMNIGLOT, task__cache_dir=tmp_path / "cache",
                                  train__iterations=60, train__val_every=30, train__val_tasks=20,
                                  train__log_every=10, algorithm__meta_batch=8,
                                  train__vectorize="fused"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("accuracy" in r for r in rows if "loss" in r)
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [30, 60]
    invoke("eval", str(run), "--tasks", "100")
    result = json.loads((run / "eval.json").read_text())
    acc = [s["accuracy"]["mean"] for s in result["per_step"]]
    assert result["settings"]["query_batch"] == "all" and len(acc) == 4
    # chance is 20%; sixty small meta-batches already adapt far above it
    assert acc[0] < 0.35 and acc[3] > 0.5, acc
    invoke("eval", str(run), "--tasks", "20", "--queries", "3", "--query-batch", "per_class")
    per_class = json.loads((run / "eval.json").read_text())
    assert "3 batches of 5" in per_class["settings"]["protocol"]
    invoke("plot", str(run))
    for name in ("loss", "accuracy", "episode", "adaptation"):
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 200


@pytest.mark.parametrize("kind", ["miniimagenet", "image_folder"])
def test_fixture_datasets_train_eval_plot(kind: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    if kind == "miniimagenet":
        make_miniimagenet(data, size=24)
        config = CONFIGS / "miniimagenet-5w1s-maml.yaml"
        extra = sets(task__image_size=24, task__queries=1, eval__queries=1)
    else:
        make_image_folder(data, splits={"train": 6, "val": 5, "test": 5}, per_class=4, size=20)
        config = CONFIGS / "miniimagenet-5w1s-maml.yaml"
        extra = sets(task__kind="image_folder", task__image_size=20, task__queries=1,
                     eval__queries=1)
    run = tmp_path / "run"
    invoke("train", str(config), "--run-dir", str(run), "--no-progress",
           *sets(task__root=data, task__cache_dir=tmp_path / "cache", train__iterations=4,
                 train__val_every=2, train__val_tasks=3, train__log_every=2,
                 algorithm__inner_steps=1, algorithm__eval_inner_steps=2, model__filters=4,
                 train__vectorize="loop"), *extra)
    invoke("eval", str(run), "--tasks", "6")
    result = json.loads((run / "eval.json").read_text())
    assert result["per_step"][2]["accuracy"]["n"] == 6
    invoke("plot", str(run))
    assert (run / "plots" / "episode.png").is_file()


def test_missing_dataset_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    r = runner.invoke(app, ["train", str(CONFIGS / "miniimagenet-5w1s-maml.yaml"),
                            "--runs-root", str(runs), *sets(task__root=tmp_path / "nope")])
    assert r.exit_code == 1
    assert "error:" in r.output and "nope" in r.output
    assert not runs.exists()
