"""Running the CLI in-process from tests: ``invoke`` (must succeed), ``sets``
(``--set`` pairs from keyword arguments, ``__`` standing for ``.``) and
``train_omniglot_fixture`` (a few iterations of a bundled Omniglot config on fixture
images)."""

from __future__ import annotations

from pathlib import Path

from image_fixtures import make_omniglot
from typer.testing import CliRunner

from fewshot_cli.cli import app

runner = CliRunner()
#: A short sinusoid run: 10 iterations, validation and checkpoints every 5, on vmap.
SHORT = ["--set", "train.iterations=10", "--set", "train.log_every=5", "--set",
         "train.val_every=5", "--set", "train.val_tasks=4", "--set", "train.checkpoint_every=5",
         "--set", "algorithm.meta_batch=2", "--set", "device=cpu", "--set",
         "train.vectorize=vmap", "--no-progress"]


def invoke(*args: object) -> str:
    """Run ``fewshot ARGS``; its output, after asserting it succeeded."""
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def sets(**values: object) -> list[str]:
    """``--set key=value`` pairs, e.g. ``sets(train__iterations=4)``."""
    return [x for k, v in values.items() for x in ("--set", f"{k.replace('__', '.')}={v}")]


def train_omniglot_fixture(tmp_path: Path, config: Path, name: str = "omniglot",
                           drawers: int = 3, **settings: object) -> Path:
    """Train ``config`` for 4 iterations (validation and checkpoints every 2, meta-batch 2,
    4 filters, fused) on Omniglot-format fixture images; ``settings`` add or override
    ``--set`` keys. Returns the run directory."""
    data = make_omniglot(tmp_path / "data", background=(2, 5), evaluation=(2, 4),
                         drawers=drawers)
    run = tmp_path / name
    base = dict(task__root=data, task__cache_dir=tmp_path / "cache", task__train_classes=13,
                task__val_classes=5, train__iterations=4, train__val_every=2,
                train__val_tasks=3, train__log_every=2, train__checkpoint_every=2,
                algorithm__meta_batch=2, model__filters=4, train__vectorize="fused",
                device="cpu")
    invoke("train", str(config), "--run-dir", str(run), "--no-progress",
           *sets(**{**base, **settings}))
    return run
