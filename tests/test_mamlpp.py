"""The MAML++ options on MAML (Antoniou, Edwards & Storkey 2019), each against a hand-written
reference in float64: MSL, DA, LSLR, BNWB, BNRS and CA alone, all of them off (exactly
today's MAML), all of them on along every batching path, their validation, and a short
CLI run on Omniglot-format fixtures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import invoke, runner, train_omniglot_fixture
from resume_helpers import interrupted_and_resumed_equals_uninterrupted

from fewshot_cli.algorithms import Algorithm, Context, Support, TrainingProgress, algorithm_class
from fewshot_cli.algorithms.batching import Query
from fewshot_cli.algorithms.losses import accuracy
from fewshot_cli.algorithms.maml import MAML, msl_weights
from fewshot_cli.algorithms.params import Metrics, Params, param_key
from fewshot_cli.cli import app
from fewshot_cli.config import MAMLConfig, load_config, validate
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.errors import ConfigError
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SINE_SHAPE = TaskShape("regression", (1,), 1)
WAYS, SIZE = 5, 16
IMAGES = TaskShape("classification", (1, SIZE, SIZE), WAYS)


# ----------------------------------------------------------------------------- helpers
def sine_batch(tasks: int = 3, shots: int = 5, queries: int = 6, seed: int = 0) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    amp = 0.5 + 4 * torch.rand(tasks, 1, 1, generator=gen, dtype=torch.float64)
    phase = 3 * torch.rand(tasks, 1, 1, generator=gen, dtype=torch.float64)

    def points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = 10 * torch.rand(tasks, n, 1, generator=gen, dtype=torch.float64) - 5
        return x, amp * torch.sin(x - phase)

    return TaskBatch(*points(shots), *points(queries))


def image_batch(tasks: int = 3, shots: int = 1, queries: int = 2, seed: int = 1) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randn(tasks, n, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)

    def labels(k: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat(k).expand(tasks, -1).contiguous()

    return TaskBatch(images(WAYS * shots), labels(shots), images(WAYS * queries), labels(queries))


def mlp_maml(steps: int = 3, seed: int = 0, **options: Any) -> MAML:
    torch.manual_seed(seed)
    cfg = MAMLConfig(loss="mse", inner_lr=0.05, inner_steps=steps, **options)
    return MAML(MLP(1, 1, [5, 4]).double(), cfg, SINE_SHAPE)


def conv_maml(steps: int = 2, strided: bool = False, seed: int = 0, **options: Any) -> MAML:
    torch.manual_seed(seed)
    cfg = MAMLConfig(loss="cross_entropy", inner_lr=0.3, inner_steps=steps, **options)
    model = Conv4((1, SIZE, SIZE), WAYS, filters=3, strided=strided).double()
    return MAML(model, cfg, IMAGES).double()


def perturb(algo: Algorithm, names: tuple[str, ...], seed: int = 5, scale: float = 0.2) -> None:
    """Move the named (per-step) tensors away from their equal starting values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in list(algo.named_parameters()) + list(algo.named_buffers()):
            if any(k in n for k in names):
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
                if n.endswith("step_var"):
                    p.abs_()


def grads_of(algo: Algorithm, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(algo.named_parameters())
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), got)}


def meta_grads(algo: Algorithm, batch: TaskBatch, path: str, progress: TrainingProgress
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Metrics]:
    loss, metrics = algo.meta_loss(batch, path, progress)
    return loss.detach(), grads_of(algo, loss), metrics


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < tol, (k, (a[k] - b[k]).abs().max())


def hand_net(params: Params, x: torch.Tensor, strided: bool,
             norm: Callable[[int], tuple[Any, Any, Any, Any]] | None = None,
             conv_out: list[torch.Tensor] | None = None) -> torch.Tensor:
    """conv4 by hand with ``F.conv2d`` and ``F.batch_norm`` (plain autograd differentiates
    it exactly); ``norm(i)`` gives block i's batch norm (weight, bias, running mean, running
    variance), batch statistics where the mean is None; an MLP when there are no convs."""
    if "blocks.0.conv.weight" not in params:
        h = x
        for j in range(3):
            h = F.linear(h, params[f"layers.{j}.weight"], params[f"layers.{j}.bias"])
            h = torch.relu(h) if j < 2 else h
        return h
    h = x
    for i in range(4):
        h = F.conv2d(h, params[f"blocks.{i}.conv.weight"], params[f"blocks.{i}.conv.bias"],
                     stride=2 if strided else 1, padding=1)
        if conv_out is not None:
            conv_out.append(h.detach())
        w, b, mean, var = norm(i) if norm else (params[f"blocks.{i}.norm.weight"],
                                                params[f"blocks.{i}.norm.bias"], None, None)
        h = F.batch_norm(h, mean, var, w, b, training=mean is None, eps=1e-5)
        h = F.relu(h)
        if not strided:
            h = F.max_pool2d(h, 2)
    h = h.mean(dim=(2, 3)) if strided else h.flatten(1)
    return F.linear(h, params["head.weight"], params["head.bias"])


def task_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if y.dtype == torch.int64 else ((out - y) ** 2).mean()


def reference_objective(algo: MAML, batch: TaskBatch, *, strided: bool = False,
                        first_order: bool = False, weights: list[float] | None = None,
                        lr: Callable[[str, int], Any] | None = None,
                        norm: Callable[[int, int], Any] | None = None) -> torch.Tensor:
    """The MAML(++) objective task by task with plain autograd: inner SGD on the adapted
    parameters ``algo.adapted`` with step size ``lr(name, s)``; ``norm(s, i)`` block i's
    batch norm at step s; the query loss after the last step, or (``weights``) after every
    step, weighted."""
    params = dict(algo.model.named_parameters())
    steps = algo.inner_steps
    lr = lr or (lambda name, s: algo.inner_lr)
    total = 0.0
    for t in range(len(batch)):
        fast = {n: params[n] for n in algo.adapted}
        losses = []
        for s in range(steps):
            at = None if norm is None else (lambda i, s=s: norm(s, i))
            out = hand_net(fast, batch.support_x[t], strided, at)
            grads = torch.autograd.grad(task_loss(out, batch.support_y[t]), list(fast.values()),
                                        create_graph=not first_order)
            fast = {n: p - lr(n, s) * g for (n, p), g in zip(fast.items(), grads)}
            if weights is not None or s == steps - 1:
                out = hand_net(fast, batch.query_x[t], strided, at)
                losses.append(task_loss(out, batch.query_y[t]))
        total = total + (losses[-1] if weights is None else
                         sum(w * q for w, q in zip(weights, losses)))
    return total / len(batch)


# ----------------------------------------------------------------------------- all options off
class TodaysMAML(Algorithm):
    """MAML as it was before the MAML++ options, verbatim."""

    kind = "maml"
    paths = ("vmap", "loop", "fused")

    def inner_step(self, params: Params, state: None, support: Support, step: int,
                   ctx: Context) -> tuple[Params, None, Metrics]:
        create_graph = ctx.training and not getattr(self.cfg, "first_order", False)
        new, loss = self.sgd_step(params, support.x, support.y, self.inner_lr, create_graph, ctx)
        return new, None, {"inner_loss": loss}

    def task_objective(self, params: Params, support: Support, query: Query,
                       ctx: Context) -> tuple[torch.Tensor, Metrics]:
        adapted = self.adapt(params, support, self.inner_steps, ctx)
        out = self.forward(adapted.params, query.x, ctx)
        loss = self.per_task(self.loss_fn, out, query.y, ctx)
        metrics = dict(adapted.metrics)
        if ctx.progress is None or ctx.progress.logged:
            after = {k: v.detach() for k, v in adapted.params.items()}
            metrics["inner_loss_after"] = self.task_loss(after, support.x, support.y,
                                                         ctx).detach()
        if self.classification:
            metrics["accuracy"] = self.per_task(accuracy, out, query.y, ctx).detach()
        return loss, metrics


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_all_options_off_is_exactly_todays_maml(net: str) -> None:
    make = (lambda: mlp_maml(steps=2)) if net == "mlp" else (lambda: conv_maml(strided=True))
    batch = sine_batch() if net == "mlp" else image_batch()
    algo = make()
    today = TodaysMAML(make().model, algo.cfg, SINE_SHAPE if net == "mlp" else IMAGES)
    assert list(algo.state_dict()) == ["model." + k for k in today.model.state_dict()]
    assert algo.params().keys() == today.params().keys() and not algo.learns_step_sizes(algo.cfg)
    for path in algo.available_paths:
        a_loss, a_grads, a_metrics = meta_grads(algo, batch, path, TrainingProgress(1, 1))
        b_loss, b_grads, b_metrics = meta_grads(today, batch, path, TrainingProgress(1, 1))
        assert torch.equal(a_loss, b_loss)
        assert all(torch.equal(a_grads[k], b_grads[k]) for k in a_grads)
        assert a_metrics.keys() == b_metrics.keys()
        assert all(torch.equal(a_metrics[k], b_metrics[k]) for k in a_metrics)
        assert torch.equal(algo.adaptation_curve(batch, 3, path),
                           today.adaptation_curve(batch, 3, path))
    assert algo.configure_scheduler(algo.configure_optimizer(), 10) is None


def test_existing_configs_and_runs_are_unchanged() -> None:
    cfg = load_config(CONFIGS / "omniglot-5w1s-maml.yaml")
    section = cfg.to_dict()["algorithm"]
    assert not set(MAMLConfig.OPTIONS_OFF) & set(section)  # old checkpoints still match
    assert validate(cfg.to_dict(), "x") == cfg


# ----------------------------------------------------------------------------- MSL
def test_msl_weights_are_the_reference_codes() -> None:
    def code(steps: int, epochs: int, epoch: int) -> list[float]:
        # few_shot_learning_system.py, get_per_step_loss_importance_vector
        w = [1.0 / steps] * steps
        decay = 1.0 / steps / epochs
        floor = 0.03 / steps
        for i in range(steps - 1):
            w[i] = max(w[i] - epoch * decay, floor)
        w[-1] = min(w[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
        return w

    for steps in (1, 2, 5):
        for epoch in range(10):
            assert msl_weights(steps, epoch / 10) == pytest.approx(code(steps, 10, epoch),
                                                                    abs=1e-15)
            assert sum(msl_weights(steps, epoch / 10)) == pytest.approx(1.0)
    algo = mlp_maml(steps=4, msl_iterations=8)
    assert algo.msl_weights_at(TrainingProgress(1, 20)) == [0.25] * 4
    assert algo.msl_weights_at(TrainingProgress(8, 20)) == msl_weights(4, 7 / 8)
    assert algo.msl_weights_at(TrainingProgress(9, 20)) is None


def test_msl_loss_is_the_weighted_sum_of_every_steps_query_loss() -> None:
    algo = mlp_maml(steps=3, msl_iterations=8)
    batch = sine_batch()
    progress = TrainingProgress(3, 20)
    weights = msl_weights(3, 2 / 8)
    loss, grads, metrics = meta_grads(algo, batch, "loop", progress)
    want = reference_objective(algo, batch, weights=weights)
    assert abs(loss.item() - want.item()) < 1e-12
    close(grads, grads_of(algo, want))
    per_step = torch.stack([torch.stack(
        [reference_objective(mlp_maml(steps=s), TaskBatch(batch.support_x[t:t + 1],
                                                           batch.support_y[t:t + 1],
                                                           batch.query_x[t:t + 1],
                                                           batch.query_y[t:t + 1]))
         for s in (1, 2, 3)]) for t in range(3)]).mean(0)
    assert (metrics["query_loss_steps"] - per_step).abs().max() < 1e-12
    # after the MSL phase: MAML's loss, the last step's alone
    loss, grads, metrics = meta_grads(algo, batch, "loop", TrainingProgress(9, 20))
    plain_loss, plain_grads, _ = meta_grads(mlp_maml(steps=3), batch, "loop",
                                            TrainingProgress(9, 20))
    assert torch.equal(loss, plain_loss) and "query_loss_steps" not in metrics
    assert all(torch.equal(grads[k], plain_grads[k]) for k in grads)
    # evaluation is untouched by MSL
    assert torch.equal(algo.adaptation_curve(batch, 3, "loop"),
                       mlp_maml(steps=3).adaptation_curve(batch, 3, "loop"))


def test_msl_weights_are_logged() -> None:
    algo = mlp_maml(steps=3, msl_iterations=8)
    metrics = meta_update(algo, sine_batch(), "vmap", TrainingProgress(2, 20),
                          algo.configure_optimizer())
    assert metrics["msl_weights"].tolist() == pytest.approx(msl_weights(3, 1 / 8))


# ----------------------------------------------------------------------------- DA
def test_derivative_order_annealing_is_first_order_then_second_order() -> None:
    algo = mlp_maml(steps=2, first_order_iterations=4)
    batch = sine_batch()
    _, early, _ = meta_grads(algo, batch, "vmap", TrainingProgress(4, 20))
    _, late, _ = meta_grads(algo, batch, "vmap", TrainingProgress(5, 20))
    close(early, grads_of(algo, reference_objective(algo, batch, first_order=True)))
    close(late, grads_of(algo, reference_objective(algo, batch, first_order=False)))
    assert max((early[k] - late[k]).abs().max() for k in early) > 1e-4


# ----------------------------------------------------------------------------- LSLR
def test_lslr_steps_with_learned_per_tensor_per_step_rates_that_learn() -> None:
    algo = mlp_maml(steps=2, learned_inner_lrs=True)
    names = [n for n, _ in algo.model.named_parameters()]
    assert set(algo.inner_lrs) == {param_key(n) for n in names}
    assert all(torch.equal(r, torch.full((2,), 0.05, dtype=r.dtype))
               for r in algo.inner_lrs.values())
    perturb(algo, ("inner_lrs",), scale=0.02)
    batch = sine_batch()
    rate = lambda n, s: algo.inner_lrs[param_key(n)][s]  # noqa: E731
    _, got, _ = meta_grads(algo, batch, "vmap", TrainingProgress(1, 1))
    close(got, grads_of(algo, reference_objective(algo, batch, lr=rate)))
    assert all(got[f"inner_lrs.{param_key(n)}"].abs().min() > 0 for n in names)
    # evaluation: the learned rates as constants, the last step's for the steps beyond
    curve = algo.adaptation_curve(batch, 3, "loop")
    theta = {n: p.detach() for n, p in algo.model.named_parameters()}
    for t in range(3):
        fast = dict(theta)
        for s in range(3):
            fast = {n: p.requires_grad_() for n, p in fast.items()}
            loss = task_loss(hand_net(fast, batch.support_x[t], False), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: (p - rate(n, min(s, 1)) * g).detach()
                    for (n, p), g in zip(fast.items(), grads)}
            q = task_loss(hand_net(fast, batch.query_x[t], False), batch.query_y[t])
            assert abs(curve[t, s + 1, 0].item() - q.item()) < 1e-12
    # the step sizes are learned: inner_lr is their start only, eval --inner-lr is refused
    assert algo.learns_step_sizes(algo.cfg) and algorithm_class("maml").learns_step_sizes(algo.cfg)
    assert not algorithm_class("maml").learns_step_sizes(MAMLConfig())


# ----------------------------------------------------------------------------- BNWB
@pytest.mark.parametrize("strided", [False, True])
def test_bnwb_step_s_uses_its_own_batch_norm_weights(strided: bool) -> None:
    algo = conv_maml(steps=2, strided=strided, per_step_bn_weights=True)
    model = algo.model
    assert not any(".norm." in n for n in algo.adapted)  # not adapted in the inner loop
    assert model.blocks[0].norm.step_weight.shape == (2, 3)
    perturb(algo, ("step_weight", "step_bias"))
    batch = image_batch()

    def norm(s: int, i: int) -> tuple[Any, Any, None, None]:
        return model.blocks[i].norm.step_weight[s], model.blocks[i].norm.step_bias[s], None, None

    want = reference_objective(algo, batch, strided=strided, norm=norm)
    reference = grads_of(algo, want)
    for path in ("loop", "vmap", "fused"):
        loss, got, _ = meta_grads(algo, batch, path, TrainingProgress(1, 1))
        assert abs(loss.item() - want.item()) < 1e-12, path
        close(got, reference)
    for s in range(2):  # every step's set is trained
        assert got["model.blocks.0.norm.step_weight"][s].abs().min() > 0
    base = {k: v.detach() for k, v in algo.params().items()}
    one = Support(batch.support_x[0], batch.support_y[0])
    after = algo.adapt(base, one, 1, Context(False)).params
    assert torch.equal(after["blocks.0.norm.weight"], model.blocks[0].norm.step_weight[0])
    assert not torch.equal(after["head.weight"], base["head.weight"])


# ----------------------------------------------------------------------------- BNRS
def test_bnrs_meta_training_still_uses_the_batch_statistics() -> None:
    algo = conv_maml(steps=2, per_step_bn_statistics=True, running_statistics_at_eval=True)
    plain = conv_maml(steps=2)
    batch = image_batch()
    for path in ("vmap", "fused"):
        a_loss, a_grads, _ = meta_grads(algo, batch, path, TrainingProgress(1, 1))
        b_loss, b_grads, _ = meta_grads(plain, batch, path, TrainingProgress(1, 1))
        assert abs(a_loss.item() - b_loss.item()) < 1e-12
        close(a_grads, b_grads, 1e-12)


@pytest.mark.parametrize("msl", [None, 5])
def test_bnrs_running_statistics_take_in_each_steps_passes(msl: int | None) -> None:
    algo = conv_maml(steps=2, per_step_bn_statistics=True, msl_iterations=msl)
    norms = algo.model.norms()
    perturb(algo, ("step_mean", "step_var"))
    before = [(n.step_mean.clone(), n.step_var.clone()) for n in norms]
    batch = image_batch()
    meta_update(algo, batch, "vmap", TrainingProgress(1, 10), algo.configure_optimizer())
    # by hand: adapt each task, recording the conv outputs of every pass
    theta = {n: p.detach() for n, p in conv_maml(steps=2).model.named_parameters()}
    sums = torch.zeros(2, 4, 2, 3, dtype=torch.float64)
    passes = torch.tensor([2.0 if msl else 1.0, 2.0], dtype=torch.float64)

    def add(step: int, conv_out: list[torch.Tensor]) -> None:
        for i, h in enumerate(conv_out):
            sums[step, i, 0] += h.mean(dim=(0, 2, 3))
            sums[step, i, 1] += h.var(dim=(0, 2, 3), correction=1)

    for t in range(len(batch)):
        fast = dict(theta)
        for s in range(2):
            fast = {n: p.requires_grad_() for n, p in fast.items()}
            conv_out: list[torch.Tensor] = []
            out = hand_net(fast, batch.support_x[t], False, conv_out=conv_out)
            add(s, conv_out)
            grads = torch.autograd.grad(task_loss(out, batch.support_y[t]), list(fast.values()))
            fast = {n: (p - 0.3 * g).detach() for (n, p), g in zip(fast.items(), grads)}
            if msl or s == 1:
                conv_out = []
                hand_net(fast, batch.query_x[t], False, conv_out=conv_out)
                add(s, conv_out)
    mean = sums / (passes.view(2, 1, 1, 1) * len(batch))
    keep = (0.9 ** (passes * len(batch))).view(2, 1)
    for i, norm in enumerate(norms):
        assert (norm.step_mean - (keep * before[i][0] + (1 - keep) * mean[:, i, 0])).abs().max() \
            < 1e-12
        assert (norm.step_var - (keep * before[i][1] + (1 - keep) * mean[:, i, 1])).abs().max() \
            < 1e-12


def test_bnrs_evaluation_uses_the_batch_statistics_as_the_papers_code() -> None:
    algo = conv_maml(steps=2, per_step_bn_statistics=True)
    perturb(algo, ("step_mean", "step_var"), scale=0.5)
    batch = image_batch(tasks=2, queries=3)
    assert torch.equal(algo.adaptation_curve(batch, 3, "loop"),
                       conv_maml(steps=2).adaptation_curve(batch, 3, "loop"))


def test_running_statistics_at_eval_normalise_step_s_with_set_s_not_transductively() -> None:
    algo = conv_maml(steps=2, per_step_bn_statistics=True, running_statistics_at_eval=True)
    model = algo.model
    perturb(algo, ("step_mean", "step_var"), scale=0.5)
    batch = image_batch(tasks=2, queries=3)
    curve = algo.adaptation_curve(batch, 3, "loop")
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def running(s: int) -> Callable[[int], tuple[Any, ...]]:
        s = min(s, 1)
        return lambda i: (None, None, model.blocks[i].norm.step_mean[s],
                          model.blocks[i].norm.step_var[s])

    def net(p: Params, x: torch.Tensor, s: int) -> torch.Tensor:
        at = running(s)
        return hand_net(p, x, False, lambda i: (p[f"blocks.{i}.norm.weight"],
                                                p[f"blocks.{i}.norm.bias"], *at(i)[2:]))

    for t in range(2):
        fast = dict(theta)
        q = task_loss(net(fast, batch.query_x[t], 0), batch.query_y[t])
        assert abs(curve[t, 0, 0].item() - q.item()) < 1e-12  # before adapting: set 0
        for s in range(3):  # step s's support pass and the query pass after it: set s
            fast = {n: p.requires_grad_() for n, p in fast.items()}
            loss = task_loss(net(fast, batch.support_x[t], s), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: (p - 0.3 * g).detach() for (n, p), g in zip(fast.items(), grads)}
            q = task_loss(net(fast, batch.query_x[t], s), batch.query_y[t])
            assert abs(curve[t, s + 1, 0].item() - q.item()) < 1e-12, (t, s)
    # a query's prediction does not depend on the other queries
    params = algo.adapt_one(batch, 0, 2)
    alone = algo.predict(params, batch.query_x[0, :1])
    together = algo.predict(params, batch.query_x[0])
    assert (alone[0] - together[0]).abs().max() < 1e-12
    fused = algo.adaptation_curve(batch, 3, "fused")
    vmap = algo.adaptation_curve(batch, 3, "vmap")
    assert (fused - curve).abs().max() < 1e-10 and (vmap - curve).abs().max() < 1e-10


# ----------------------------------------------------------------------------- CA
def test_cosine_annealed_meta_learning_rate() -> None:
    algo = mlp_maml(cosine_meta_lr=True, meta_lr_final=1e-4)
    optimizer = algo.configure_optimizer()
    scheduler = algo.configure_scheduler(optimizer, 10)
    for t in range(1, 11):  # as the trainer: the rate of iteration t, then one step
        want = 1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * (t - 1) / 10)) / 2
        assert optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
        optimizer.step()
        scheduler.step()


# ----------------------------------------------------------------------------- all options on
@pytest.mark.parametrize("strided", [False, True])
def test_all_options_on_every_path_agrees(strided: bool) -> None:
    options = dict(msl_iterations=10, first_order_iterations=1, per_step_bn_weights=True,
                   per_step_bn_statistics=True, running_statistics_at_eval=True,
                   learned_inner_lrs=True, cosine_meta_lr=True)
    batch = image_batch(tasks=3, queries=2)
    results = {}
    for path in ("loop", "vmap", "fused"):
        algo = conv_maml(steps=2, strided=strided, **options)
        perturb(algo, ("step_", "inner_lrs"), scale=0.05)
        loss, grads, metrics = meta_grads(algo, batch, path, TrainingProgress(2, 20))
        optimizer = algo.configure_optimizer()
        meta_update(algo, batch, path, TrainingProgress(1, 20), optimizer)
        meta_update(algo, batch, path, TrainingProgress(2, 20), optimizer)
        results[path] = (loss, grads, metrics, dict(algo.state_dict()),
                         algo.adaptation_curve(batch, 3, path))
    ref = results["loop"]
    for path, (loss, grads, metrics, state, curve) in results.items():
        assert abs(loss.item() - ref[0].item()) < 1e-12, path
        close(grads, ref[1])
        close(metrics, ref[2])
        close(state, ref[3])
        assert (curve - ref[4]).abs().max() < 1e-10, path


# ----------------------------------------------------------------------------- config and CLI
def test_options_are_validated() -> None:
    sine = validate({"algorithm": {"per_step_bn_weights": True}}, "x")
    with pytest.raises(ConfigError, match="algorithm.per_step_bn_weights: needs model.kind "
                       "conv4 with batch_norm: true"):
        build_experiment(sine, torch.device("cpu"))
    no_bn = validate({"task": {"kind": "image_folder", "image_size": 16},
                      "model": {"batch_norm": False},
                      "algorithm": {"per_step_bn_statistics": True}}, "x")
    with pytest.raises(ConfigError, match="algorithm.per_step_bn_statistics"):
        MAML(Conv4((3, 16, 16), 5, 4, batch_norm=False), no_bn.algorithm, IMAGES)
    with pytest.raises(ConfigError, match="first_order_iterations.*needs first_order: false"):
        validate({"algorithm": {"first_order": True, "first_order_iterations": 10}}, "x")
    with pytest.raises(ConfigError, match="running_statistics_at_eval needs "
                       "per_step_bn_statistics: true"):
        validate({"algorithm": {"running_statistics_at_eval": True}}, "x")
    with pytest.raises(ConfigError, match="algorithm.msl_iterations"):
        validate({"algorithm": {"msl_iterations": 0}}, "x")
    with pytest.raises(ConfigError, match="algorithm.meta_lr_final"):
        validate({"algorithm": {"cosine_meta_lr": True, "meta_lr_final": -1}}, "x")


def test_config_holds_the_papers_settings() -> None:
    cfg = load_config(CONFIGS / "omniglot-5w1s-mamlpp.yaml")
    a = cfg.algorithm
    assert (a.kind, a.inner_steps, a.eval_inner_steps, a.inner_lr, a.meta_batch) == (
        "maml", 5, 5, 0.1, 8)
    assert (a.msl_iterations, a.first_order_iterations) == (5000, None)
    assert a.per_step_bn_weights and a.per_step_bn_statistics and a.learned_inner_lrs
    assert (a.cosine_meta_lr, a.meta_lr, a.meta_lr_final) == (True, 0.001, 1e-5)
    assert cfg.train.iterations == 50000 and not cfg.model.strided
    assert (cfg.task.shots, cfg.task.queries, cfg.eval.steps) == (1, 1, 5)


def test_cli_omniglot_fixture_train_eval_plot(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-mamlpp.yaml", "mamlpp",
                                 algorithm__inner_steps=2, algorithm__eval_inner_steps=2,
                                 algorithm__msl_iterations=2)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [2, 4]
    train_rows = [r for r in rows if "loss" in r]
    assert "msl_weights" in train_rows[0] and "msl_weights" not in train_rows[-1]
    assert train_rows[-1]["meta_lr"] < train_rows[0]["meta_lr"] < 1e-3  # cosine
    invoke("eval", str(run), "--tasks", "6", "--steps", "3", "--checkpoint", "last")
    result = json.loads((run / "eval.json").read_text())["results"][0]
    assert result["settings"]["inner_lr"] is None and result["per_step"][3]["accuracy"]["n"] == 6
    refused = runner.invoke(app, ["eval", str(run), "--inner-lr", "0.1"])
    assert refused.exit_code != 0 and "learns its step sizes" in refused.output
    invoke("plot", str(run))
    assert (run / "plots" / "metrics.png").stat().st_size > 0


def test_stopped_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "sine-maml.yaml", [
        "train.iterations=4", "train.log_every=2", "train.val_every=2", "train.val_tasks=3",
        "train.checkpoint_every=2", "algorithm.meta_batch=3", "algorithm.inner_steps=2",
        "algorithm.msl_iterations=3", "algorithm.first_order_iterations=1",
        "algorithm.learned_inner_lrs=true", "algorithm.cosine_meta_lr=true", "device=cpu"])
    interrupted_and_resumed_equals_uninterrupted(cfg, tmp_path, "vmap")
