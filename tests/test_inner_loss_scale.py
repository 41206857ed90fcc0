"""``algorithm.inner_loss_reduction: sum/K``: the first inner step equals the reference
MAML's (cbfinn/maml), whose support loss is each example's cross-entropy divided by K and
summed by ``tf.gradients``; ``mean`` takes a step N times smaller at the same step size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot_cli.algorithms import Context, Support
from fewshot_cli.algorithms.anil import ANIL
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import ANILConfig, MAMLConfig, load_config
from fewshot_cli.models.conv4 import Conv4
from fewshot_cli.tasks.base import TaskShape

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
