"""Reptile (Nichol, Achiam & Schulman 2018) against hand-written updates in float64: the
interpolation and its linear schedule, the inner SGD and Adam, minibatches, the batching
paths, and short CLI runs on sinusoids and on Omniglot-format fixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, sets, train_omniglot_fixture
from resume_helpers import interrupted_and_resumed_equals_uninterrupted

from fewshot_cli.algorithms import Context, Support, TrainingProgress
from fewshot_cli.algorithms.reptile import ADAM_EPS, Reptile
from fewshot_cli.config import ReptileConfig, load_config
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SINE_SHAPE = TaskShape("regression", (1,), 1)
WAYS = 5


def sine_batch(tasks: int, shots: int, queries: int = 4, seed: int = 0) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    amp = 0.5 + 4 * torch.rand(tasks, 1, 1, generator=gen, dtype=torch.float64)
    phase = 3 * torch.rand(tasks, 1, 1, generator=gen, dtype=torch.float64)

    def points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = 10 * torch.rand(tasks, n, 1, generator=gen, dtype=torch.float64) - 5
        return x, amp * torch.sin(x - phase)

    sx, sy = points(shots)
    qx, qy = points(queries)
    return TaskBatch(sx, sy, qx, qy)


def mlp_reptile(seed: int = 0, **cfg: object) -> Reptile:
    torch.manual_seed(seed)
    settings = dict(loss="mse", inner_optimizer="sgd", inner_lr=0.02, inner_steps=3,
                    inner_batch=None, meta_lr=0.5, meta_batch=3)
    settings.update(cfg)
    return Reptile(MLP(1, 1, [6, 5]).double(), ReptileConfig(**settings), SINE_SHAPE)


def flat(algo: Reptile) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in algo.parameters()])


def net(ps: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP by hand: linear layers with ReLU between them."""
    h = x
    for j in range(0, len(ps), 2):
        h = h @ ps[j].T + ps[j + 1]
        if j + 2 < len(ps):
            h = torch.relu(h)
    return h


def hand_adapt(theta: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
               lr: float, batch: int | None = None, adam: tuple[float, float] | None = None
               ) -> list[torch.Tensor]:
    """k steps of SGD, or of Adam with a fresh state, on minibatches taken in turn."""
    if adam is not None:
        zeros = [torch.zeros_like(p) for p in theta]
        return hand_adam(theta, x, y, steps, lr, adam, zeros, zeros, 0, batch)[0]
    fast = [p.detach().clone() for p in theta]
    for xb, yb in minibatches(x, y, steps, batch):
        params = [p.requires_grad_() for p in fast]
        grads = torch.autograd.grad(((net(params, xb) - yb) ** 2).mean(), params)
        fast = [p.detach() - lr * g for p, g in zip(params, grads)]
    return fast


def minibatches(x: torch.Tensor, y: torch.Tensor, steps: int, batch: int | None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The minibatch of each of ``steps`` steps: batches of ``batch`` taken in turn."""
    n = x.shape[0]
    size = n if batch is None else batch
    starts = [(step % math.ceil(n / size)) * size for step in range(steps)]
    return [(x[a:a + size], y[a:a + size]) for a in starts]


def hand_adam(theta: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
              lr: float, betas: tuple[float, float], m: list[torch.Tensor],
              v: list[torch.Tensor], t: int, batch: int | None = None
              ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Adam from moments ``m``, ``v`` after ``t`` steps, on minibatches taken in turn:
    (phi, m, v)."""
    fast, (b1, b2) = [p.detach().clone() for p in theta], betas
    for step, (xb, yb) in enumerate(minibatches(x, y, steps, batch)):
        params = [p.requires_grad_() for p in fast]
        grads = torch.autograd.grad(((net(params, xb) - yb) ** 2).mean(), params)
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
        k = t + step + 1
        fast = [p.detach() - lr * (mi / (1 - b1 ** k)) / ((vi / (1 - b2 ** k)).sqrt() + ADAM_EPS)
                for p, mi, vi in zip(params, m, v)]
    return fast, m, v


# -- the update ------------------------------------------------------------------------------

def test_update_is_the_interpolation_with_a_linear_schedule() -> None:
    algo = mlp_reptile(meta_lr=0.5, meta_lr_final=0.1)
    optimizer = algo.configure_optimizer()
    total = 4
    scheduler = algo.configure_scheduler(optimizer, total)
    for it in range(1, total + 1):
        batch = sine_batch(3, shots=5, seed=it)
        theta = [p.detach().clone() for p in algo.parameters()]
        eps = 0.5 * (1 - (it - 1) / total) + 0.1 * (it - 1) / total  # the reference code's
        assert optimizer.param_groups[0]["lr"] == pytest.approx(eps, abs=1e-15)
        phis = [hand_adapt(theta, batch.support_x[i], batch.support_y[i], 3, 0.02)
                for i in range(3)]
        expected = [t + eps * sum(phi[j] - t for phi in phis) / 3 for j, t in enumerate(theta)]
        metrics = meta_update(algo, batch, "loop", TrainingProgress(it, total), optimizer)
        scheduler.step()
        assert (flat(algo) - torch.cat([e.flatten() for e in expected])).abs().max() < 1e-12
        step = torch.stack([torch.cat([(p - t).flatten() for p, t in zip(phi, theta)]).norm()
                            for phi in phis]).mean()
        assert metrics["reptile_step"].item() == pytest.approx(step.item(), rel=1e-12)
        assert metrics["inner_loss"].shape == (3,)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1, abs=1e-15)


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.99)])
def test_inner_adam_with_a_fresh_state_per_task_and_minibatches_in_turn(betas) -> None:
    algo = mlp_reptile(inner_optimizer="adam", inner_lr=0.01, inner_betas=betas, inner_steps=5,
                       inner_batch=2)
    batch = sine_batch(3, shots=5, seed=3)
    theta = [p.detach().clone() for p in algo.parameters()]
    base = {k: v.detach() for k, v in algo.params().items()}
    for i in range(3):  # batches [0:2], [2:4], [4:5], [0:2], [2:4]
        one = Support(batch.support_x[i], batch.support_y[i])
        got = algo.adapt(base, one, 5, Context(True, progress=TrainingProgress(1, 1))).params
        want = hand_adapt(theta, batch.support_x[i], batch.support_y[i], 5, 0.01, 2, betas)
        assert max((g - w).abs().max().item() for g, w in zip(got.values(), want)) < 1e-12


def test_training_minibatches_come_from_a_shuffle_of_each_support_set() -> None:
    algo = mlp_reptile(inner_batch=2)
    batch = sine_batch(4, shots=6, seed=5)
    torch.manual_seed(0)
    shuffled = algo.shuffled(batch)
    moved = False
    for i in range(4):
        pairs = {(float(x), float(y)) for x, y in zip(batch.support_x[i], batch.support_y[i])}
        new = [(float(x), float(y)) for x, y in zip(shuffled.support_x[i], shuffled.support_y[i])]
        assert set(new) == pairs and len(new) == 6  # a permutation that keeps x with its y
        moved |= not torch.equal(shuffled.support_x[i], batch.support_x[i])
    assert moved and torch.equal(shuffled.query_x, batch.query_x)
    # the whole support set in every step: nothing to shuffle, no randomness used
    assert mlp_reptile(inner_batch=None).shuffled(batch) is batch
    # meta_step adapts on the shuffled support sets: the same update as by hand
    torch.manual_seed(7)
    expected_batch = algo.shuffled(batch)
    ref = mlp_reptile(inner_batch=2)
    optimizer = ref.configure_optimizer()
    theta = [p.detach().clone() for p in ref.parameters()]
    phis = [hand_adapt(theta, expected_batch.support_x[i], expected_batch.support_y[i], 3, 0.02,
                       2) for i in range(4)]
    torch.manual_seed(7)
    meta_update(ref, batch, "loop", TrainingProgress(1, 10), optimizer)
    expected = torch.cat([(t + 0.5 * sum(phi[j] - t for phi in phis) / 4).flatten()
                          for j, t in enumerate(theta)])
    assert (flat(ref) - expected).abs().max() < 1e-12


def test_the_query_sets_are_never_used_in_training() -> None:
    batch = sine_batch(3, shots=5, seed=2)
    poisoned = TaskBatch(batch.support_x, batch.support_y, torch.full_like(batch.query_x, math.nan),
                         torch.full_like(batch.query_y, math.nan))
    results = []
    for b in (batch, poisoned):
        algo = mlp_reptile()
        meta_update(algo, b, "vmap", TrainingProgress(1, 5), algo.configure_optimizer())
        results.append(flat(algo))
    assert torch.equal(results[0], results[1]) and torch.isfinite(results[0]).all()


def test_adam_outer_optimiser_receives_the_reptile_gradient() -> None:
    algo = mlp_reptile(meta_optimizer="adam", meta_lr=0.01)
    batch = sine_batch(3, shots=5, seed=4)
    theta = [p.detach().clone() for p in algo.parameters()]
    phis = [hand_adapt(theta, batch.support_x[i], batch.support_y[i], 3, 0.02) for i in range(3)]
    meta_update(algo, batch, "loop", TrainingProgress(1, 5), algo.configure_optimizer())
    for j, p in enumerate(algo.parameters()):
        want = theta[j] - sum(phi[j] for phi in phis) / 3
        assert (p.grad - want).abs().max() < 1e-12


# -- the carried Adam state (the reference code's) ----------------------------------------------

def carried(**cfg: object) -> Reptile:
    return mlp_reptile(inner_optimizer="adam", inner_lr=0.01, inner_batch=None,
                       adam_state="carried", **cfg)


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.99)])
def test_carried_adam_state_one_task_per_update_is_the_reference_sequence(betas) -> None:
    """Meta-batch 1: each task's Adam starts where the previous task's ended (moments and
    step count), as one optimiser run across tasks; the state is saved with the weights."""
    algo = carried(meta_batch=1, inner_betas=betas)
    optimizer = algo.configure_optimizer()
    theta = [p.detach().clone() for p in algo.parameters()]
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    for it in range(3):
        batch = sine_batch(1, shots=5, seed=10 + it)
        phi, m, v = hand_adam(theta, batch.support_x[0], batch.support_y[0], 3, 0.01, betas, m,
                              v, 3 * it)
        theta = [t + 0.5 * (f - t) for t, f in zip(theta, phi)]
        meta_update(algo, batch, "loop", TrainingProgress(it + 1, 10), optimizer)
        assert (flat(algo) - torch.cat([t.flatten() for t in theta])).abs().max() < 1e-12
    state = algo.state_dict()
    assert int(state["adam_t"]) == 9
    assert (state["adam_m"] - torch.cat([t.flatten() for t in m])).abs().max() < 1e-12
    assert (state["adam_v"] - torch.cat([t.flatten() for t in v])).abs().max() < 1e-15


def test_carried_adam_state_advances_by_a_whole_meta_batch() -> None:
    """Tasks adapt side by side from the same state, which then advances by every task's
    addition, decayed as k steps of n tasks in turn would (on average over the order)."""
    betas, k, n = (0.5, 0.9), 3, 4
    algo = carried(meta_batch=n, inner_betas=betas, inner_steps=k)
    algo.adam_m.fill_(0.1)
    algo.adam_v.fill_(0.2)
    algo.adam_t.fill_(7)
    theta = [p.detach().clone() for p in algo.parameters()]
    m0 = [torch.full_like(p, 0.1) for p in theta]
    v0 = [torch.full_like(p, 0.2) for p in theta]
    batch = sine_batch(n, shots=5, seed=4)
    ends = [hand_adam(theta, batch.support_x[i], batch.support_y[i], k, 0.01, betas, m0, v0, 7)
            for i in range(n)]
    meta_update(algo, batch, "vmap", TrainingProgress(1, 10), algo.configure_optimizer())
    for buf, start, which, beta in ((algo.adam_m, 0.1, 1, betas[0]),
                                    (algo.adam_v, 0.2, 2, betas[1])):
        mean = torch.stack([torch.cat([t.flatten() for t in e[which]]) for e in ends]).mean(0)
        weight = sum(beta ** (k * j) for j in range(n))
        want = beta ** (k * n) * start + weight * (mean - beta ** k * start)
        assert (buf - want).abs().max() < 1e-12
    assert int(algo.adam_t) == 7 + k * n
    phis = [e[0] for e in ends]
    want = torch.cat([(t + 0.5 * sum(p[j] - t for p in phis) / n).flatten()
                      for j, t in enumerate(theta)])
    assert (flat(algo) - want).abs().max() < 1e-12


def test_evaluation_starts_from_the_carried_state_and_leaves_it() -> None:
    algo = carried(meta_batch=2)
    optimizer = algo.configure_optimizer()
    for it in range(3):
        meta_update(algo, sine_batch(2, shots=5, seed=it), "vmap", TrainingProgress(it + 1, 9),
                    optimizer)
    state = {k: v.clone() for k, v in algo.state_dict().items()}
    test = sine_batch(3, shots=5, seed=20)
    first = algo.adapt_one(test, 1, 4)
    assert all(torch.equal(v, algo.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(a, b) for a, b in zip(first.values(), algo.adapt_one(test, 1, 4)
                                                 .values()))
    theta = [p.detach() for p in algo.parameters()]
    m = list(algo.layout.unflat(algo.adam_m).values())
    v = list(algo.layout.unflat(algo.adam_v).values())
    want, *_ = hand_adam(theta, test.support_x[1], test.support_y[1], 4, 0.01, (0.0, 0.999), m,
                         v, int(algo.adam_t))
    assert max((g - w).abs().max().item() for g, w in zip(first.values(), want)) < 1e-12
    fresh = mlp_reptile(inner_optimizer="adam", inner_lr=0.01, inner_batch=None)
    fresh.load_state_dict({k: v for k, v in state.items() if not k.startswith("adam_")})
    other = fresh.adapt_one(test, 1, 4)  # a fresh state adapts differently
    assert max((a - b).abs().max().item() for a, b in zip(first.values(), other.values())) > 1e-6


# -- batching paths ---------------------------------------------------------------------------

def conv_reptile(**cfg: object) -> Reptile:
    torch.manual_seed(0)
    settings = dict(loss="cross_entropy", inner_steps=3, inner_batch=4, meta_batch=3,
                    meta_lr=1.0)
    settings.update(cfg)
    model = Conv4((1, 16, 16), WAYS, filters=3, strided=True).double()
    return Reptile(model, ReptileConfig(**settings), TaskShape("classification", (1, 16, 16),
                                                                WAYS))


def image_batch(tasks: int, shots: int, queries: int = 2, seed: int = 1) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randn(tasks, n, 1, 16, 16, generator=gen, dtype=torch.float64)

    def labels(k: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat(k).expand(tasks, -1).contiguous()

    return TaskBatch(images(WAYS * shots), labels(shots), images(WAYS * queries), labels(queries))


def one_step_each_path(make, batch: TaskBatch) -> dict[str, tuple[torch.Tensor, dict]]:
    out = {}
    for path in ("loop", "vmap", "fused"):
        algo = make()
        if path not in algo.available_paths:
            continue
        torch.manual_seed(11)  # the same shuffle on every path
        metrics = meta_update(algo, batch, path, TrainingProgress(1, 10),
                              algo.configure_optimizer())
        out[path] = (flat(algo), metrics, algo.adaptation_curve(batch, 4, path))
    return out


@pytest.mark.parametrize("inner", ["sgd", "adam", "carried"])
def test_vmap_loop_and_fused_agree(inner: str) -> None:
    lr = 0.3 if inner == "sgd" else 0.001
    state = "carried" if inner == "carried" else "fresh"
    runs = one_step_each_path(
        lambda: conv_reptile(inner_optimizer="sgd" if inner == "sgd" else "adam", inner_lr=lr,
                             adam_state=state), image_batch(3, shots=2))
    assert set(runs) == {"loop", "vmap", "fused"}
    ref, ref_metrics, ref_curve = runs["loop"]
    # Adam divides each gradient by its own magnitude: the conv biases before batch norm
    # have gradients that are rounding noise (exactly 0 in exact arithmetic), and their
    # steps differ between paths at ~1e-10
    tol = 1e-12 if inner == "sgd" else 1e-8
    for path, (params, metrics, curve) in runs.items():
        assert (params - ref).abs().max() < tol, path
        for k, v in ref_metrics.items():
            assert (metrics[k] - v).abs().max() < 1e-10, (path, k)
        assert (curve - ref_curve).abs().max() < 1e-10, path


def test_vmap_equals_loop_with_inner_adam_on_the_mlp() -> None:
    runs = one_step_each_path(lambda: mlp_reptile(inner_optimizer="adam", inner_lr=0.01,
                                                  inner_batch=2),
                              sine_batch(3, shots=5, seed=6))
    assert set(runs) == {"loop", "vmap", "fused"}
    assert (runs["vmap"][0] - runs["loop"][0]).abs().max() < 1e-12
    assert (runs["fused"][0] - runs["loop"][0]).abs().max() < 1e-12


# -- configs and the CLI --------------------------------------------------------------------------

def test_configs_hold_the_papers_settings() -> None:
    sine = load_config(CONFIGS / "sine-reptile.yaml")
    a = sine.algorithm
    assert (a.kind, a.inner_optimizer, a.inner_lr, a.inner_steps, a.inner_batch) == (
        "reptile", "sgd", 0.02, 5, 10)
    assert (a.meta_optimizer, a.meta_lr, a.meta_lr_final, a.meta_batch) == ("sgd", 0.1, 0.0, 1)
    assert (sine.task.shots, sine.eval.shots, sine.eval.steps, a.eval_inner_batch) == (
        50, 10, 32, None)
    assert sine.model.hidden == [64, 64] and sine.train.iterations == 30000
    omni = load_config(CONFIGS / "omniglot-5w1s-reptile.yaml")
    a = omni.algorithm
    assert (a.inner_optimizer, a.inner_lr, a.inner_betas, a.inner_steps, a.inner_batch) == (
        "adam", 0.001, (0.0, 0.999), 5, 10)
    assert (a.meta_lr, a.meta_lr_final, a.meta_batch, a.eval_inner_steps, a.eval_inner_batch) == (
        1.0, 0.0, 5, 50, 5)
    assert (omni.task.shots, omni.eval.shots, omni.train.iterations) == (10, 1, 100000)
    assert (sine.algorithm.adam_state, a.adam_state) == ("fresh", "carried")
    assert "TRANSDUCTIVE" in (CONFIGS / "omniglot-5w1s-reptile.yaml").read_text()


def test_cli_sine_train_eval_plot(tmp_path: Path) -> None:
    run = tmp_path / "sine"
    invoke("train", str(CONFIGS / "sine-reptile.yaml"), "--run-dir", str(run), "--no-progress",
           *sets(train__iterations=20, train__log_every=5, train__val_every=10,
                 train__val_tasks=5, train__checkpoint_every=10, algorithm__meta_batch=2,
                 algorithm__eval_inner_steps=4, train__vectorize="vmap", device="cpu"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "reptile_step" in r]
    assert [r["iteration"] for r in logged] == [5, 10, 15, 20]
    assert all(r["loss"] > 0 and len(r["inner_loss"]) == 5 for r in logged)
    lrs = [r["meta_lr"] for r in logged]  # eps before iteration t is 0.1 * (1 - t / 20)
    assert lrs == pytest.approx([0.1 * (1 - t / 20) for t in (5, 10, 15, 20)])
    invoke("eval", str(run), "--tasks", "6", "--steps", "3")
    result = json.loads((run / "eval.json").read_text())["results"][0]
    assert len(result["per_step"]) == 4 and result["settings"]["shots"] == 10
    invoke("plot", str(run))
    for name in ("loss", "fit", "adaptation", "metrics"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 0


def test_cli_omniglot_fixture_train_eval_plot(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-reptile.yaml", drawers=4,
                                 task__shots=3, algorithm__inner_batch=5,
                                 algorithm__eval_inner_steps=3)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [2, 4]
    assert all("support_accuracy" in r for r in rows if "loss" in r)
    invoke("eval", str(run), "--tasks", "6", "--steps", "3")
    result = json.loads((run / "eval.json").read_text())["results"][0]
    assert result["settings"]["shots"] == 1 and result["per_step"][3]["accuracy"]["n"] == 6
    invoke("plot", str(run))
    assert (run / "plots" / "episode.png").stat().st_size > 0


@pytest.mark.parametrize("inner", ["sgd", "carried adam"])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path: Path, inner: str) -> None:
    adam = ["algorithm.inner_optimizer=adam", "algorithm.inner_lr=0.01",
            "algorithm.adam_state=carried"] if inner != "sgd" else []
    cfg = load_config(CONFIGS / "sine-reptile.yaml", [
        "train.iterations=4", "train.log_every=2", "train.val_every=2", "train.val_tasks=3",
        "train.checkpoint_every=2", "algorithm.meta_batch=2", "algorithm.eval_inner_steps=2",
        "train.vectorize=vmap", "device=cpu", *adam])
    interrupted_and_resumed_equals_uninterrupted(cfg, tmp_path, "vmap")
