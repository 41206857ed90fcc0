"""ANIL (Raghu et al. 2020): the networks' body/head halves, the head-only update against a
hand-written reference and against MAML with a frozen body, body features computed once
per task, the batching paths, and the CLI end to end on Omniglot fixtures."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, train_omniglot_fixture
from PIL import Image

from fewshot_cli.algorithms import Context, Support, TrainingProgress
from fewshot_cli.algorithms.anil import ANIL
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import ANILConfig, MAMLConfig, SinusoidTask, load_config
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape
from fewshot_cli.tasks.sinusoid import SinusoidTasks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SINE_SHAPE = TaskShape("regression", (1,), 1)
EVAL = Context(training=False)


class HeadOnlyMAML(MAML):
    """MAML whose inner SGD step has step size 0 on every body parameter: the reference
    ANIL must equal (it runs the whole network at every step)."""

    def inner_step(self, params, state, support, step, ctx):  # noqa: ANN001, ANN201
        create_graph = ctx.training and not self.cfg.first_order
        lr = {k: self.inner_lr if k in self.model.head_names else 0.0 for k in params}
        new, loss = self.sgd_step(params, support.x, support.y, lr, create_graph, ctx)
        return new, None, {"inner_loss": loss}


def sine_setup(steps: int = 2, first_order: bool = False, seed: int = 0, tasks: int = 3):
    torch.manual_seed(seed)
    model = MLP(1, 1, [5, 4]).double()
    algo = ANIL(model, ANILConfig(loss="mse", inner_lr=0.05, inner_steps=steps,
                                  first_order=first_order), SINE_SHAPE)
    batch = SinusoidTasks(SinusoidTask(shots=5, queries=6)).sample(
        tasks, torch.Generator().manual_seed(seed)).to("cpu", torch.float64)
    return algo, batch


def conv_setup(steps: int = 2, first_order: bool = False, strided: bool = True,
               tasks: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    size = 12 if strided else 16
    model = Conv4((1, size, size), 3, filters=3, strided=strided).double()
    algo = ANIL(model, ANILConfig(loss="cross_entropy", inner_lr=0.3, inner_steps=steps,
                                  first_order=first_order),
                TaskShape("classification", (1, size, size), 3))
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(tasks, 12, 1, size, size, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat(4).expand(tasks, -1).contiguous()
    return algo, TaskBatch(images[:, :6], labels[:, :6], images[:, 6:], labels[:, 6:])


def meta_grads(algo: torch.nn.Module, batch: TaskBatch, path: str) -> dict[str, torch.Tensor]:
    algo.zero_grad(set_to_none=True)
    algo.meta_loss(batch, path, TrainingProgress(1, 1))[0].backward()
    return {k: p.grad.clone() for k, p in algo.named_parameters()}


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


# ----------------------------------------------------------------------------- the halves
@pytest.mark.parametrize(("make", "shape"), [
    (lambda: MLP(1, 1, [5, 4]), (1,)), (lambda: MLP(3, 2, []), (3,)),
    (lambda: Conv4((1, 12, 12), 3, filters=3, strided=True), (1, 12, 12)),
    (lambda: Conv4((1, 16, 16), 3, filters=3, strided=False), (1, 16, 16))])
def test_forward_is_the_head_on_the_body_features(make, shape: tuple[int, ...]) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    out, hidden = model(x, return_hidden=True)
    feats, hidden2 = model.features(x, return_hidden=True)
    assert torch.equal(model.apply_head(feats), out) and torch.equal(model(x), out)
    assert len(hidden) == len(hidden2) and all(torch.equal(a, b) for a, b in zip(hidden, hidden2))
    names = dict(model.named_parameters())
    weight, bias = (names[k] for k in model.head_names)
    assert weight.shape == (out.shape[-1], feats.shape[-1]) and bias.shape == (out.shape[-1],)
    if isinstance(model, Conv4):  # the per-task halves: task b's body and head on its inputs
        xs = torch.randn(2, 5, *shape, dtype=torch.float64)
        stacked = {k: torch.stack([v, 1.1 * v]) for k, v in names.items()}
        ft = model.features_tasks(stacked, xs)
        assert torch.equal(model.apply_head_tasks(stacked, ft), model.forward_tasks(stacked, xs))
        for b in range(2):
            copy = deepcopy(model)
            with torch.no_grad():
                for k, p in copy.named_parameters():
                    p.copy_(stacked[k][b])
                assert torch.allclose(ft[b], copy.features(xs[b]), rtol=1e-12, atol=1e-13)
                assert torch.allclose(model.apply_head_tasks(stacked, ft)[b], copy(xs[b]),
                                      rtol=1e-12, atol=1e-13)


def test_a_network_without_halves_is_refused() -> None:
    with pytest.raises(TypeError, match="features, apply_head and head_names"):
        ANIL(torch.nn.Linear(1, 1), ANILConfig(loss="mse"), SINE_SHAPE)


# ----------------------------------------------------------------------------- the update
def test_inner_steps_change_the_head_only() -> None:
    algo, batch = sine_setup(steps=3)
    base = {k: v.detach() for k, v in algo.params().items()}
    adapted = algo.adapt(base, Support(batch.support_x[0], batch.support_y[0]), 3, EVAL)
    assert algo.head_names == ("layers.2.weight", "layers.2.bias")
    for k, v in adapted.params.items():
        if k in algo.head_names:
            assert float((v - base[k]).abs().max()) > 1e-6, k
        else:
            assert v is base[k], k  # the very tensor: nothing is computed for the body
    assert adapted.metrics["inner_loss"].shape == (3,)


def body(ps: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP's body by hand: linear layers with ReLU after each."""
    h = x
    for j in range(0, len(ps), 2):
        h = torch.relu(h @ ps[j].T + ps[j + 1])
    return h


def reference_objective(params: list[torch.Tensor], batch: TaskBatch, steps: int, lr: float,
                        first_order: bool) -> torch.Tensor:
    """Raghu et al. (2020), ANIL, with plain autograd: the head (the last two tensors)
    takes ``steps`` SGD steps on the support features; the mean query MSE after them."""
    trunk, head = params[:-2], params[-2:]
    total = 0.0
    for t in range(len(batch)):
        support = body(trunk, batch.support_x[t])
        fast = head
        for _ in range(steps):
            loss = ((support @ fast[0].T + fast[1] - batch.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        query = body(trunk, batch.query_x[t])
        total = total + ((query @ fast[0].T + fast[1] - batch.query_y[t]) ** 2).mean()
    return total / len(batch)


def test_adapted_head_matches_hand_written_sgd_on_frozen_features() -> None:
    algo, batch = sine_setup(steps=3)
    names = [n for n, _ in algo.model.named_parameters()]
    params = [p.detach() for p in algo.model.parameters()]
    base = dict(zip(names, params))
    for t in range(len(batch)):
        got = algo.adapt(base, Support(batch.support_x[t], batch.support_y[t]), 3, EVAL)
        feats = body(params[:-2], batch.support_x[t])
        head = [p.clone().requires_grad_() for p in params[-2:]]
        losses = []
        for _ in range(3):
            loss = ((feats @ head[0].T + head[1] - batch.support_y[t]) ** 2).mean()
            losses.append(float(loss.detach()))
            grads = torch.autograd.grad(loss, head)
            head = [(p - 0.05 * g).detach().requires_grad_() for p, g in zip(head, grads)]
        for n, want in zip(names[-2:], head):
            assert torch.allclose(got.params[n], want.detach(), rtol=0, atol=1e-14), n
        assert got.metrics["inner_loss"].tolist() == pytest.approx(losses, abs=1e-14)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_a_hand_written_reference(first_order: bool) -> None:
    algo, batch = sine_setup(steps=2, first_order=first_order)
    got = meta_grads(algo, batch, "loop")
    names = [n for n, _ in algo.model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in algo.model.parameters()]
    want = torch.autograd.grad(reference_objective(params, batch, 2, 0.05, first_order), params)
    for n, g in zip(names, want):
        assert float(got[f"model.{n}"].abs().max()) > 0, f"{n} gets no meta-gradient"
        assert torch.allclose(got[f"model.{n}"], g, rtol=1e-10, atol=1e-13), n


def test_second_order_differs_from_first_order_through_the_support_features() -> None:
    algo, batch = sine_setup(steps=2)
    second = meta_grads(algo, batch, "loop")
    algo.cfg.first_order = True
    first = meta_grads(algo, batch, "loop")
    assert float((second["model.layers.0.weight"] - first["model.layers.0.weight"])
                 .abs().max()) > 1e-6


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("network", ["mlp", "conv4-strided", "conv4-pooled"])
def test_equals_maml_whose_inner_loop_updates_only_the_head(network: str,
                                                            first_order: bool) -> None:
    """Bit for bit up to rounding, in float64: adaptation, its losses, the evaluation curve,
    the meta-loss and the meta-gradient of every parameter."""
    if network == "mlp":
        anil, batch = sine_setup(steps=3, first_order=first_order)
        cfg = MAMLConfig(loss="mse", inner_lr=0.05, inner_steps=3, first_order=first_order)
        shape = SINE_SHAPE
    else:
        anil, batch = conv_setup(steps=3, first_order=first_order,
                                 strided=network == "conv4-strided")
        cfg = MAMLConfig(loss="cross_entropy", inner_lr=0.3, inner_steps=3,
                         first_order=first_order)
        shape = TaskShape("classification", batch.support_x.shape[2:], 3)
    maml = HeadOnlyMAML(anil.model, cfg, shape)  # the same network, the same parameters
    base = {k: v.detach() for k, v in anil.params().items()}
    support = Support(batch.support_x[0], batch.support_y[0])
    a, m = anil.adapt(base, support, 3, EVAL), maml.adapt(base, support, 3, EVAL)
    for k in base:
        assert torch.allclose(a.params[k], m.params[k], rtol=1e-12, atol=1e-14), k
    assert torch.allclose(a.metrics["inner_loss"], m.metrics["inner_loss"], atol=1e-14)
    assert torch.allclose(anil.adaptation_curve(batch, 3, "loop"),
                          maml.adaptation_curve(batch, 3, "loop"), rtol=1e-12, atol=1e-14)
    la, ma = (x.meta_loss(batch, "loop", TrainingProgress(1, 1)) for x in (anil, maml))
    assert abs(float((la[0] - ma[0]).detach())) < 1e-13
    assert set(la[1]) == set(ma[1])  # the same metrics, inner_loss_after included
    for k in la[1]:
        assert torch.allclose(la[1][k], ma[1][k], atol=1e-13), k
    ga, gm = meta_grads(anil, batch, "loop"), meta_grads(maml, batch, "loop")
    for k in ga:
        assert torch.allclose(ga[k], gm[k], rtol=1e-10, atol=1e-13), k


# ----------------------------------------------------------------------------- the speed-up
@pytest.mark.parametrize(("path", "method"), [("loop", "features"), ("vmap", "features"),
                                              ("fused", "features_tasks")])
@pytest.mark.parametrize("steps", [1, 4])
def test_body_runs_once_per_set_whatever_the_number_of_inner_steps(
        path: str, method: str, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each task's body runs once on its support set and once on its queries (vmap and fused
    map all tasks in one call), in training and in evaluation's adaptation."""
    algo, batch = conv_setup(steps=steps, tasks=3)
    calls: list[int] = []
    real = getattr(Conv4, method)

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Conv4, method, spy)
    algo.meta_loss(batch, path, TrainingProgress(1, 1))
    per_call = 3 if path == "loop" else 1
    assert len(calls) == 2 * per_call
    calls.clear()
    base = {k: v.detach() for k, v in algo.params().items()}
    algo.adapt(base, Support(batch.support_x[0], batch.support_y[0]), steps, EVAL)
    assert len(calls) == (1 if path != "fused" else 0)  # the support features, once
    # MAML with a frozen body runs the whole network at every step, and once more on the
    # queries and (logged iterations) after the last step
    if path == "loop":
        calls.clear()
        monkeypatch.setattr(Conv4, "features", spy)
        maml = HeadOnlyMAML(algo.model, MAMLConfig(loss="cross_entropy", inner_lr=0.3,
                                                   inner_steps=steps),
                            TaskShape("classification", (1, 12, 12), 3))
        maml.meta_loss(batch, "loop", TrainingProgress(1, 1))
        assert len(calls) == 3 * (steps + 2)


# ----------------------------------------------------------------------------- the paths
@pytest.mark.parametrize("first_order", [False, True])
def test_every_path_agrees_in_float64(first_order: bool) -> None:
    algo, batch = sine_setup(steps=3, first_order=first_order, seed=3)
    assert algo.available_paths == ("vmap", "loop", "fused")
    a, b = flat(meta_grads(algo, batch, "vmap")), flat(meta_grads(algo, batch, "loop"))
    c = flat(meta_grads(algo, batch, "fused"))
    assert float((a - b).abs().max()) < 1e-10 and float((c - b).abs().max()) < 1e-10
    curves = [algo.adaptation_curve(batch, 4, p) for p in ("vmap", "loop", "fused")]
    assert float((curves[0] - curves[1]).abs().max()) < 1e-10
    assert float((curves[2] - curves[1]).abs().max()) < 1e-10


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strided", [True, False])
def test_conv4_fused_and_vmap_equal_loop_in_float64(strided: bool, first_order: bool) -> None:
    algo, batch = conv_setup(steps=2, first_order=first_order, strided=strided)
    assert algo.available_paths == ("vmap", "loop", "fused")
    grads = {p: flat(meta_grads(algo, batch, p)) for p in ("fused", "loop", "vmap")}
    assert torch.allclose(grads["fused"], grads["loop"], rtol=1e-9, atol=1e-11)
    assert torch.allclose(grads["vmap"], grads["loop"], rtol=1e-9, atol=1e-11)
    curves = [algo.adaptation_curve(batch, 3, p) for p in ("fused", "loop", "vmap")]
    assert torch.allclose(curves[0], curves[1], rtol=1e-10, atol=1e-12)
    assert torch.allclose(curves[2], curves[1], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- end to end
def test_cli_omniglot_fixture_train_eval_plot(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-anil.yaml")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [2, 4]
    assert all({"accuracy", "inner_loss", "inner_loss_after"} <= set(r)
               for r in rows if "loss" in r)
    out = invoke("eval", str(run), "--tasks", "6", "--inner-lr", "0.2")
    assert "inner lr 0.2" in out
    result = json.loads((run / "eval.json").read_text())["results"][0]
    assert result["algorithm"] == "anil" and result["settings"]["inner_lr"] == 0.2
    assert len(result["per_step"]) == 4 and result["per_step"][3]["accuracy"]["n"] == 6
    invoke("plot", str(run))
    for name in ("loss", "accuracy", "episode", "adaptation"):
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert im.format == "PNG"


def test_config_is_mamls_with_the_head_alone_adapted() -> None:
    anil = load_config(CONFIGS / "omniglot-5w1s-anil.yaml").to_dict()
    maml = load_config(CONFIGS / "omniglot-5w1s-maml.yaml").to_dict()
    assert anil["algorithm"].pop("kind") == "anil" and maml["algorithm"].pop("kind") == "maml"
    assert anil.pop("name") == "omniglot-5w1s-anil" and maml.pop("name") == "omniglot-5w1s-maml"
    assert anil == maml
