"""``train.query_batch: per_class``: meta-training passes each task's queries through the
network in batches of one image per class, the same on every path, and it is what the
outer loss of separate per-batch passes is; validation follows ``eval.query_batch``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.algorithms.anil import ANIL
from fewshot_cli.algorithms.batching import Context, split
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import ANILConfig, MAMLConfig, validate
from fewshot_cli.errors import ConfigError
from fewshot_cli.models import Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

WAYS, QUERIES, SIZE = 5, 3, 16
SHAPE = TaskShape("classification", (1, SIZE, SIZE), WAYS)


def _batch(tasks: int = 3, seed: int = 1) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randn(tasks, n, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)

    def labels(per_class: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat(per_class).expand(tasks, -1).contiguous()

    return TaskBatch(images(WAYS), labels(1), images(WAYS * QUERIES), labels(QUERIES))


def _maml(**options) -> MAML:
    torch.manual_seed(0)
    model = Conv4((1, SIZE, SIZE), WAYS, filters=4, strided=True).double()
    return MAML(model, MAMLConfig(loss="cross_entropy", inner_lr=0.4, **options), SHAPE)


def _meta(algo, batch: TaskBatch, path: str) -> tuple[float, torch.Tensor]:
    algo.zero_grad(set_to_none=True)
    loss, _ = algo.meta_loss(batch, path, TrainingProgress(1, 1))
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in algo.parameters()
                                   if p.grad is not None])


def _by_hand(algo: MAML, batch: TaskBatch) -> float:
    """The outer loss written out: adapt each task, then one forward pass per batch of one
    query per class, cross-entropy of all the queries."""
    support, query = split(batch)
    ctx = Context(training=True, progress=TrainingProgress(1, 1))
    losses = []
    for b in range(batch.support_x.shape[0]):
        one = type(support)(support.x[b], support.y[b])
        params = algo.adapt(algo.params(), one, algo.inner_steps, ctx).params
        outs = [algo.forward(params, query.x[b, i:i + WAYS], ctx)
                for i in range(0, WAYS * QUERIES, WAYS)]
        losses.append(torch.nn.functional.cross_entropy(torch.cat(outs), query.y[b]))
    return torch.stack(losses).mean().item()


def test_per_class_batches_are_separate_passes_and_change_the_loss() -> None:
    algo, batch = _maml(), _batch()
    whole, _ = _meta(algo, batch, "loop")
    algo.settings = dataclasses.replace(algo.settings, query_batch=WAYS)
    per_class, _ = _meta(algo, batch, "loop")
    assert abs(per_class - _by_hand(algo, batch)) < 1e-12
    assert abs(per_class - whole) > 1e-4  # batch norm saw other statistics


@pytest.mark.parametrize("options", [{}, {"inner_steps": 2, "first_order": True},
                                     {"per_step_bn_statistics": True, "msl_iterations": 5}])
def test_every_path_gives_the_same_meta_gradient(options: dict) -> None:
    algo, batch = _maml(**options), _batch()
    algo.settings = dataclasses.replace(algo.settings, query_batch=WAYS)
    loss, grad = _meta(algo, batch, "loop")
    for path in ("vmap", "fused"):
        other_loss, other = _meta(algo, batch, path)
        assert abs(other_loss - loss) < 1e-12, path
        assert (other - grad).abs().max() < 1e-10, path


def test_anil_fused_equals_loop() -> None:
    torch.manual_seed(0)
    model = Conv4((1, SIZE, SIZE), WAYS, filters=4, strided=True).double()
    algo = ANIL(model, ANILConfig(loss="cross_entropy", inner_lr=0.4), SHAPE)
    batch = _batch()
    whole, _ = _meta(algo, batch, "loop")
    algo.settings = dataclasses.replace(algo.settings, query_batch=WAYS)
    loss, grad = _meta(algo, batch, "loop")
    fused_loss, fused = _meta(algo, batch, "fused")
    assert abs(loss - whole) > 1e-4
    assert abs(fused_loss - loss) < 1e-12
    assert (fused - grad).abs().max() < 1e-10


def test_evaluation_is_not_affected() -> None:
    algo, batch = _maml(), _batch()
    before = algo.adaptation_curve(batch, 2, "loop")
    algo.settings = dataclasses.replace(algo.settings, query_batch=WAYS)
    assert torch.equal(algo.adaptation_curve(batch, 2, "loop"), before)


def test_regression_refuses_per_class() -> None:
    with pytest.raises(ConfigError, match="needs a classification task"):
        validate({"train": {"query_batch": "per_class"}}, "test")
