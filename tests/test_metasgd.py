"""Meta-SGD (Li et al. 2017): the learned step sizes as meta-parameters, the update and the
meta-gradient against hand-written references, the batching paths, and the CLI end to end
(sine and Omniglot fixtures, ``--inner-lr`` refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, runner, sets, train_omniglot_fixture
from PIL import Image

from fewshot_cli.algorithms import Context, Support, TrainingProgress
from fewshot_cli.algorithms.metasgd import MetaSGD
from fewshot_cli.algorithms.params import param_key
from fewshot_cli.cli import app
from fewshot_cli.config import MetaSGDConfig, SinusoidTask, load_config
from fewshot_cli.engine import checkpoint
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.errors import ConfigError
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape
from fewshot_cli.tasks.sinusoid import SinusoidTasks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SINE_SHAPE = TaskShape("regression", (1,), 1)
EVAL = Context(training=False)


def sine_setup(steps: int = 1, first_order: bool = False, seed: int = 0, tasks: int = 3):
    torch.manual_seed(seed)
    algo = MetaSGD(MLP(1, 1, [5, 4]), MetaSGDConfig(loss="mse", inner_steps=steps,
                                                     first_order=first_order),
                   SINE_SHAPE).double()
    with torch.no_grad():  # spread alpha over both signs, so the test sees its direction too
        for a in algo.lr.values():
            a.uniform_(-0.05, 0.15)
    batch = SinusoidTasks(SinusoidTask(shots=5, queries=6)).sample(
        tasks, torch.Generator().manual_seed(seed)).to("cpu", torch.float64)
    return algo, batch


def meta_grads(algo: MetaSGD, batch: TaskBatch, path: str) -> dict[str, torch.Tensor]:
    algo.zero_grad(set_to_none=True)
    algo.meta_loss(batch, path, TrainingProgress(1, 1))[0].backward()
    return {k: p.grad.clone() for k, p in algo.named_parameters()}


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def net(ps: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP by hand: linear layers (weight, bias pairs) with ReLU between them."""
    h = x
    for j in range(0, len(ps), 2):
        h = h @ ps[j].T + ps[j + 1]
        if j + 2 < len(ps):
            h = torch.relu(h)
    return h


def reference_objective(theta: list[torch.Tensor], alpha: list[torch.Tensor], batch: TaskBatch,
                        steps: int, first_order: bool) -> torch.Tensor:
    """Li et al. (2017), Algorithm 1, with plain autograd: theta' = theta - alpha * grad,
    the mean query MSE at theta' over the tasks."""
    total = 0.0
    for t in range(len(batch)):
        fast = theta
        for _ in range(steps):
            loss = ((net(fast, batch.support_x[t]) - batch.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - a * g for p, a, g in zip(fast, alpha, grads)]
        total = total + ((net(fast, batch.query_x[t]) - batch.query_y[t]) ** 2).mean()
    return total / len(batch)


def split_params(algo: MetaSGD) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    names = [n for n, _ in algo.model.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for p in algo.model.parameters()]
    alpha = [algo.lr[param_key(n)].detach().clone().requires_grad_() for n in names]
    return names, theta, alpha


# ----------------------------------------------------------------------------- alpha itself
def test_step_sizes_have_each_parameters_shape_start_in_range_and_are_meta_parameters() -> None:
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, filters=8, strided=True)
    algo = MetaSGD(model, MetaSGDConfig(loss="cross_entropy"),
                   TaskShape("classification", (1, 28, 28), 5))
    for name, p in model.named_parameters():
        a = algo.lr[param_key(name)]
        assert a.shape == p.shape and a.requires_grad
        assert 0.005 <= float(a.detach().min()) and float(a.detach().max()) <= 0.1
    alpha = torch.cat([a.detach().flatten() for a in algo.lr.values()])
    assert float(alpha.min()) < 0.01 and float(alpha.max()) > 0.095  # spread over the range
    assert abs(float(alpha.mean()) - 0.0525) < 0.002                  # uniform on it
    keys = set(algo.state_dict())
    assert {"lr.head/weight", "lr.blocks/0/conv/weight", "model.head.weight"} <= keys
    opt = algo.configure_optimizer()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in algo.parameters()}
    assert {id(p) for p in algo.lr.parameters()} <= in_opt
    assert MetaSGD.learns_step_sizes(MetaSGDConfig())


def test_lr_init_is_validated() -> None:
    from fewshot_cli.config import validate

    cfg = validate({"algorithm": {"kind": "metasgd", "lr_init": [0.01, 0.02]}}, "x")
    assert cfg.algorithm.lr_init == (0.01, 0.02)
    with pytest.raises(ConfigError, match="lr_init must be"):
        validate({"algorithm": {"kind": "metasgd", "lr_init": [0.1, 0.01]}}, "x")
    with pytest.raises(ConfigError, match="lr_init.1: Input should be a finite number"):
        validate({"algorithm": {"kind": "metasgd", "lr_init": [0.0, float("inf")]}}, "x")


# ----------------------------------------------------------------------------- the update
def test_one_step_is_theta_minus_alpha_times_the_support_gradient() -> None:
    algo, batch = sine_setup()
    names, theta, alpha = split_params(algo)
    assert any(float(a.detach().min()) < 0 for a in alpha)  # negative entries are allowed and used
    base = {k: v.detach() for k, v in algo.params().items()}
    for t in range(len(batch)):
        support = Support(batch.support_x[t], batch.support_y[t])
        got = algo.adapt(base, support, 1, EVAL)
        loss = ((net(theta, batch.support_x[t]) - batch.support_y[t]) ** 2).mean()
        grads = torch.autograd.grad(loss, theta)
        for n, p, a, g in zip(names, theta, alpha, grads):
            want = p - a * g
            assert torch.allclose(got.params[n], want, rtol=0, atol=1e-15), n
        assert abs(float(got.metrics["inner_loss"][0]) - float(loss.detach())) < 1e-15
    # scaling alpha scales the step exactly: the update is linear in alpha
    with torch.no_grad():
        for a in algo.lr.values():
            a.mul_(2.0)
    support = Support(batch.support_x[0], batch.support_y[0])
    twice = algo.adapt(base, support, 1, EVAL).params
    with torch.no_grad():
        for a in algo.lr.values():
            a.mul_(0.5)
    once = algo.adapt(base, support, 1, EVAL).params
    for n in names:
        assert torch.allclose(twice[n] - base[n], 2 * (once[n] - base[n]), atol=1e-15)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_of_theta_and_alpha_matches_a_hand_written_reference(
        first_order: bool) -> None:
    algo, batch = sine_setup(steps=2, first_order=first_order)
    got = meta_grads(algo, batch, "loop")
    names, theta, alpha = split_params(algo)
    ref = reference_objective(theta, alpha, batch, 2, first_order)
    want = torch.autograd.grad(ref, theta + alpha)
    for n, g in zip(names, want[:len(names)]):
        assert torch.allclose(got[f"model.{n}"], g, rtol=1e-10, atol=1e-13), n
    for n, g in zip(names, want[len(names):]):
        assert float(g.abs().max()) > 0, "alpha receives a gradient"
        assert torch.allclose(got[f"lr.{param_key(n)}"], g, rtol=1e-10, atol=1e-13), n


def test_second_order_meta_gradient_matches_finite_differences() -> None:
    algo, batch = sine_setup(steps=1)
    grads = meta_grads(algo, batch, "vmap")
    names, theta, alpha = split_params(algo)
    got = torch.cat([grads[f"model.{n}"].flatten() for n in names]
                    + [grads[f"lr.{param_key(n)}"].flatten() for n in names])
    point = torch.cat([p.detach().flatten() for p in theta + alpha])
    shapes = [p.shape for p in theta + alpha]

    def objective(v: torch.Tensor) -> float:
        parts, i = [], 0
        for s in shapes:
            parts.append(v[i:i + s.numel()].view(s).clone().requires_grad_())
            i += s.numel()
        k = len(theta)
        return float(reference_objective(parts[:k], parts[k:], batch, 1, False).detach())

    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        d = torch.randn(point.shape, generator=gen, dtype=torch.float64)
        eps = 1e-6
        fd = (objective(point + eps * d) - objective(point - eps * d)) / (2 * eps)
        assert abs(float(got @ d) - fd) < 1e-6 * max(1.0, abs(fd)), (float(got @ d), fd)


def test_first_order_drops_the_second_derivatives() -> None:
    algo, batch = sine_setup(steps=1, first_order=True)
    first = flat(meta_grads(algo, batch, "loop"))
    algo.cfg.first_order = False
    second = flat(meta_grads(algo, batch, "loop"))
    assert float((first - second).abs().max()) > 1e-4


def test_alpha_learns_and_its_metrics_are_reported() -> None:
    algo, batch = sine_setup(tasks=4)
    opt = algo.configure_optimizer()
    before = {k: v.detach().clone() for k, v in algo.lr.items()}
    for i in range(3):
        metrics = meta_update(algo, batch, "vmap", TrainingProgress(i + 1, 3), opt)
    assert all(not torch.equal(before[k], v) for k, v in algo.lr.items())
    alpha = torch.cat([a.detach().flatten() for a in algo.lr.values()])
    assert float(metrics["lr_mean"]) == pytest.approx(float(alpha.mean()), abs=1e-14)
    assert float(metrics["lr_abs_mean"]) == pytest.approx(float(alpha.abs().mean()), abs=1e-14)
    assert float(metrics["lr_negative"]) == pytest.approx(float((alpha < 0).double().mean()))
    assert {"loss", "inner_loss", "inner_loss_after"} <= set(metrics)


def test_evaluation_builds_no_graph_to_alpha() -> None:
    algo, batch = sine_setup()
    support = Support(batch.support_x[0], batch.support_y[0])
    base = {k: v.detach() for k, v in algo.params().items()}
    adapted = algo.adapt(base, support, 2, EVAL).params
    assert not any(v.requires_grad for v in adapted.values())


# ----------------------------------------------------------------------------- the paths
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_loop_in_float64(first_order: bool) -> None:
    algo, batch = sine_setup(steps=3, first_order=first_order, seed=3)
    a, b = flat(meta_grads(algo, batch, "vmap")), flat(meta_grads(algo, batch, "loop"))
    assert float((a - b).abs().max()) < 1e-10
    curves = [algo.adaptation_curve(batch, 4, p) for p in ("vmap", "loop")]
    assert float((curves[0] - curves[1]).abs().max()) < 1e-10


@pytest.mark.parametrize("strided", [True, False])
def test_conv4_fused_and_vmap_equal_loop_in_float64(strided: bool) -> None:
    torch.manual_seed(0)
    size = 12 if strided else 16
    shape = TaskShape("classification", (1, size, size), 3)
    algo = MetaSGD(Conv4((1, size, size), 3, filters=3, strided=strided),
                   MetaSGDConfig(loss="cross_entropy", inner_steps=2, lr_init=(0.05, 0.5)),
                   shape).double()
    assert algo.available_paths == ("vmap", "loop", "fused")
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 12, 1, size, size, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat(4).expand(2, -1).contiguous()
    batch = TaskBatch(images[:, :6], labels[:, :6], images[:, 6:], labels[:, 6:])
    grads = {p: flat(meta_grads(algo, batch, p)) for p in ("fused", "loop", "vmap")}
    assert torch.allclose(grads["fused"], grads["loop"], rtol=1e-9, atol=1e-11)
    assert torch.allclose(grads["vmap"], grads["loop"], rtol=1e-9, atol=1e-11)
    curves = [algo.adaptation_curve(batch, 2, p) for p in ("fused", "loop")]
    assert torch.allclose(*curves, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- end to end
def test_cli_sine_train_eval_plot_and_inner_lr_refused(tmp_path: Path) -> None:
    run = tmp_path / "sine"
    invoke("train", str(CONFIGS / "sine-metasgd.yaml"), "--run-dir", str(run), "--no-progress",
           *sets(train__iterations=20, train__log_every=10, train__val_every=10,
                 train__val_tasks=4, train__checkpoint_every=10, algorithm__meta_batch=4,
                 train__vectorize="vmap", device="cpu"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in logged] == [10, 20]
    assert {"inner_loss", "inner_loss_after", "lr_mean", "lr_abs_mean", "lr_negative"} <= set(
        logged[-1])
    state = checkpoint.load(run / "checkpoints" / "last.pt")["algorithm"]
    assert state["lr.layers/0/weight"].shape == state["model.layers.0.weight"].shape
    r = runner.invoke(app, ["eval", str(run), "--tasks", "4", "--inner-lr", "0.1"])
    assert r.exit_code != 0 and "learns its step sizes" in r.output
    assert "Traceback" not in r.output and not (run / "eval.json").exists()
    out = invoke("eval", str(run), "--tasks", "8", "--steps", "3")
    assert "learned step sizes" in out
    result = json.loads((run / "eval.json").read_text())["results"][0]
    assert result["algorithm"] == "metasgd" and result["settings"]["inner_lr"] is None
    assert len(result["per_step"]) == 4 and len(result["inner"]["inner_loss"]) == 3
    invoke("plot", str(run))
    for name in ("fit.png", "adaptation.png", "inner.png", "metrics.png"):
        assert (run / "plots" / name).stat().st_size > 0


def test_cli_omniglot_fixture_train_eval_plot(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-metasgd.yaml")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [2, 4]
    assert all("accuracy" in r and "lr_mean" in r for r in rows if "loss" in r)
    invoke("eval", str(run), "--tasks", "6")
    result = json.loads((run / "eval.json").read_text())["results"][0]
    assert len(result["per_step"]) == 2 and result["per_step"][1]["accuracy"]["n"] == 6
    invoke("plot", str(run))
    for name in ("loss", "accuracy", "episode", "adaptation"):
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert im.format == "PNG"


def test_configs_load_with_the_papers_settings() -> None:
    sine = load_config(CONFIGS / "sine-metasgd.yaml")
    omni = load_config(CONFIGS / "omniglot-5w1s-metasgd.yaml")
    for cfg in (sine, omni):
        a = cfg.algorithm
        assert a.kind == "metasgd" and a.lr_init == (0.005, 0.1) and a.inner_steps == 1
        assert (a.meta_optimizer, a.meta_lr, a.first_order) == ("adam", 0.001, False)
    assert omni.algorithm.meta_batch == 32 and omni.algorithm.eval_inner_steps == 1
    assert (omni.task.ways, omni.task.shots, omni.model.strided) == (5, 1, True)
    assert sine.algorithm.meta_batch == 25 and sine.algorithm.eval_inner_steps == 1
    assert sine.eval.steps == 1 and omni.eval.steps == 1
