"""Provenance in meta.json: the code's commit and whether it was dirty, the config's
digest, the data's fingerprint, and a resume that says when the data changed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_helpers import runner, sets
from image_fixtures import make_image_folder, make_omniglot

from fewshot_cli import provenance
from fewshot_cli.cli import app
from fewshot_cli.config import ImageFolderTask, OmniglotTask
from fewshot_cli.tasks import build

ROOT = Path(__file__).resolve().parents[1]
SINE = ROOT / "configs" / "sine-maml.yaml"


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_git_state_names_the_commit_and_whether_tracked_files_changed(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "__init__.py").write_text("x = 1\n")
    assert provenance.git_state(tmp_path) is None  # the package is not tracked
    _git(tmp_path, "add", "__init__.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / "notes.txt").write_text("untracked files do not make a tree dirty\n")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "__init__.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": True}


def test_a_run_records_its_config_digest_and_data(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(SINE), "--run-dir", str(run), "--no-progress",
                            *sets(train__iterations=3, train__val_tasks=2)])
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "meta.json").read_text())
    prov = meta["provenance"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert prov["config_sha256"] == provenance.config_digest(config)
    assert prov["data"]["kind"] == "sinusoid" and len(prov["data"]["sha256"]) == 64
    assert prov["fewshot"] == meta["fewshot"]
    other = provenance.config_digest({**config, "seed": config["seed"] + 1})
    assert other != prov["config_sha256"]
    listed = runner.invoke(app, ["ls", str(tmp_path)])
    git = prov["git"]
    label = "-" if git is None else git["commit"][:8] + ("+" if git["dirty"] else "")
    assert listed.exit_code == 0 and f" {label}" in listed.output.splitlines()[1]


def test_image_fingerprint_follows_the_files_not_the_folder(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "a")
    first = build(ImageFolderTask(root=str(tmp_path / "a"), ways=3, shots=1, queries=1,
                                  cache_dir=str(tmp_path / "cache"))).fingerprint()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = build(ImageFolderTask(root=str(tmp_path / "b"), ways=3, shots=1, queries=1,
                                  cache_dir=str(tmp_path / "cache"))).fingerprint()
    assert moved == first
    assert first["files"]["classes"] == 12 and first["files"]["files"] == 60
    assert first["splits"]["train"]["classes"] == 5
    (tmp_path / "b" / "train" / "class_00" / "img_0.png").rename(
        tmp_path / "b" / "train" / "class_00" / "img_9.png")
    renamed = build(ImageFolderTask(root=str(tmp_path / "b"), ways=3, shots=1, queries=1,
                                    cache_dir=str(tmp_path / "cache"))).fingerprint()
    assert renamed["files"]["sha256"] != first["files"]["sha256"]
    assert renamed["splits"] == first["splits"]
    changes = provenance.data_changes(first, renamed)
    assert len(changes) == 1 and changes[0].startswith("files.sha256: ")


def test_omniglot_fingerprint_has_each_split_class_list(tmp_path: Path) -> None:
    data = make_omniglot(tmp_path / "data", background=(2, 5), evaluation=(2, 4), drawers=3)
    cfg = dict(root=str(data), cache_dir=str(tmp_path / "cache"), train_classes=13,
               val_classes=5, ways=3, shots=1, queries=1)
    one = build(OmniglotTask(**cfg)).fingerprint()
    assert one["kind"] == "omniglot" and one["files"]["files"] == 18 * 3
    assert {s: one["splits"][s]["classes"] for s in one["splits"]} == {
        "train": 8 * 4, "val": 5, "test": 5}
    other = build(OmniglotTask(**{**cfg, "split_seed": 2})).fingerprint()
    assert other["files"] == one["files"] and other["splits"] != one["splits"]


def test_resume_says_when_the_data_changed(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    base = ["train", str(ROOT / "configs" / "omniglot-5w1s-maml.yaml"), "--run-dir", str(run),
            "--no-progress",
            *sets(task={"kind": "image_folder", "root": str(data), "ways": 3, "shots": 1,
                        "queries": 1, "image_size": 8, "channels": 3,
                        "cache_dir": str(tmp_path / "cache")},
                  model__filters=2, algorithm__meta_batch=2, train__iterations=4,
                  train__max_seconds=0.001, train__val_tasks=2, train__vectorize="loop",
                  device="cpu")]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "stopped at train.max_seconds"
    assert meta["provenance"]["data"]["files"]["files"] == 60
    r = runner.invoke(app, ["train", "--resume", str(run), "--no-progress"])  # same data
    assert "differs from what the run was trained on" not in r.output
    extra = data / "train" / "class_00" / "img_5.png"
    shutil.copy(data / "train" / "class_00" / "img_0.png", extra)
    r = runner.invoke(app, ["train", "--resume", str(run), "--no-progress",
                            "--set", "train.max_seconds=null"])
    assert r.exit_code == 0, r.output
    assert "the data differs from what the run was trained on (files.bytes" in r.output
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed"
    assert meta["resumed"][-1]["data"]["files"]["files"] == 61
