"""DAML: the learned adaptation loss, demonstration tasks, and the chapter exercise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fewshot_cli.algorithms import Context, Support, TrainingProgress
from fewshot_cli.algorithms.daml import DAML
from fewshot_cli.cli import app
from fewshot_cli.config import DAMLConfig, load_config, validate
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.errors import ConfigError
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape
from fewshot_cli.tasks.sinusoid import SinusoidTasks

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "configs" / "sine-daml-chapter.yaml"
CROSS = ROOT / "configs" / "sine-daml.yaml"
NAIVE = ROOT / "configs" / "sine-daml-naive.yaml"
SHORT = ["--set", "train.iterations=20", "--set", "train.log_every=10", "--set",
         "train.val_every=10", "--set", "train.val_tasks=4", "--set", "train.checkpoint_every=10",
         "--set", "device=cpu", "--set", "train.vectorize=vmap"]
runner = CliRunner()


def _exp(config: Path, *sets: str):
    cfg = load_config(config, ["device=cpu", *sets])
    return build_experiment(cfg, torch.device("cpu"))


def _flat_grad(algo: DAML, loss: torch.Tensor) -> torch.Tensor:
    algo.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in algo.parameters()])


# --------------------------------------------------------------------- the meta-parameters
@pytest.mark.parametrize("first_order", [False, True])
def test_loss_network_gets_gradients_and_changes(first_order: bool) -> None:
    exp = _exp(CROSS, "algorithm.meta_batch=4", f"algorithm.first_order={first_order}")
    algo = exp.algo
    assert any(k.startswith("loss_net.") for k in algo.state_dict())
    opt = algo.configure_optimizer()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in algo.parameters()}  # theta and psi in one optimiser
    before = {k: v.clone() for k, v in algo.loss_net.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        batch = exp.source.sample(4, gen, "train")
        loss, _ = algo.meta_loss(batch, "vmap", TrainingProgress(i + 1, 3))
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in algo.loss_net.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        opt.step()
    after = algo.loss_net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_loss_network_reads_output_hidden_and_observation() -> None:
    exp = _exp(CROSS)
    # MLP 1-40-40-1: output 1 + hidden 40 + 40 + observation 1
    assert exp.algo.loss_net.layers[0].in_features == 82
    chapter = _exp(CHAPTER)
    # the book's adaptation network: [y, h2, h1] = 65 inputs -> 32 -> 32 -> 1
    sizes = [(m.in_features, m.out_features) for m in chapter.algo.loss_net.layers]
    assert sizes == [(65, 32), (32, 32), (32, 1)]


# --------------------------------------------------------------------- what adaptation sees
def test_target_values_never_reach_the_inner_loss() -> None:
    """Query targets are not in the support set, and the adapted network does not change
    when they are replaced; the demonstration's observations are not target values."""
    exp = _exp(CROSS)
    batch = exp.source.sample(3, torch.Generator().manual_seed(1), "test")
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    truth = SinusoidTasks.curve(batch.support_x, amp, phase)
    observed = batch.support_y
    assert not torch.allclose(observed, truth, atol=0.5)
    assert torch.allclose(observed, 0.5 * truth + 1, atol=0.3)  # 0.5 y + 1 + N(0, 0.05^2)
    poisoned = TaskBatch(batch.support_x, batch.support_y, batch.query_x,
                         torch.full_like(batch.query_y, 1e6), batch.info)
    a, b = (exp.algo.adapt_one(t, 0, 2) for t in (batch, poisoned))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_support_labels_reach_the_loss_only_as_an_observation() -> None:
    """With ``observation: false`` the support labels cannot change adaptation; with it on,
    they do (so the first assertion could fail)."""
    for observe, same in ((False, True), (True, False)):
        cfg = load_config(ROOT / "configs" / "sine-maml.yaml", ["device=cpu"])
        data = cfg.to_dict()
        data["algorithm"] = {"kind": "daml", "observation": observe, "inner_steps": 2}
        exp = build_experiment(validate(data, "t"), torch.device("cpu"))
        batch = exp.source.sample(2, torch.Generator().manual_seed(0), "test")
        other = TaskBatch(batch.support_x, -3 * batch.support_y, batch.query_x, batch.query_y,
                          batch.info)
        a, b = (exp.algo.adapt_one(t, 0, 2) for t in (batch, other))
        assert all(torch.equal(a[k], b[k]) for k in a) is same


def test_a_demonstration_without_observations_is_refused_to_maml() -> None:
    data = load_config(CHAPTER).to_dict()
    data["algorithm"] = {"kind": "maml", "loss": "l1"}
    with pytest.raises(ConfigError, match="use algorithm.kind: daml"):
        validate(data, "chapter")
    data["task"]["demonstration"]["observe"] = True  # naive MAML reads the observations
    assert validate(data, "chapter").algorithm.kind == "maml"


# --------------------------------------------------------------------- exactness of paths
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_loop_in_float64(first_order: bool) -> None:
    torch.manual_seed(0)
    shape = TaskShape("regression", (1,), 1)
    algo = DAML(MLP(1, 1, [6, 5]), DAMLConfig(loss="mse", inner_lr=0.05, inner_steps=3,
                                              first_order=first_order, loss_hidden=[7],
                                              points_per_step=2), shape).double()
    batch = SinusoidTasks(load_config(CROSS).task).sample(
        3, torch.Generator().manual_seed(0)).to("cpu", torch.float64)
    grads = {path: _flat_grad(algo, algo.meta_loss(batch, path, TrainingProgress(1, 1))[0])
             for path in ("vmap", "loop")}
    assert torch.allclose(grads["vmap"], grads["loop"], rtol=1e-10, atol=1e-12)
    curves = [algo.adaptation_curve(batch, 4, p) for p in ("vmap", "loop")]
    assert torch.allclose(*curves, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_fused_equals_loop_in_float64(first_order: bool) -> None:
    torch.manual_seed(0)
    shape = TaskShape("classification", (1, 12, 12), 3)
    algo = DAML(Conv4((1, 12, 12), 3, filters=3, strided=True),
                DAMLConfig(loss="cross_entropy", inner_lr=0.2, inner_steps=2, loss_hidden=[5],
                           hidden="last", first_order=first_order), shape).double()
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 12, 1, 12, 12, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat(4).expand(2, -1).contiguous()
    batch = TaskBatch(images[:, :6], labels[:, :6], images[:, 6:], labels[:, 6:])
    grads = {path: _flat_grad(algo, algo.meta_loss(batch, path, TrainingProgress(1, 1))[0])
             for path in ("fused", "loop", "vmap")}
    assert torch.allclose(grads["fused"], grads["loop"], rtol=1e-9, atol=1e-11)
    assert torch.allclose(grads["vmap"], grads["loop"], rtol=1e-9, atol=1e-11)


def test_second_order_differs_from_first_order() -> None:
    exp = _exp(CHAPTER)
    batch = exp.source.sample(2, torch.Generator().manual_seed(0), "train")
    g2 = _flat_grad(exp.algo, exp.algo.meta_loss(batch, "loop", TrainingProgress(1, 1))[0])
    exp.algo.cfg.first_order = True
    g1 = _flat_grad(exp.algo, exp.algo.meta_loss(batch, "loop", TrainingProgress(1, 1))[0])
    assert not torch.allclose(g1, g2)


# --------------------------------------------------------------------- the chapter exercise
def test_chapter_config_is_the_exercise() -> None:
    cfg = load_config(CHAPTER)
    t, a = cfg.task, cfg.algorithm
    assert t.phase_choices == pytest.approx([0.0, math.pi]) and t.amplitude == (1.0, 1.0)
    assert t.x_range == pytest.approx((-2 * math.pi, 2 * math.pi))
    assert (t.queries, a.loss, a.inner_steps, a.inner_lr) == (4, "l1", 5, 0.03)
    assert (a.meta_batch, a.meta_optimizer, a.meta_lr, cfg.train.iterations) == (
        1, "sgd", 0.01, 100000)
    assert t.shots == a.inner_steps and a.points_per_step == 1
    assert cfg.model.hidden == [32, 32] and a.loss_hidden == [32, 32] and a.loss_norm == "l1"


def test_chapter_demonstrations_lie_where_the_book_draws_them() -> None:
    exp = _exp(CHAPTER)
    batch = exp.source.sample(400, torch.Generator().manual_seed(0), "train")
    assert batch.support_y.shape == (400, 5, 0)  # inputs only: no observation, no label
    x = batch.support_x[..., 0]
    zero = batch.info["phase"] == 0
    assert 100 < int(zero.sum()) < 300  # both tasks drawn
    assert bool(((x[zero] >= math.pi / 4) & (x[zero] <= math.pi / 2)).all())
    assert bool(((x[~zero] >= -math.pi / 2) & (x[~zero] <= -math.pi / 4)).all())
    assert batch.query_x.shape == (400, 4, 1)
    q = batch.query_x
    assert float(q.min()) >= -2 * math.pi and float(q.max()) <= 2 * math.pi
    assert float(q.min()) < -5 and float(q.max()) > 5  # target points over the whole range


def test_each_inner_step_reads_one_fresh_demonstration_point(monkeypatch) -> None:
    exp = _exp(CHAPTER)
    batch = exp.source.sample(1, torch.Generator().manual_seed(3), "train")
    seen: list[torch.Tensor] = []
    learned_loss = DAML.learned_loss

    def spy(self, params, x, obs, ctx):  # noqa: ANN001
        seen.append(x.detach().clone())
        return learned_loss(self, params, x, obs, ctx)

    monkeypatch.setattr(DAML, "learned_loss", spy)
    support = Support(batch.support_x[0], batch.support_y[0])
    exp.algo.adapt(exp.algo.params(), support, 5, Context(training=True))
    assert len(seen) == 5 and all(s.shape == (1, 1) for s in seen)
    points = torch.cat(seen).flatten()
    assert torch.equal(points, batch.support_x[0].flatten())  # each point once, in turn


# --------------------------------------------------------------------- end to end
def _train(tmp_path: Path, config: Path, name: str) -> Path:
    run = tmp_path / name
    r = runner.invoke(app, ["train", str(config), *SHORT, "--no-progress", "--run-dir",
                            str(run)])
    assert r.exit_code == 0, r.output
    return run


def test_cli_cross_domain_with_naive_baseline(tmp_path: Path) -> None:
    daml, naive = _train(tmp_path, CROSS, "daml"), _train(tmp_path, NAIVE, "naive")
    rows = [json.loads(line) for line in (daml / "metrics.jsonl").read_text().splitlines()]
    assert {"learned_loss", "loss_net_output", "learned_loss_after"} <= set(rows[-1])
    r = runner.invoke(app, ["eval", str(daml), "--tasks", "8", "--baseline", str(naive)])
    assert r.exit_code == 0, r.output
    side = r.output[r.output.index("same 8 tasks"):]  # one table: DAML, unadapted, naive
    assert "daml (daml)" in side and "maml (naive)" in side and "unadapted" in side
    results = json.loads((daml / "eval.json").read_text())["results"]
    assert [x["algorithm"] for x in results] == ["daml", "maml"]
    assert len(results[0]["inner"]["learned_loss"]) == 1
    assert "curve_l1" in results[0]["probe"] and "curve_l1" in results[1]["probe"]
    r = runner.invoke(app, ["plot", str(daml), "--baseline", str(naive)])
    assert r.exit_code == 0, r.output
    for name in ("fit.png", "adaptation.png", "inner.png", "metrics.png"):
        assert (daml / "plots" / name).stat().st_size > 0


def test_cli_chapter_reports_phase_identification(tmp_path: Path) -> None:
    run = _train(tmp_path, CHAPTER, "chapter")
    r = runner.invoke(app, ["eval", str(run), "--tasks", "10"])
    assert r.exit_code == 0, r.output
    assert "own phase's curve closer" in r.output
    result = json.loads((run / "eval.json").read_text())["results"][0]
    share = result["probe"]["phase_identified"]["after"]["mean"]
    assert 0.0 <= share <= 1.0 and result["probe"]["points"]["points"] == 200
    assert [len(result["inner"][k]) for k in ("learned_loss", "loss_net_output")] == [5, 5]
    r = runner.invoke(app, ["plot", str(run)])
    assert r.exit_code == 0, r.output
    assert (run / "plots" / "fit.png").exists()
