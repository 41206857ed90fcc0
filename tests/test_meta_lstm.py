"""The LSTM meta-learner (Ravi & Larochelle 2017): the update rule against SGD and against
an independent implementation, its size, the preprocessing, the absence of second-order
terms, batch norm across episodes, the clipped meta-update, and the CLI end to end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, runner, sets
from image_fixtures import make_miniimagenet
from PIL import Image
from torch.func import functional_call

from fewshot_cli.algorithms import Context, Support, TrainingProgress
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.algorithms.meta_lstm import MetaLSTM, SGDReference, preprocess
from fewshot_cli.cli import app
from fewshot_cli.config import MAMLConfig, MetaLSTMConfig, SinusoidTask
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape
from fewshot_cli.tasks.sinusoid import SinusoidTasks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
REAL_OMNIGLOT = Path(
    os.environ.get("FEWSHOT_OMNIGLOT")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
)
SINE_SHAPE = TaskShape("regression", (1,), 1)
EVAL = Context(training=False)


def sine_setup(steps: int = 3, inner_batch: int | None = None, hidden: list[int] | None = None,
               seed: int = 0, tasks: int = 3, shots: int = 5):
    torch.manual_seed(seed)
    model = MLP(1, 1, hidden or [5, 4]).double()
    algo = MetaLSTM(model, MetaLSTMConfig(loss="mse", inner_steps=steps, inner_batch=inner_batch),
                    SINE_SHAPE).double()
    batch = SinusoidTasks(SinusoidTask(shots=shots, queries=6)).sample(
        tasks, torch.Generator().manual_seed(seed)).to("cpu", torch.float64)
    return algo, batch


def conv_setup(steps: int = 2, inner_batch: int | None = None, seed: int = 0, size: int = 16):
    torch.manual_seed(seed)
    model = Conv4((1, size, size), 3, filters=3, strided=False).double()
    algo = MetaLSTM(model, MetaLSTMConfig(loss="cross_entropy", inner_steps=steps,
                                          inner_batch=inner_batch),
                    TaskShape("classification", (1, size, size), 3)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(2, 12, 1, size, size, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat(4).expand(2, -1).contiguous()
    return algo, TaskBatch(images[:, :6], labels[:, :6], images[:, 6:], labels[:, 6:])


def meta_grad(algo: MetaLSTM, batch: TaskBatch, path: str) -> dict[str, torch.Tensor]:
    algo.zero_grad()
    loss, _ = algo.meta_loss(batch, path, TrainingProgress(1, 1))
    loss.backward()
    return {k: p.grad.clone() for k, p in algo.named_parameters()}


# ----------------------------------------------------------------------------- the update rule
@pytest.mark.parametrize("inner_batch", [None, 2])
def test_gates_forced_to_alpha_and_one_give_sgd_exactly(inner_batch: int | None) -> None:
    """With W_I = W_F = 0, b_F large (f_t = 1 exactly) and b_I = logit(alpha), each update
    is theta - alpha * grad, bit for bit, whatever the first LSTM computes."""
    algo, batch = sine_setup(steps=4, inner_batch=inner_batch)
    with torch.no_grad():
        algo.cell.weight_forget.zero_()
        algo.cell.weight_input.zero_()
        algo.cell.bias_forget.fill_(50.0)
        algo.cell.bias_input.fill_(math.log(0.03 / 0.97))
    assert torch.sigmoid(algo.cell.bias_forget).item() == 1.0
    alpha = torch.sigmoid(algo.cell.bias_input).item()
    sgd = SGDReference(algo, alpha)
    base = {k: v.detach() for k, v in algo.params().items()}
    for t in range(len(batch)):
        support = Support(batch.support_x[t], batch.support_y[t])
        got = algo.adapt(base, support, 4, EVAL)
        want = sgd.adapt(base, support, 4, EVAL)
        assert all(torch.equal(got.params[k], want.params[k]) for k in base)
        assert torch.equal(got.metrics["inner_loss"], want.metrics["inner_loss"])
        assert torch.equal(got.metrics["input_gate"], torch.full((4,), alpha, dtype=torch.float64))
    if inner_batch is None:  # and plain SGD on the whole support set is MAML's inner loop
        maml = MAML(algo.model, MAMLConfig(loss="mse", inner_lr=alpha), SINE_SHAPE)
        support = Support(batch.support_x[0], batch.support_y[0])
        got = algo.adapt(base, support, 4, EVAL).params
        want = maml.adapt(base, support, 4, EVAL).params
        assert all(torch.equal(got[k], want[k]) for k in base)


def test_inner_gradient_clip_gives_sgd_on_the_clipped_gradient() -> None:
    """With the gates forced to SGD, ``inner_grad_clip`` c makes each update
    theta - alpha * clamp(grad, -c, c): it bites where the gradient is large only."""
    algo, batch = sine_setup(steps=1)
    algo.cfg.inner_grad_clip = 0.05
    with torch.no_grad():
        algo.cell.weight_forget.zero_()
        algo.cell.weight_input.zero_()
        algo.cell.bias_forget.fill_(50.0)
        algo.cell.bias_input.fill_(math.log(0.03 / 0.97))
    alpha = torch.sigmoid(algo.cell.bias_input).item()
    base = {k: v.detach() for k, v in algo.params().items()}
    support = Support(batch.support_x[0], batch.support_y[0])
    grads = torch.func.grad(lambda p: algo.task_loss(p, support.x, support.y, EVAL))(base)
    assert any(bool((g.abs() > 0.05).any()) for g in grads.values())  # the clip bites
    got = algo.adapt(base, support, 1, EVAL).params
    for k in base:
        assert torch.equal(got[k], base[k] - alpha * grads[k].clamp(-0.05, 0.05))


def test_support_batches_are_taken_in_turn() -> None:
    """inner_batch 2 of 5 support points: updates see points [0:2], [2:4], [4:5], [0:2]."""
    algo, batch = sine_setup(steps=4, inner_batch=2)
    seen = []
    real = algo.learner_gradient

    def spy(params, x, y, ctx):  # noqa: ANN001, ANN202
        seen.append(x[:, 0].clone())
        return real(params, x, y, ctx)

    algo.learner_gradient = spy  # type: ignore[method-assign]
    algo.adapt(algo.params(), Support(batch.support_x[0], batch.support_y[0]), 4, EVAL)
    xs = batch.support_x[0, :, 0]
    assert [s.tolist() for s in seen] == [xs[0:2].tolist(), xs[2:4].tolist(), xs[4:5].tolist(),
                                         xs[0:2].tolist()]


@pytest.mark.parametrize("make", [lambda: MLP(1, 1, [5]), lambda: MLP(1, 1, [40, 40]),
                                  lambda: Conv4((3, 84, 84), 5, filters=32)])
def test_meta_learner_size_does_not_depend_on_the_learner(make) -> None:  # noqa: ANN001
    model = make()
    conv = isinstance(model, Conv4)
    shape = TaskShape("classification", (3, 84, 84), 5) if conv else SINE_SHAPE
    algo = MetaLSTM(model, MetaLSTMConfig(loss="cross_entropy" if conv else "mse"), shape)
    own = sum(p.numel() for p in model.parameters())
    total = sum(p.numel() for p in algo.parameters())
    hidden = 20
    lstm = 4 * hidden * (4 + hidden) + 4 * hidden   # one LSTM over (loss, grad) x 2
    cell = 2 * (hidden + 2) + 2                     # W_F, W_I over [h, theta, gate]; b_F, b_I
    assert total - own == algo.meta_learner_parameters() == lstm + cell == 2046


def test_gate_biases_start_in_their_ranges() -> None:
    for seed in range(20):
        torch.manual_seed(seed)
        algo = MetaLSTM(MLP(1, 1, [5]), MetaLSTMConfig(loss="mse"), SINE_SHAPE)
        assert 4.0 <= algo.cell.bias_forget.item() <= 6.0
        assert -5.0 <= algo.cell.bias_input.item() <= -4.0
        assert algo.lstm.weight.abs().max() <= 0.01 and algo.cell.weight_input.abs().max() <= 0.01


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("p", [10.0, 5.0])
def test_preprocessing_matches_its_formula_on_both_branches_and_at_the_boundary(p: float) -> None:
    edge = math.exp(-p)
    x = torch.tensor([3.0, -0.2, 1e-3 * edge, -0.5 * edge, 0.0, edge, -edge,
                      edge * (1 - 1e-12), edge * (1 + 1e-12)], dtype=torch.float64)
    out = preprocess(x, p)
    assert out.shape == (9, 2)
    # |x| >= e^-p: (log|x| / p, sign x)
    assert out[0].tolist() == pytest.approx([math.log(3.0) / p, 1.0], abs=1e-15)
    assert out[1].tolist() == pytest.approx([math.log(0.2) / p, -1.0], abs=1e-15)
    # |x| < e^-p: (-1, e^p x)
    assert out[2].tolist() == pytest.approx([-1.0, 1e-3], abs=1e-15)
    assert out[3].tolist() == pytest.approx([-1.0, -0.5], abs=1e-15)
    assert out[4].tolist() == [-1.0, 0.0]
    # the boundary itself, both signs: (-1, +-1) by either branch
    assert out[5].tolist() == pytest.approx([-1.0, 1.0], abs=1e-14)
    assert out[6].tolist() == pytest.approx([-1.0, -1.0], abs=1e-14)
    # continuous across it
    assert torch.allclose(out[7], out[8], atol=1e-10)
    assert torch.equal(preprocess(x, p, dim=0), out.T)


# ----------------------------------------------------------------------------- meta-gradients
def reference_objective(algo: MetaLSTM, batch: TaskBatch, second_order: bool = False
                        ) -> torch.Tensor:
    """The meta-LSTM objective written independently: torch.nn.LSTMCell (with the
    algorithm's weights) over the coordinates, task by task, plain autograd, the learner's
    gradient taken at a detached copy (unless ``second_order``)."""
    model, cfg = algo.model, algo.cfg
    hidden, p = cfg.hidden, cfg.preprocess_p
    names = [n for n, _ in model.named_parameters()]
    cell = torch.nn.LSTMCell(4, hidden).double()
    w, b = algo.lstm.weight, algo.lstm.bias
    lstm_params = {"weight_ih": w[:, :4], "weight_hh": w[:, 4:], "bias_ih": b,
                   "bias_hh": torch.zeros_like(b)}
    wf, wi = algo.cell.weight_forget, algo.cell.weight_input
    bf, bi = algo.cell.bias_forget, algo.cell.bias_input

    def pre(v: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*v.shape, 2, dtype=v.dtype)
        big = v.abs() >= math.exp(-p)
        out[..., 0] = -1.0
        out[..., 0][big] = v[big].abs().log() / p
        out[..., 1] = v * math.exp(p)
        out[..., 1][big] = v[big].sign()
        return out

    def loss_of(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, dict(zip(names, params)), (x,))
        return algo.loss_fn(out, y)

    total = 0.0
    for t in range(len(batch)):
        theta = torch.cat([q.flatten() for q in model.parameters()])
        n = theta.numel()
        h = c = torch.zeros(n, hidden, dtype=theta.dtype)
        f_prev = i_prev = torch.zeros(n, dtype=theta.dtype)
        size = cfg.inner_batch or batch.support_x.shape[1]
        for step in range(cfg.inner_steps):
            k = step % math.ceil(batch.support_x.shape[1] / size)
            x = batch.support_x[t, k * size:(k + 1) * size]
            y = batch.support_y[t, k * size:(k + 1) * size]
            parts = list(theta.split([q.numel() for q in model.parameters()]))
            params = [v.view_as(q) for v, q in zip(parts, model.parameters())]
            if second_order:
                loss = loss_of(params, x, y)
                grads = torch.autograd.grad(loss, params, create_graph=True)
            else:
                fixed = [v.detach().requires_grad_() for v in params]
                loss = loss_of(fixed, x, y)
                grads = torch.autograd.grad(loss, fixed)
                loss = loss.detach()
            g = torch.cat([q.flatten() for q in grads])
            inputs = torch.cat([pre(loss).expand(n, 2), pre(g)], dim=1)
            h, c = functional_call(cell, lstm_params, (inputs, (h, c)))
            f = torch.sigmoid(h @ wf[:hidden] + theta * wf[hidden] + f_prev * wf[hidden + 1] + bf)
            i = torch.sigmoid(h @ wi[:hidden] + theta * wi[hidden] + i_prev * wi[hidden + 1] + bi)
            theta = f * theta - i * g
            f_prev, i_prev = f, i
        parts = theta.split([q.numel() for q in model.parameters()])
        final = [v.view_as(q) for v, q in zip(parts, model.parameters())]
        total = total + loss_of(final, batch.query_x[t], batch.query_y[t])
    return total / len(batch)


def reference_grad(algo: MetaLSTM, batch: TaskBatch, second_order: bool = False
                   ) -> dict[str, torch.Tensor]:
    names, params = zip(*algo.named_parameters())
    grads = torch.autograd.grad(reference_objective(algo, batch, second_order), params)
    return dict(zip(names, grads))


@pytest.mark.parametrize(("setup", "paths"), [
    (lambda: sine_setup(steps=3, inner_batch=2), ("vmap", "loop")),
    (lambda: conv_setup(steps=2, inner_batch=3), ("vmap", "loop", "fused")),
])
def test_meta_gradient_matches_an_independent_implementation_on_every_path(setup, paths
                                                                           ) -> None:  # noqa: ANN001
    algo, batch = setup()
    want = reference_grad(algo, batch)
    for path in paths:
        got = meta_grad(algo, batch, path)
        for k in want:
            assert (got[k] - want[k]).abs().max() < 1e-10, (path, k)
    # the comparison can tell: a second-order path through the learner gradient differs
    second = reference_grad(algo, batch, second_order=True)
    assert max((second[k] - want[k]).abs().max().item() for k in want) > 1e-6


@pytest.mark.parametrize("path", ["vmap", "loop", "fused"])
def test_evaluation_adapts_as_the_independent_implementation(path: str) -> None:
    """Evaluation runs the meta-learner without a graph (on the fused path in its own
    layout: the gates gate-major, the cell in place): the query loss after the inner steps
    is the independent implementation's, task by task (float64)."""
    algo, batch = sine_setup(steps=3, inner_batch=2)
    want = [reference_objective(algo, one).item() for one in batch.split(1)]
    got = algo.evaluate_tasks(batch, 3, path).curve[:, 3, 0]
    assert got.tolist() == pytest.approx(want, rel=0, abs=1e-12)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_the_coordinate_lstm_without_a_graph_computes_what_it_computes_with_one(lead) -> None:  # noqa: ANN001
    """The gate-major step (fused evaluation, no graph) against the step with a graph,
    for one task and for batches of tasks (float64)."""
    torch.manual_seed(0)
    algo, _ = sine_setup()
    lstm = algo.lstm
    shared, x = torch.randn(*lead, 2).double(), torch.randn(*lead, 7, 2).double()
    h, c = torch.randn(*lead, 7, 20).double(), torch.randn(*lead, 7, 20).double()
    with_graph = lstm(shared, x, h, c)
    assert with_graph[0].requires_grad
    with torch.no_grad():
        without = lstm(shared, x, h, c, gate_major=True)
    for a, b in zip(with_graph, without):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-14


def counting_compiled_update(monkeypatch) -> list[tuple[int, ...]]:  # noqa: ANN001
    """Every call of the compiled meta-learner update, by the shape of its coordinates."""
    from fewshot_cli.algorithms import meta_lstm

    real, calls = meta_lstm._compiled_update(), []

    def counted(*args: object) -> object:
        calls.append(tuple(args[5].shape))
        return real(*args)

    monkeypatch.setattr(meta_lstm, "_compiled_update", lambda: counted)
    return calls


def test_compiled_path_gives_the_independent_meta_gradient_and_evaluation(monkeypatch
                                                                         ) -> None:  # noqa: ANN001
    """The ``compiled`` path (the fused path with the meta-learner's update compiled) gives
    the independent implementation's meta-gradient and the fused path's evaluation, in
    float64, through the compiled update (one call per update, every task at once): two
    graphs for training (the first update's state needs no gradient yet), one for
    evaluation."""
    from torch._dynamo.utils import counters

    algo, batch = sine_setup(steps=3, inner_batch=2)
    torch._dynamo.reset()
    counters.clear()
    calls = counting_compiled_update(monkeypatch)
    want = reference_grad(algo, batch)
    got = meta_grad(algo, batch, "compiled")
    n = sum(p.numel() for p in algo.model.parameters())
    assert calls == [(3, n)] * 3
    assert counters["stats"]["unique_graphs"] == 2
    for k in want:
        assert (got[k] - want[k]).abs().max() < 1e-10, k
    fused = algo.evaluate_tasks(batch, 4, "fused")
    ev = algo.evaluate_tasks(batch, 4, "compiled")
    assert len(calls) == 3 + 4
    assert counters["stats"]["unique_graphs"] == 3
    assert (ev.curve - fused.curve).abs().max() < 1e-10
    for k in fused.inner:
        assert (ev.inner[k] - fused.inner[k]).abs().max() < 1e-10, k


def test_compiled_update_falls_back_to_eager_and_lets_a_stop_through(monkeypatch
                                                                    ) -> None:  # noqa: ANN001
    """A compiler failure: a warning, and the eager update from then on (the same results);
    a stop signal that reached the compiler, wrapped in its error, is raised as the stop."""
    from torch._dynamo.exc import BackendCompilerFailed

    from fewshot_cli.algorithms import meta_lstm
    from fewshot_cli.engine.stopping import Interrupted

    algo, batch = sine_setup(steps=2)
    want = algo.evaluate_tasks(batch, 2, "fused")

    def failing(inner: Exception):
        def run(*args: object) -> object:
            raise BackendCompilerFailed(None, inner, None)
        return lambda: run

    monkeypatch.setattr(meta_lstm, "_compiled_update", failing(Interrupted(15)))
    with pytest.raises(Interrupted):
        algo.evaluate_tasks(batch, 2, "compiled")
    monkeypatch.setattr(meta_lstm, "_compiled_update", failing(RuntimeError("no compiler")))
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        got = algo.evaluate_tasks(batch, 2, "compiled")
    assert torch.equal(got.curve, want.curve)
    monkeypatch.setattr(meta_lstm, "_compiled_update", lambda: pytest.fail("compiled again"))
    assert torch.equal(algo.evaluate_tasks(batch, 2, "compiled").curve, want.curve)


def test_one_update_meta_gradient_is_the_first_order_formula() -> None:
    """For T = 1, theta_1 = f * theta_0 - i * g with g and the loss constant inputs, so with
    a = dL_query/dtheta_1: dL/dtheta_0 = a (f + theta_0 f(1-f) w_F[theta] - g i(1-i)
    w_I[theta]), dL/db_I = -sum a g i(1-i), dL/db_F = sum a theta_0 f(1-f)."""
    algo, batch = sine_setup(steps=1, tasks=1)
    got = meta_grad(algo, batch, "loop")
    support = Support(batch.support_x[0], batch.support_y[0])
    theta0 = algo.flat(algo.params(), EVAL).detach()
    state = algo.init_state(algo.params(), support, EVAL)
    with torch.no_grad():
        grads, _ = algo.learner_gradient(algo.params(), support.x, support.y, EVAL)
        g = algo.flat(grads, EVAL)
        new, (_, _, f, i, _), _ = algo.inner_step(algo.params(), state, support, 0, EVAL)
    theta1 = algo.flat(new, EVAL).detach().requires_grad_()
    query = algo.task_loss(algo.unflat(theta1), batch.query_x[0], batch.query_y[0], EVAL)
    (a,) = torch.autograd.grad(query, theta1)
    hidden = algo.cfg.hidden
    wf, wi = algo.cell.weight_forget[hidden].item(), algo.cell.weight_input[hidden].item()
    d_theta0 = a * (f + theta0 * f * (1 - f) * wf - g * i * (1 - i) * wi)
    got_theta0 = torch.cat([got[f"model.{k}"].flatten() for k in algo.layout.names])
    assert torch.allclose(got_theta0, d_theta0, atol=1e-12, rtol=1e-9)
    assert got["cell.bias_input"].item() == pytest.approx(-(a * g * i * (1 - i)).sum().item(),
                                                          rel=1e-9, abs=1e-14)
    assert got["cell.bias_forget"].item() == pytest.approx(
        (a * theta0 * f * (1 - f)).sum().item(), rel=1e-9, abs=1e-14)


def test_meta_gradient_is_clipped_to_norm_0_25() -> None:
    algo, batch = sine_setup(steps=2)
    raw = meta_grad(algo, batch, "loop")
    norm = math.sqrt(sum(float((g * g).sum()) for g in raw.values()))
    assert norm > 0.25  # the premise: an unclipped step would be longer
    before = {k: v.detach().clone() for k, v in algo.named_parameters()}
    optimizer = torch.optim.SGD(algo.parameters(), lr=1.0)
    metrics = meta_update(algo, batch, "loop", TrainingProgress(1, 1), optimizer)
    assert metrics["meta_grad_norm"].item() == pytest.approx(norm, rel=1e-9)
    for k, v in algo.named_parameters():
        assert torch.allclose(before[k] - v.detach(), raw[k] * 0.25 / norm, atol=1e-12)


# ----------------------------------------------------------------------------- batch norm
def test_meta_test_normalises_queries_with_the_support_batches_running_statistics() -> None:
    """Paper, sec. 3.4 / reference code: at meta-test the query set is normalised with
    running averages of the episode's support-batch statistics (from 0 and 1, momentum
    ``bn_momentum`` (0.9) per update, at the parameters each update starts from), so a query's
    prediction does not depend on the other queries; ``eval_batch_norm: batch`` does."""
    algo, batch = conv_setup(steps=3, inner_batch=3)
    support = Support(batch.support_x[0], batch.support_y[0])
    seen: list = []
    ctx = Context(training=False)
    with torch.no_grad():
        algo.adapt(algo.params(), support, 3, ctx, observe=seen.append)
    running = torch.zeros(4, 2, 3, dtype=torch.float64)
    running[:, 1] = 1.0
    for t in range(3):
        learner = {k: seen[t][k] for k in algo.layout.names}
        x = batch.support_x[0][3 * (t % 2):3 * (t % 2) + 3]
        _, stats = functional_call(algo.model, learner, (x,), {"return_stats": True})
        running = 0.1 * running + 0.9 * stats  # bn_momentum 0.9, torch7's convention
        for j in range(4):
            torch.testing.assert_close(seen[t + 1][f"blocks.{j}.norm.running_mean"],
                                       running[j, 0])
            torch.testing.assert_close(seen[t + 1][f"blocks.{j}.norm.running_var"],
                                       running[j, 1])
    queries = batch.query_x[0]
    adapted = seen[-1]
    whole = algo.forward(adapted, queries, ctx)
    torch.testing.assert_close(algo.forward(adapted, queries[:2], ctx), whole[:2])
    # the batch's own statistics: transductive, and no running statistics are kept
    algo.cfg = algo.cfg.model_copy(update={"eval_batch_norm": "batch"})
    seen = []
    with torch.no_grad():
        algo.adapt(algo.params(), support, 3, ctx, observe=seen.append)
    assert set(seen[-1]) == set(algo.layout.names)
    whole = algo.forward(seen[-1], queries, ctx)
    assert (algo.forward(seen[-1], queries[:2], ctx) - whole[:2]).abs().max() > 1e-6


@pytest.mark.parametrize("norm", ["running", "batch"])
def test_batch_norm_statistics_do_not_leak_across_episodes(norm: str) -> None:
    algo, batch = conv_setup(steps=3)
    algo.cfg = algo.cfg.model_copy(update={"eval_batch_norm": norm})
    assert not list(algo.model.buffers())  # no running statistics to carry
    first = TaskBatch(*(t[:1] for t in (batch.support_x, batch.support_y, batch.query_x,
                                        batch.query_y)))
    second = TaskBatch(*(t[1:] for t in (batch.support_x, batch.support_y, batch.query_x,
                                         batch.query_y)))
    for path in ("vmap", "loop", "fused"):
        alone = algo.adaptation_curve(second, 3, path)
        algo.adaptation_curve(first, 3, path)  # another episode in between
        again = algo.adaptation_curve(second, 3, path)
        together = algo.adaptation_curve(batch, 3, path)
        assert torch.equal(alone, again)
        assert (together[1:] - alone).abs().max() < 1e-12, path
    # meta-training: each task's loss is its own, whatever shares its meta-batch
    both = algo.meta_loss(batch, "fused", TrainingProgress(1, 1))[0]
    each = [algo.meta_loss(b, "fused", TrainingProgress(1, 1))[0] for b in (first, second)]
    assert abs(both.item() - (each[0].item() + each[1].item()) / 2) < 1e-12


# ----------------------------------------------------------------------------- evaluation
def test_gate_statistics_per_layer_and_their_spread() -> None:
    algo, batch = conv_setup(steps=3)
    ev = algo.evaluate_tasks(batch, 3, "fused")
    layers = ["blocks.0.conv", "blocks.0.norm", "blocks.1.conv", "blocks.1.norm",
              "blocks.2.conv", "blocks.2.norm", "blocks.3.conv", "blocks.3.norm", "head"]
    assert [k.partition("/")[2] for k in ev.inner if k.startswith("input_gate/")] == layers
    sizes = {layer: sum(s[1] - s[0] for s in spans) for layer, spans in algo.layers.items()}
    for gate in ("input_gate", "forget_gate"):
        overall = sum(ev.inner[f"{gate}/{k}"] * n for k, n in sizes.items()) / sum(sizes.values())
        assert torch.allclose(overall, ev.inner[gate], atol=1e-12)
        assert all(ev.inner[f"{gate}_sd/{k}"].shape == (2, 3) for k in layers)
        assert bool((ev.inner[f"{gate}_sd/head"] > 0).all())
    assert bool(((ev.inner["input_gate"] > 0) & (ev.inner["input_gate"] < 0.05)).all())
    assert bool((ev.inner["forget_gate"] > 0.95).all())
    # meta-training reports only the overall means, per step
    _, metrics = algo.meta_loss(batch, "fused", TrainingProgress(1, 1))
    assert {"inner_loss", "input_gate", "forget_gate", "accuracy"} <= set(metrics)
    assert not any("/" in k for k in metrics) and metrics["input_gate"].shape == (3,)


def test_validation_curves_leave_out_the_per_layer_gate_statistics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation reads only the query curve (``adaptation_curve``): the per-layer gate
    statistics that ``fewshot eval`` reports are not computed for it, and the curve is the
    same."""
    algo, batch = conv_setup(steps=2)
    calls: list[int] = []
    real = algo.gate_statistics
    monkeypatch.setattr(algo, "gate_statistics", lambda i, f: calls.append(1) or real(i, f))
    curve = algo.adaptation_curve(batch, 2, "fused")
    assert calls == []
    ev = algo.evaluate_tasks(batch, 2, "fused")
    assert len(calls) == 2 and "input_gate/head" in ev.inner
    assert torch.equal(curve, ev.curve)


def test_sgd_reference_starts_from_the_learned_init_and_picks_the_best_lr() -> None:
    algo, _ = sine_setup(steps=3)
    algo.cfg.sgd_reference_tasks = 8
    algo.cfg.sgd_reference_lrs = [1e-4, 0.01, 0.05, 1e100]
    source = SinusoidTasks(SinusoidTask(shots=5, queries=6))
    (ref, fields), = algo.references(source, 3, "vmap", chunk=5)
    tried = {t["lr"]: t["loss"] for t in fields["reference"]["tried"]}
    assert tried[1e100] is None  # diverged: never chosen
    best = min((lr for lr in tried if tried[lr] is not None), key=tried.__getitem__)
    assert ref.inner_lr == fields["reference"]["lr"] == best
    assert fields["name"] == f"SGD from the learned init, lr {best:g}"
    batch = source.sample(4, torch.Generator().manual_seed(9), "test").to("cpu", torch.float64)
    mine, theirs = algo.adaptation_curve(batch, 3, "vmap"), ref.adaptation_curve(batch, 3, "vmap")
    assert torch.equal(mine[:, 0], theirs[:, 0])
    assert not torch.equal(mine[:, 3], theirs[:, 3])
    algo.cfg.sgd_reference_lrs = []
    assert algo.references(source, 3, "vmap", chunk=5) == []


# ----------------------------------------------------------------------------- the CLI
def check_eval_and_plots(run: Path, steps: int) -> dict:
    data = json.loads((run / "eval.json").read_text())
    own, ref = [r for r in data["results"] if not r["baseline"]], [
        r for r in data["results"] if r["baseline"]]
    assert len(own) == 1 and len(ref) == 1
    own, ref = own[0], ref[0]
    assert own["algorithm"] == "meta_lstm" and len(own["per_step"]) == steps + 1
    layers = [k for k in own["inner"] if k.startswith("input_gate/")]
    assert layers
    for k in layers + ["forget_gate", "input_gate_sd/" + layers[0].partition("/")[2]]:
        assert len(own["inner"][k]) == steps
        assert all(0 <= s["mean"] <= 1 for s in own["inner"][k])
    assert ref["algorithm"] == "sgd" and ref["name"].startswith("SGD from the learned init, lr ")
    assert ref["settings"]["inner_lr"] == ref["reference"]["lr"]
    assert ref["per_step"][0]["loss"]["mean"] == pytest.approx(own["per_step"][0]["loss"]["mean"])
    invoke("plot", str(run))
    for name in ("gates", "adaptation", "metrics", "loss"):
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 200
    return own


def test_sine_train_eval_plot_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "sine"
    invoke("train", str(CONFIGS / "sine-meta-lstm.yaml"), "--run-dir", str(run), "--no-progress",
           *sets(train__iterations=6, train__log_every=3, train__val_every=3,
                 train__val_tasks=4, algorithm__meta_batch=3, algorithm__inner_steps=3,
                 algorithm__eval_inner_steps=3, algorithm__sgd_reference_tasks=6,
                 train__vectorize="vmap", device="cpu"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in logged] == [3, 6]
    assert all(len(r["input_gate"]) == 3 and r["meta_grad_norm"] > 0 for r in logged)
    invoke("eval", str(run), "--tasks", "10", "--steps", "3")
    check_eval_and_plots(run, 3)


def test_inner_lr_means_nothing_for_the_meta_lstm(tmp_path: Path) -> None:
    """``--inner-lr`` is refused; a MAML baseline adapts with its own step size."""
    short = sets(train__iterations=2, train__log_every=1, train__val_every=2, train__val_tasks=2,
                 algorithm__meta_batch=2, algorithm__inner_steps=2,
                 algorithm__eval_inner_steps=2, train__vectorize="vmap", device="cpu")
    lstm, maml = tmp_path / "lstm", tmp_path / "maml"
    invoke("train", str(CONFIGS / "sine-meta-lstm.yaml"), "--run-dir", str(lstm),
           "--no-progress", *short, *sets(algorithm__sgd_reference_lrs="[]"))
    invoke("train", str(CONFIGS / "sine-maml.yaml"), "--run-dir", str(maml), "--no-progress",
           *short, *sets(algorithm__inner_lr=0.023))
    r = runner.invoke(app, ["eval", str(lstm), "--tasks", "4", "--inner-lr", "0.1"])
    assert r.exit_code != 0 and "learns its step sizes" in r.output
    assert not (lstm / "eval.json").exists()
    out = invoke("eval", str(lstm), "--tasks", "4", "--baseline", str(maml))
    assert "learned step sizes" in out
    results = json.loads((lstm / "eval.json").read_text())["results"]
    assert [x["settings"]["inner_lr"] for x in results] == [None, 0.023]


def test_miniimagenet_configs_run_on_fixture_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_miniimagenet(data, size=24)
    run = tmp_path / "run"
    invoke("train", str(CONFIGS / "miniimagenet-5w5s-meta-lstm.yaml"), "--run-dir", str(run),
           "--no-progress",
           *sets(task__root=data, task__cache_dir=tmp_path / "cache", task__image_size=24,
                 task__queries=1, task__shots=2, eval__queries=1, train__iterations=2,
                 train__val_every=2, train__val_tasks=2, train__log_every=1,
                 algorithm__inner_steps=2, algorithm__eval_inner_steps=2,
                 algorithm__inner_batch=5, algorithm__sgd_reference_tasks=2,
                 model__filters=4, train__vectorize="loop", device="cpu"))
    invoke("eval", str(run), "--tasks", "3", "--steps", "2")
    own = check_eval_and_plots(run, 2)
    assert own["per_step"][2]["accuracy"]["n"] == 3
    assert "blocks.0.conv" in [k.partition("/")[2] for k in own["inner"]]


def test_short_omniglot_run_end_to_end(tmp_path: Path) -> None:
    if not (REAL_OMNIGLOT / "images_background").is_dir():
        pytest.skip(f"real Omniglot not found at {REAL_OMNIGLOT} (set FEWSHOT_OMNIGLOT)")
    run = tmp_path / "omniglot"
    invoke("train", str(CONFIGS / "omniglot-5w1s-meta-lstm.yaml"), "--run-dir", str(run),
           "--no-progress",
           *sets(task__root=REAL_OMNIGLOT, task__cache_dir=tmp_path / "cache",
                 train__iterations=4, train__val_every=4, train__val_tasks=4,
                 train__log_every=2, algorithm__inner_steps=3, algorithm__eval_inner_steps=3,
                 algorithm__sgd_reference_tasks=4, model__filters=16,
                 train__vectorize="fused", device="cpu"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [4]
    invoke("eval", str(run), "--tasks", "10", "--steps", "3")
    own = check_eval_and_plots(run, 3)
    assert own["settings"]["query_batch"] == "all" and own["per_step"][3]["accuracy"]["n"] == 10


@pytest.mark.parametrize("setup", [sine_setup, conv_setup])
@pytest.mark.parametrize("path", ["vmap", "loop", "fused"])
def test_evaluating_a_few_tasks_at_a_time_gives_what_all_at_once_gives(
        setup, path: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Evaluation passes of at most eval_tasks_at_once tasks (float64): the same query
    curves and adaptation metrics as one pass over the whole chunk."""
    algo, batch = setup()
    whole = algo.evaluate_tasks(batch, 3, path)
    monkeypatch.setattr(type(algo), "eval_tasks_at_once", lambda self: 1)
    parts = algo.evaluate_tasks(batch, 3, path)
    assert torch.allclose(parts.curve, whole.curve, rtol=0, atol=1e-10)
    assert parts.inner.keys() == whole.inner.keys()
    assert all(torch.allclose(parts.inner[k], whole.inner[k], rtol=0, atol=1e-10)
               for k in whole.inner)
    assert MetaLSTM.eval_tasks_at_once(conv_setup()[0]) >= 1


def test_eval_protocol_says_how_batch_norm_normalises_the_queries() -> None:
    """eval.json's protocol line: the meta-LSTM's queries use the support batches' running
    statistics (its default), MAML's the query batch's own."""
    from fewshot_cli.config import load_config
    from fewshot_cli.engine.evaluator import _protocol

    configs = Path(__file__).resolve().parents[1] / "configs"
    lstm = load_config(configs / "omniglot-5w1s-meta-lstm.yaml")
    maml = load_config(configs / "omniglot-5w1s-maml.yaml")
    assert "running statistics of the task's support batches" in _protocol(True, "all", 1, lstm)
    assert "that batch's statistics" in _protocol(True, "all", 1, maml)
    batch = load_config(configs / "omniglot-5w1s-meta-lstm.yaml",
                        ["algorithm.eval_batch_norm=batch"])
    assert "each batch's statistics" in _protocol(True, "per_class", 15, batch)
