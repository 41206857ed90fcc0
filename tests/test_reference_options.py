"""The reference MAML's (cbfinn/maml) settings as options: ``inner_loss_reduction: sum/K``
(its support loss is each example's cross-entropy divided by K and summed by
``tf.gradients``; ``mean`` takes a step N times smaller at the same step size),
``inner_adapts_batch_norm: false`` and ``meta_grad_clip_value``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot_cli.algorithms import Context, Support, TrainingProgress
from fewshot_cli.algorithms.anil import ANIL
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import ANILConfig, MAMLConfig, load_config
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.models.conv4 import Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

WAYS, SHOTS = 20, 1
SHAPE = TaskShape("classification", (1, 28, 28), WAYS)
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(WAYS * SHOTS, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(WAYS).repeat_interleave(SHOTS)
    return x, y


def _reference_step(model: Conv4, x: torch.Tensor, y: torch.Tensor, lr: float,
                    names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """One SGD step on the reference's loss: sum over the support set of CE / K."""
    params = dict(model.named_parameters())
    chosen = {k: v for k, v in params.items() if names is None or k in names}
    out = torch.func.functional_call(model, params, (x,))
    loss = (F.cross_entropy(out, y, reduction="none") / SHOTS).sum()
    grads = torch.autograd.grad(loss, list(chosen.values()))
    return {k: v - lr * g for (k, v), g in zip(chosen.items(), grads)}


@pytest.mark.parametrize("kind", ["maml", "anil"])
def test_sum_over_k_takes_the_reference_step(kind: str) -> None:
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), WAYS, filters=8).double()
    lr = 0.1  # the reference's alpha at 20-way
    x, y = _task()
    names = model.head_names if kind == "anil" else None
    expected = _reference_step(model, x, y, lr, names)
    steps = {}
    for reduction in ("sum/K", "mean"):
        if kind == "maml":
            algo = MAML(model, MAMLConfig(loss="cross_entropy", inner_lr=lr, inner_steps=1,
                                          inner_loss_reduction=reduction), SHAPE)
        else:
            algo = ANIL(model, ANILConfig(loss="cross_entropy", inner_lr=lr, inner_steps=1,
                                          inner_loss_reduction=reduction), SHAPE)
        adapted = algo.adapt(algo.params(), Support(x, y), 1, Context(training=False)).params
        steps[reduction] = {k: adapted[k] for k in expected}
    start = dict(model.named_parameters())
    for k, want in expected.items():
        torch.testing.assert_close(steps["sum/K"][k], want, rtol=1e-9, atol=1e-12)
        # the mean's step is N times smaller
        torch.testing.assert_close(start[k] - steps["mean"][k],
                                   (start[k] - want) / WAYS, rtol=1e-7, atol=1e-12)


def test_the_setting_is_left_out_at_its_default_and_checked() -> None:
    cfg = load_config(ROOT / "configs" / "omniglot-20w1s-maml.yaml")
    assert "inner_loss_reduction" not in cfg.to_dict()["algorithm"]
    cfg = load_config(ROOT / "configs" / "omniglot-20w1s-maml.yaml",
                      ["algorithm.inner_loss_reduction=sum/K"])
    assert cfg.to_dict()["algorithm"]["inner_loss_reduction"] == "sum/K"
    with pytest.raises(Exception, match="inner_loss_reduction"):
        load_config(ROOT / "configs" / "omniglot-20w1s-maml.yaml",
                    ["algorithm.inner_loss_reduction=sum"])


def test_batch_norm_can_stay_out_of_the_inner_loop() -> None:
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), WAYS, filters=4).double()
    x, y = _task()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    for adapts in (True, False):
        algo = MAML(model, MAMLConfig(loss="cross_entropy", inner_lr=0.1, inner_steps=2,
                                      inner_adapts_batch_norm=adapts), SHAPE)
        adapted = algo.adapt(algo.params(), Support(x, y), 2, Context(training=False)).params
        for k, v in adapted.items():
            moved = not torch.equal(v, start[k])
            assert moved == (adapts or ".norm." not in k), k
    # the scale and offset are still meta-learned
    algo.zero_grad()
    batch = TaskBatch(x[None], y[None], x[None], y[None])
    loss, _ = algo.meta_loss(batch, "loop", TrainingProgress(1, 1))
    loss.backward()
    assert model.blocks[0].norm.weight.grad.abs().sum() > 0


def test_meta_gradients_are_clipped_elementwise() -> None:
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), WAYS, filters=4).double()
    x, y = _task()
    batch = TaskBatch(x[None], y[None], x[None], y[None])
    algo = MAML(model, MAMLConfig(loss="cross_entropy", inner_lr=0.1, meta_grad_clip_value=1e-4),
                SHAPE)
    opt = torch.optim.SGD(algo.parameters(), lr=0.0)
    meta_update(algo, batch, "loop", TrainingProgress(1, 1), opt)
    grads = torch.cat([p.grad.flatten() for p in algo.parameters()])
    assert grads.abs().max() <= 1e-4 and (grads.abs() == 1e-4).any()


def test_reference_initialisation() -> None:
    from fewshot_cli.models import build

    for strided in (True, False):
        cfg = load_config(ROOT / "configs" / "omniglot-5w1s-maml.yaml",
                          ["model.init=reference", f"model.strided={str(strided).lower()}",
                           "model.filters=32"]).model
        source = TaskShape("classification", (1, 28, 28), 5)
        torch.manual_seed(0)
        model = build(cfg, source)
        conv = model.blocks[1].conv.weight.detach()
        bound = (6 / (9 * 32 + 9 * 32)) ** 0.5  # Xavier-uniform, fan in and out 3 x 3 x 32
        assert conv.abs().max() <= bound and conv.abs().max() > 0.9 * bound
        assert all(not b.conv.bias.detach().any() for b in model.blocks)
        head = model.head.weight.detach()
        if strided:
            assert 0.8 < float(head.std()) < 1.2  # N(0, 1)
        else:
            assert head.abs().max() <= (6 / (head.shape[0] + head.shape[1])) ** 0.5
        assert not model.head.bias.detach().any()
    assert "init" not in load_config(ROOT / "configs" / "omniglot-5w1s-maml.yaml"
                                     ).to_dict()["model"]


def test_batch_norm_without_a_scale_on_every_path() -> None:
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), WAYS, filters=4, batch_norm_scale=False).double()
    assert not any(".norm.weight" in n for n, _ in model.named_parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, WAYS, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(WAYS).expand(2, -1).contiguous()
    batch = TaskBatch(x, y, x, y)
    algo = MAML(model, MAMLConfig(loss="cross_entropy", inner_lr=0.1,
                                  inner_adapts_batch_norm=False), SHAPE)
    losses = {}
    for path in ("loop", "vmap", "fused"):
        losses[path] = algo.meta_loss(batch, path, TrainingProgress(1, 1))[0]
    torch.testing.assert_close(losses["loop"], losses["vmap"])
    torch.testing.assert_close(losses["loop"], losses["fused"])
    with pytest.raises(Exception, match="batch_norm_scale"):
        MAML(Conv4((1, 28, 28), WAYS, filters=4, batch_norm_scale=False),
             MAMLConfig(loss="cross_entropy", per_step_bn_weights=True), SHAPE)
