"""``algorithm.checkpoint_inner_steps`` (inner steps recomputed in the backward pass) and
``train.autocast: bf16`` (meta-training's forward passes under bfloat16 autocast)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from cli_helpers import invoke, train_omniglot_fixture
from torch.profiler import ProfilerActivity, profile

from fewshot_cli.algorithms import Context, TrainingProgress
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import MAMLConfig, load_config, validate
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.errors import ConfigError
from fewshot_cli.models import MLP, Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WAYS = 5
MAMLPP = dict(msl_iterations=5, learned_inner_lrs=True, per_step_bn_weights=True,
              per_step_bn_statistics=True)


def images(size: int, tasks: int = 3, shots: int = 1, queries: int = 2, seed: int = 1,
           dtype: torch.dtype = torch.float64) -> TaskBatch:
    """Random ``WAYS``-way tasks whose images are a class prototype plus noise."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(tasks, WAYS, 1, size, size, generator=gen, dtype=dtype)

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = protos.repeat(1, k, 1, 1, 1)
        y = torch.arange(WAYS).repeat(k).expand(tasks, -1).contiguous()
        return x + 0.5 * torch.randn(x.shape, generator=gen, dtype=dtype), y

    return TaskBatch(*draw(shots), *draw(queries))


def conv_maml(size: int = 16, steps: int = 3, filters: int = 3, strided: bool = False,
              lr: float = 0.3, dtype: torch.dtype = torch.float64, **options: Any) -> MAML:
    torch.manual_seed(0)
    cfg = MAMLConfig(loss="cross_entropy", inner_lr=lr, inner_steps=steps, **options)
    model = Conv4((1, size, size), WAYS, filters=filters, strided=strided)
    algo = MAML(model, cfg, TaskShape("classification", (1, size, size), WAYS)).to(dtype)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # per-step sets and step sizes apart from their equal start
        for n, p in [*algo.named_parameters(), *algo.named_buffers()]:
            if "inner_lrs" in n or "step_" in n:
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype)).abs_()
    return algo


def meta_gradient(algo: MAML, batch: TaskBatch, path: str, iteration: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The outer loss, the flattened meta-gradient of every meta-parameter and the metrics."""
    loss, metrics = algo.meta_loss(batch, path, TrainingProgress(iteration, 10))
    grads = torch.autograd.grad(loss, list(algo.parameters()), allow_unused=True)
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(algo.parameters(), grads)])
    return loss.detach(), flat, metrics


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("path", ["loop", "fused"])
@pytest.mark.parametrize("case", ["maml", "strided", "maml++", "da-first-order"])
def test_checkpointed_inner_steps_give_the_same_meta_gradient(path: str, case: str) -> None:
    options = {"maml++": MAMLPP, "da-first-order": {"first_order_iterations": 3}}.get(case, {})
    algo = conv_maml(strided=case == "strided", **options)
    batch = images(16)
    loss, want, metrics = meta_gradient(algo, batch, path)
    algo.checkpoint_inner_steps = True
    ctx = Context(True, progress=TrainingProgress(1, 10))
    assert algo.checkpoints(ctx) == (case != "da-first-order")
    loss_ck, got, metrics_ck = meta_gradient(algo, batch, path)
    assert relative(got, want) < 1e-10 and torch.allclose(loss, loss_ck, rtol=1e-12, atol=0)
    assert metrics.keys() == metrics_ck.keys()  # BNRS's batch statistics among them
    assert all(torch.allclose(metrics[k], metrics_ck[k], rtol=1e-12, atol=0) for k in metrics)


def test_checkpointed_steps_apply_to_second_order_meta_training_only() -> None:
    train = Context(True, progress=TrainingProgress(1, 10))
    assert not conv_maml().checkpoints(train)  # off by default
    assert not conv_maml(first_order=True, checkpoint_inner_steps=True).checkpoints(train)
    algo = conv_maml(checkpoint_inner_steps=True)
    assert algo.checkpoints(train) and not algo.checkpoints(Context(training=False))
    batch = images(16)
    curve = algo.adaptation_curve(batch, 3, "loop")
    algo.checkpoint_inner_steps = False
    assert torch.equal(curve, algo.adaptation_curve(batch, 3, "loop"))


def graph_bytes(steps: int, checkpoint: bool, path: str) -> int:
    """Bytes allocated by the meta-loss's forward pass and still held when it returns: what
    the backward pass keeps (the CPU profiler's allocations less frees)."""
    algo = conv_maml(steps=steps, checkpoint_inner_steps=checkpoint)
    batch = images(16)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss, _ = algo.meta_loss(batch, path, TrainingProgress(1, 1))
    del loss
    return sum(e.self_cpu_memory_usage for e in prof.key_averages())


@pytest.mark.parametrize("path", ["loop", "fused"])
def test_checkpointing_keeps_the_graph_flat_in_inner_steps(path: str) -> None:
    plain = [graph_bytes(s, False, path) for s in (1, 4)]
    checkpointed = [graph_bytes(s, True, path) for s in (1, 4)]
    per_step, per_step_ck = (plain[1] - plain[0]) / 3, (checkpointed[1] - checkpointed[0]) / 3
    assert per_step > 100_000  # each step's activations, ~0.6 MB here
    assert 0 <= per_step_ck < 0.05 * per_step  # only each step's parameters, ~8 kB
    assert checkpointed[1] < plain[0]


def test_checkpointing_refuses_vmap_and_is_left_out_of_the_config_when_off() -> None:
    algo = conv_maml(checkpoint_inner_steps=True)
    assert {"loop", "fused"} <= set(algo.available_paths)
    assert not {"vmap", "compiled"} & set(algo.available_paths)  # compiled maps as vmap
    with pytest.raises(ConfigError, match="checkpoint_inner_steps.*found vmap"):
        algo.meta_loss(images(16), "vmap", TrainingProgress(1, 1))
    cfg = load_config(CONFIGS / "omniglot-5w1s-maml.yaml")
    assert "checkpoint_inner_steps" not in cfg.to_dict()["algorithm"]  # old runs resume
    on = load_config(CONFIGS / "omniglot-5w1s-maml.yaml",
                     ["algorithm.checkpoint_inner_steps=true", "train.vectorize=vmap"])
    assert on.to_dict()["algorithm"]["checkpoint_inner_steps"] is True
    assert validate(on.to_dict(), "x") == on
    with pytest.raises(ConfigError, match="checkpoint_inner_steps.*found vmap"):
        build_experiment(on, torch.device("cpu"))


# ----------------------------------------------------------------------------- bf16 autocast
def omniglot_maml(path: str, seed: int) -> tuple[MAML, TaskBatch]:
    """Omniglot-shaped second-order MAML: strided conv4 (32 filters) on 1x28x28, 5-way
    1-shot, 5 queries, one inner step of 0.4, meta-batch 8, in float32."""
    algo = conv_maml(size=28, steps=1, filters=32, strided=True, lr=0.4, dtype=torch.float32)
    return algo, images(28, tasks=8, queries=5, seed=seed, dtype=torch.float32)


@pytest.mark.parametrize("path", ["loop", "fused", "vmap"])
def test_bf16_meta_gradient_is_close_to_float32(path: str) -> None:
    """bf16 keeps 8 significant bits: even an ordinary gradient of this conv4 on one batch
    is ~10% off in norm under CPU autocast, the meta-gradient ~20% (cosine ~0.98). That is
    far below the meta-batch's own sampling noise, which the last assertion checks."""
    algo, batch = omniglot_maml(path, seed=0)
    loss, want, _ = meta_gradient(algo, batch, path)
    algo.settings = dataclasses.replace(algo.settings, autocast=torch.bfloat16)
    loss16, got, metrics = meta_gradient(algo, batch, path)
    assert got.dtype == torch.float32 and all(p.dtype == torch.float32 for p in algo.parameters())
    assert loss16.dtype == torch.float32 and all(v.dtype == torch.float32
                                                 for v in metrics.values())
    cosine = F.cosine_similarity(got, want, dim=0).item()
    assert cosine > 0.95 and relative(got, want) < 0.3, (cosine, relative(got, want))
    assert abs(loss16 - loss) < 1e-2 * loss
    algo.settings = dataclasses.replace(algo.settings, autocast=None)
    _, other, _ = meta_gradient(algo, omniglot_maml(path, seed=1)[1], path)
    assert F.cosine_similarity(other, want, dim=0).item() < cosine - 0.2


def test_bf16_sine_mlp_meta_gradient_is_close_to_float32() -> None:
    torch.manual_seed(0)
    algo = MAML(MLP(1, 1, [40, 40]), MAMLConfig(loss="mse", inner_lr=0.01, inner_steps=2),
                TaskShape("regression", (1,), 1))
    gen = torch.Generator().manual_seed(0)
    amp, phase = 5 * torch.rand(10, 1, 1, generator=gen), 3 * torch.rand(10, 1, 1, generator=gen)
    x = 10 * torch.rand(10, 20, 1, generator=gen) - 5
    batch = TaskBatch(x[:, :10], amp * torch.sin(x[:, :10] - phase), x[:, 10:],
                      amp * torch.sin(x[:, 10:] - phase))
    _, want, _ = meta_gradient(algo, batch, "vmap")
    algo.settings = dataclasses.replace(algo.settings, autocast=torch.bfloat16)
    _, got, _ = meta_gradient(algo, batch, "vmap")
    assert F.cosine_similarity(got, want, dim=0).item() > 0.99 and relative(got, want) < 0.1


@pytest.mark.parametrize("path", ["loop", "fused"])
def test_bf16_checkpointed_steps_are_recomputed_under_bf16(path: str) -> None:
    algo, batch = omniglot_maml(path, seed=0)
    algo.inner_steps = 2
    algo.settings = dataclasses.replace(algo.settings, autocast=torch.bfloat16)
    _, want, _ = meta_gradient(algo, batch, path)
    algo.checkpoint_inner_steps = True
    _, got, _ = meta_gradient(algo, batch, path)
    # bf16 sums in another order on the loop path (0.3% here, 0 fused); a recomputation in
    # float32 would be 5-10% off
    assert relative(got, want) < 1e-2


def test_bf16_leaves_evaluation_in_float32() -> None:
    algo, batch = omniglot_maml("loop", seed=0)
    curve = algo.adaptation_curve(batch, 2, "fused")
    algo.settings = dataclasses.replace(algo.settings, autocast=torch.bfloat16)
    assert torch.equal(curve, algo.adaptation_curve(batch, 2, "fused"))


def test_bf16_is_refused_with_float64_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "sine-maml.yaml", ["train.autocast=bf16", "train.dtype=float64"])
    assert "\n" not in str(err.value) and "train.autocast" in str(err.value)
    assert "float64" in str(err.value)
    cfg = load_config(CONFIGS / "sine-maml.yaml", ["train.autocast=off"])  # YAML's false
    assert cfg.train.autocast == "off" and build_experiment(cfg).algo.settings.autocast is None
    cfg = load_config(CONFIGS / "sine-maml.yaml", ["train.autocast=bf16"])
    assert build_experiment(cfg).algo.settings.autocast == torch.bfloat16


def test_bf16_and_checkpointing_train_a_few_iterations(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-maml.yaml",
                                 algorithm__inner_steps=2, algorithm__checkpoint_inner_steps=True,
                                 train__autocast="bf16")
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["autocast"] == "bf16"
    assert resolved["algorithm"]["checkpoint_inner_steps"] is True
    rows = [yaml.safe_load(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    invoke("eval", str(run), "--tasks", "4", "--steps", "2")
