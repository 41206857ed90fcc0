"""The cheap per-task machinery: ``Algorithm.forward``'s parameter swap, plain-autograd
inner steps, and conv4's fused forward in groups of tasks."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from fewshot_cli.algorithms import Context, TrainingProgress
from fewshot_cli.algorithms.batching import Support
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import MAMLConfig
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

EVAL = Context(training=False)


def _mlp_algo() -> MAML:
    torch.manual_seed(0)
    return MAML(MLP(1, 1, [5, 4]).double(), MAMLConfig(loss="mse", inner_lr=0.05),
                TaskShape("regression", (1,), 1))


def test_forward_equals_functional_call_and_restores_the_network() -> None:
    algo = _mlp_algo()
    own = {k: v.clone() for k, v in algo.model.state_dict().items()}
    params = {k: v.detach() + 0.1 for k, v in algo.params().items()}
    x = torch.randn(7, 1, dtype=torch.float64)
    out, hidden = algo.forward(params, x, EVAL, hidden=True)
    ref, ref_hidden = functional_call(algo.model, params, (x,), {"return_hidden": True})
    assert torch.equal(out, ref) and all(torch.equal(a, b) for a, b in zip(hidden, ref_hidden))
    assert all(torch.equal(own[k], v) for k, v in algo.model.state_dict().items())
    assert all(isinstance(p, torch.nn.Parameter) for p in algo.model.parameters())


def test_forward_follows_a_replaced_submodule_and_restores_after_an_error() -> None:
    algo = _mlp_algo()
    x = torch.randn(3, 1, dtype=torch.float64)
    algo.forward(algo.params(), x, EVAL)  # builds the name table
    algo.model.layers[2] = torch.nn.Linear(4, 1).double()
    params = {k: v.detach() * 2 for k, v in algo.params().items()}
    assert torch.equal(algo.forward(params, x, EVAL), functional_call(algo.model, params, (x,)))
    before = dict(algo.model.named_parameters())
    with pytest.raises(RuntimeError):
        algo.forward({**params, "layers.0.weight": torch.zeros(2, 2, dtype=torch.float64)}, x,
                     EVAL)
    assert all(v is before[k] for k, v in algo.model.named_parameters())


def test_inner_step_without_grad_mode_equals_with_it() -> None:
    """Under ``no_grad`` (a checkpointed step's first pass) the step gives the same numbers,
    out of any graph."""
    algo = _mlp_algo()
    x = torch.randn(6, 1, dtype=torch.float64)
    s = Support(x, torch.sin(x))
    params = {k: v.detach() for k, v in algo.params().items()}
    a, _, ma = algo.inner_step(params, None, s, 0, EVAL)
    with torch.no_grad():
        b, _, mb = algo.inner_step(params, None, s, 0, EVAL)
    assert all(torch.equal(a[k], b[k]) and b[k].grad_fn is None for k in a)
    assert torch.equal(ma["inner_loss"], mb["inner_loss"])


@pytest.mark.parametrize("strided", [False, True])
def test_forward_tasks_in_groups_equals_all_at_once(strided: bool) -> None:
    torch.manual_seed(0)
    model = Conv4((2, 17, 17), 5, filters=3, strided=strided).double()
    params = {k: v.detach() + 0.1 * torch.randn(5, *v.shape, dtype=torch.float64)
              for k, v in model.named_parameters()}
    params["head.bias"] = model.head.bias.detach()  # shared by all tasks
    x = torch.randn(5, 7, 2, 17, 17, dtype=torch.float64)
    whole = model.forward_tasks(params, x, return_hidden=True, return_stats=True)
    model.task_group_bytes = 1  # one task per group
    assert model._task_group(x) == 1
    grouped = model.forward_tasks(params, x, return_hidden=True, return_stats=True)
    assert torch.equal(whole[0], grouped[0]) and torch.equal(whole[2], grouped[2])
    assert all(torch.equal(a, b) for a, b in zip(whole[1], grouped[1]))


def test_tasks_are_grouped_on_cpu_only() -> None:
    model = Conv4((1, 28, 28), 5, filters=64, strided=True)
    model.task_group_bytes = 1
    assert model._task_group(torch.empty(32, 80, 1, 28, 28)) == 1
    # on a GPU (here the meta device) every task goes in one launch
    assert model._task_group(torch.empty(32, 80, 1, 28, 28, device="meta")) == 32


def test_fused_meta_gradient_in_groups_equals_loop() -> None:
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 5, filters=4, strided=True).double()
    algo = MAML(model, MAMLConfig(loss="cross_entropy", inner_lr=0.4, inner_steps=2),
                TaskShape("classification", (1, 16, 16), 5))
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(5).repeat(2).expand(3, -1).contiguous()
    batch = TaskBatch(torch.randn(3, 10, 1, 16, 16, generator=gen, dtype=torch.float64), labels,
                      torch.randn(3, 10, 1, 16, 16, generator=gen, dtype=torch.float64), labels)

    def grad(path: str) -> torch.Tensor:
        algo.zero_grad(set_to_none=True)
        algo.meta_loss(batch, path, TrainingProgress(1, 1))[0].backward()
        return torch.cat([p.grad.flatten() for p in algo.parameters()])

    model.task_group_bytes = 1
    assert (grad("fused") - grad("loop")).abs().max() < 1e-10
