"""Config loading: defaults, overrides, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewshot_cli.config import load_config
from fewshot_cli.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name


def test_sine_maml_matches_the_paper() -> None:
    cfg = load_config(CONFIGS / "sine-maml.yaml")
    assert cfg.task.amplitude == (0.1, 5.0) and cfg.task.x_range == (-5.0, 5.0)
    assert cfg.task.shots == 10 and cfg.model.hidden == [40, 40]
    a = cfg.algorithm
    assert (a.inner_lr, a.inner_steps, a.meta_batch, a.meta_lr) == (0.01, 1, 25, 1e-3)
    assert a.meta_optimizer == "adam" and a.loss == "mse"
    assert cfg.train.iterations == 70000 and cfg.eval.tasks == 600 and cfg.eval.steps == 10


def test_defaults_and_auto_loss(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "name: x\n"))
    assert cfg.task.kind == "sinusoid" and cfg.algorithm.loss == "mse"
    assert cfg.train.vectorize == "auto"


def test_overrides_are_yaml_typed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "name: x\n"),
                      ["algorithm.inner_lr=0.5", "train.iterations=7", "model.hidden=[8, 8]",
                       "algorithm.first_order=true"])
    assert cfg.algorithm.inner_lr == 0.5 and cfg.train.iterations == 7
    assert cfg.model.hidden == [8, 8] and cfg.algorithm.first_order is True


@pytest.mark.parametrize("text, overrides, expected", [
    ("algorithm:\n  inner_lrr: 0.1\n", [],
     "unknown key 'algorithm.inner_lrr' (did you mean 'inner_lr'?)"),
    ("task:\n  shots: 0\n", [], "task.shots: Input should be greater than or equal to 1"),
    ("algorithm:\n  inner_lr: -1\n", [], "algorithm.inner_lr: Input should be greater than 0"),
    ("train:\n  iterations: many\n", [], "train.iterations: Input should be a valid integer"),
    ("name: x\n", ["algorithm.inner_steps=0"], "algorithm.inner_steps"),
    ("task:\n  kind: sinewave\n", [], "task.kind: expected one of sinusoid, omniglot"),
    ("task:\n  amplitude: [5, 1]\n", [], "amplitude must be [low, high]"),
    ("traine:\n  iterations: 3\n", [], "unknown key 'traine' (did you mean 'train'?)"),
    ("device: gpu\n", [], "device must be auto, cpu, cuda or cuda:N"),
    ("task: [1, 2\n", [], "invalid YAML at line"),
    ("- just\n- a list\n", [], "expected a mapping of sections"),
    ("name: x\n", ["nonsense"], "expected section.key=value"),
    ("algorithm:\n  loss: cross_entropy\n", [], "loss must be mse or l1"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, overrides: list[str],
                                  expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    # an error in a --set value names the --set, not the file
    assert msg.startswith("--set" if overrides else str(path)), msg
    assert expected in msg, msg
    assert "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
