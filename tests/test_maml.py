"""MAML meta-gradients against independent computations, and vmap == loop."""

from __future__ import annotations

import pytest
import torch

from fewshot_cli.algorithms import Context, TrainingProgress
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import MAMLConfig, SinusoidTask
from fewshot_cli.models import MLP
from fewshot_cli.tasks.base import TaskShape
from fewshot_cli.tasks.sinusoid import SinusoidTasks

SINE_SHAPE = TaskShape("regression", (1,), 1)

EVAL = Context(training=False)


def _setup(steps: int = 2, first_order: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(1, 1, [5, 4]).double()
    algo = MAML(model, MAMLConfig(loss="mse", inner_lr=0.05, inner_steps=steps,
                                  first_order=first_order), SINE_SHAPE)
    batch = SinusoidTasks(SinusoidTask(shots=5, queries=6)).sample(
        3, torch.Generator().manual_seed(seed)).to("cpu", torch.float64)
    return algo, batch


def _meta_grad(algo: MAML, batch, mode: str) -> torch.Tensor:
    algo.zero_grad()
    loss, _ = algo.meta_loss(batch, mode, TrainingProgress(1, 1))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in algo.parameters()])


def _reference_objective(algo: MAML, batch, flat: torch.Tensor) -> torch.Tensor:
    """The MAML objective written with plain autograd and a hand-made MLP."""
    shapes = [p.shape for p in algo.parameters()]
    params, i = [], 0
    for s in shapes:
        n = s.numel()
        params.append(flat[i:i + n].view(s))
        i += n

    def net(ps, x):
        h = x
        for j in range(0, len(ps), 2):
            h = h @ ps[j].T + ps[j + 1]
            if j + 2 < len(ps):
                h = torch.relu(h)
        return h

    total = 0.0
    for t in range(len(batch)):
        fast = params
        for _ in range(algo.inner_steps):
            loss = ((net(fast, batch.support_x[t]) - batch.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [p - algo.inner_lr * g for p, g in zip(fast, grads)]
        total = total + ((net(fast, batch.query_x[t]) - batch.query_y[t]) ** 2).mean()
    return total / len(batch)


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_second_order_gradient_matches_finite_differences(mode: str) -> None:
    algo, batch = _setup(steps=2)
    got = _meta_grad(algo, batch, mode)
    flat = torch.cat([p.detach().flatten() for p in algo.parameters()])
    eps = 1e-6
    fd = torch.empty_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        with torch.enable_grad():
            plus = _reference_objective(algo, batch, (flat + e).requires_grad_())
            minus = _reference_objective(algo, batch, (flat - e).requires_grad_())
        fd[i] = (plus - minus) / (2 * eps)
    assert torch.allclose(got, fd, atol=1e-7, rtol=1e-5), (got - fd).abs().max()


def test_first_order_is_query_gradient_at_adapted_params() -> None:
    algo, batch = _setup(steps=2, first_order=True)
    got = _meta_grad(algo, batch, "loop")
    # Independent: adapt with detached gradients, then the query gradient at the adapted point.
    expected = torch.zeros_like(got)
    for t in range(len(batch)):
        fast = [p.detach().clone().requires_grad_() for p in algo.parameters()]
        names = [n for n, _ in algo.model.named_parameters()]
        for _ in range(algo.inner_steps):
            loss = algo.task_loss(dict(zip(names, fast)), batch.support_x[t], batch.support_y[t],
                                  EVAL)
            grads = torch.autograd.grad(loss, fast)
            fast = [(p - algo.inner_lr * g).detach().requires_grad_() for p, g in zip(fast, grads)]
        q = algo.task_loss(dict(zip(names, fast)), batch.query_x[t], batch.query_y[t], EVAL)
        expected += torch.cat([g.flatten() for g in torch.autograd.grad(q, fast)]) / len(batch)
    assert torch.allclose(got, expected, atol=1e-12)
    second, _ = _setup(steps=2, first_order=False)
    full = _meta_grad(second, batch, "loop")
    assert (full - got).abs().max() > 1e-4, "first-order should drop the Hessian terms"


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_loop_mlp(first_order: bool) -> None:
    algo, batch = _setup(steps=3, first_order=first_order, seed=3)
    a = _meta_grad(algo, batch, "vmap")
    b = _meta_grad(algo, batch, "loop")
    assert (a - b).abs().max() < 1e-10


def test_adaptation_curve_vmap_equals_loop_and_improves() -> None:
    algo, _ = _setup(steps=1, seed=4)
    # enough support points that descending on them must also help on the queries
    batch = SinusoidTasks(SinusoidTask(shots=50, queries=50)).sample(
        3, torch.Generator().manual_seed(4)).to("cpu", torch.float64)
    algo.inner_lr = 0.01
    a = algo.adaptation_curve(batch, 5, "vmap")
    b = algo.adaptation_curve(batch, 5, "loop")
    assert a.shape == (3, 6, 1)
    assert (a - b).abs().max() < 1e-10
    # the first query loss equals the un-adapted network's loss
    params = algo.params()
    first = algo.task_loss(params, batch.query_x[0], batch.query_y[0], EVAL)
    assert abs(a[0, 0, 0].item() - first.item()) < 1e-12
    # and adaptation helps: the mean query loss falls over the five steps
    assert a[:, 5, 0].mean() < 0.95 * a[:, 0, 0].mean()
