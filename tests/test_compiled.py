"""The ``compiled`` batching path (one compiled meta-gradient) and the MLP's ``fused`` path
against the eager loop, in float64; and how ``auto`` weighs a compilation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import MAMLConfig, SinusoidTask, load_config
from fewshot_cli.engine import compiled, vectorize
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.errors import ConfigError
from fewshot_cli.models import MLP
from fewshot_cli.tasks.base import TaskBatch, TaskShape
from fewshot_cli.tasks.sinusoid import SinusoidTasks

SINE_SHAPE = TaskShape("regression", (1,), 1)
SINE = Path(__file__).resolve().parents[1] / "configs" / "sine-maml.yaml"


def _setup(steps: int = 2, seed: int = 0, **options: object) -> tuple[MAML, TaskBatch]:
    torch.manual_seed(seed)
    model = MLP(1, 1, [5, 4]).double()
    algo = MAML(model, MAMLConfig(loss="mse", inner_lr=0.05, inner_steps=steps, **options),
                SINE_SHAPE)
    batch = SinusoidTasks(SinusoidTask(shots=5, queries=6)).sample(
        3, torch.Generator().manual_seed(seed)).to("cpu", torch.float64)
    return algo, batch


def _eager_grads(algo: MAML, batch: TaskBatch, path: str, progress: TrainingProgress
                 ) -> dict[str, torch.Tensor]:
    algo.zero_grad(set_to_none=True)
    loss, _ = algo.meta_loss(batch, path, progress)
    loss.backward()
    return {n: p.grad.clone() for n, p in algo.named_parameters()}


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for n in want:
        rel = (got[n] - want[n]).abs().max() / want[n].abs().max()
        assert rel < 1e-10, (n, rel.item())


class _Recorder:
    """A one-process ``Sync`` that records the gradients it was given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def gradients(self, module: nn.Module) -> None:
        self.seen.append({n: p.grad.clone() for n, p in module.named_parameters()})


def test_compiled_meta_gradient_equals_the_eager_loop() -> None:
    """The one compiled test (inductor): ``meta_update`` on ``compiled`` sets ``.grad`` to the
    eager loop's meta-gradient, hands it to the process group's ``gradients`` before the
    optimiser step."""
    algo, batch = _setup(steps=2)
    progress = TrainingProgress(1, 1)
    want = _eager_grads(algo, batch, "loop", progress)
    _assert_close(_eager_grads(algo, batch, "fused", progress), want)
    algo.settings = dataclasses.replace(algo.settings, group=_Recorder())
    before = {n: p.detach().clone() for n, p in algo.named_parameters()}
    optimizer = torch.optim.SGD(algo.parameters(), lr=0.1)
    metrics = meta_update(algo, batch, "compiled", progress, optimizer)
    _assert_close(algo.settings.group.seen[0], want)
    _assert_close({n: p.grad for n, p in algo.named_parameters()}, want)
    for n, p in algo.named_parameters():
        assert torch.allclose(p.detach(), before[n] - 0.1 * want[n], rtol=0, atol=1e-12)
    eager_loss, eager_metrics = MAML.meta_loss(algo, batch, "loop", progress)
    assert set(metrics) == {"loss", *eager_metrics}
    assert metrics["inner_loss"].shape == eager_metrics["inner_loss"].shape


def test_an_objective_that_changes_every_iteration_falls_back_to_eager(monkeypatch) -> None:
    """MAML++'s multi-step loss reads the iteration: rather than recompiling every
    iteration, the algorithm switches to the eager vmap path (dynamo-only backend here)."""
    fn = torch.func.grad_and_value(compiled._objective, argnums=1, has_aux=True)
    eager = torch.compile(fn, fullgraph=True, dynamic=False, backend="eager")
    monkeypatch.setattr(compiled, "_compiled", lambda graphs: eager)
    algo, batch = _setup(steps=2, seed=1, msl_iterations=10)
    optimizer = torch.optim.SGD(algo.parameters(), lr=0.0)
    for it in (1, 2, 3):
        progress = TrainingProgress(it, 20, logged=False)
        want = _eager_grads(algo, batch, "loop", progress)
        if it == 2:
            with pytest.warns(RuntimeWarning, match="eager vmap path"):
                meta_update(algo, batch, "compiled", progress, optimizer)
        else:
            meta_update(algo, batch, "compiled", progress, optimizer)
        _assert_close({n: p.grad for n, p in algo.named_parameters()}, want)
    assert compiled.uses_eager(algo)


def _sine(iterations: int):
    cfg = load_config(SINE, [f"train.iterations={iterations}", "device=cpu"])
    return build_experiment(cfg, torch.device("cpu"))


def test_auto_times_compiled_only_for_a_run_that_can_repay_it(monkeypatch) -> None:
    exp = _sine(20)
    calls: list[str] = []
    real = vectorize.time_steps

    def spy(algo, batch, path, device, budget_s=0.3):  # noqa: ANN001, ANN202
        calls.append(path)
        return real(algo, batch, path, device, budget_s=0.02)

    monkeypatch.setattr(vectorize, "time_steps", spy)
    timings, compile_s = vectorize.measure_paths(exp)
    assert "compiled" in vectorize.available(exp.algo)
    assert "compiled" not in calls and "compiled" not in timings and compile_s is None


@pytest.mark.parametrize(("iterations", "expected"), [(100, "vmap"), (100_000, "compiled")])
def test_auto_charges_the_compilation_to_the_run(tmp_path: Path, monkeypatch, iterations: int,
                                                 expected: str) -> None:
    """Compiled at 0.5 ms against vmap at 2 ms, after 30 s compilations: worth it over
    100,000 iterations, not over 100. Read from a cached measurement."""
    exp = _sine(iterations)
    monkeypatch.setattr(vectorize, "cache_root", lambda: tmp_path)
    entry = {"vmap": 2e-3, "loop": 4e-2, "fused": 3e-3, "compiled": 5e-4,
             vectorize.COMPILE_KEY: 30.0}
    (tmp_path / "vectorize.json").write_text(json.dumps({vectorize.cache_key(exp): entry}))
    mode, info = vectorize.choose(exp, "auto")
    assert mode == expected and info["source"] == "cached measurement"
    assert info["compile_seconds"] == 30.0 and set(info["seconds_per_step"]) == set(entry) - {
        vectorize.COMPILE_KEY}


def test_compiled_is_not_offered_without_vmap(monkeypatch) -> None:
    exp = _sine(20)
    monkeypatch.setattr(MAML, "available_paths", property(lambda self: ("loop", "compiled")))
    assert vectorize.available(exp.algo) == ("loop",)
    with pytest.raises(ConfigError, match="compiled is not available"):
        vectorize.choose(exp, "compiled")


def test_cuda_graphs_only_on_a_cuda_device() -> None:
    algo, _ = _setup()
    assert not compiled.uses_graphs(algo, torch.device("cuda"))
    algo.settings = dataclasses.replace(algo.settings, cuda_graphs=True)
    assert compiled.uses_graphs(algo, torch.device("cuda"))
    assert not compiled.uses_graphs(algo, torch.device("cpu"))
    cfg = load_config(SINE, ["device=cpu", "train.cuda_graphs=true"])
    assert build_experiment(cfg, torch.device("cpu")).algo.settings.cuda_graphs


def test_cuda_graph_outputs_are_copied_before_the_next_replay(monkeypatch) -> None:
    """A replay writes its outputs into the graphs' own memory, which the next replay
    overwrites: the gradients and metrics a meta-step keeps must be copies (simulated:
    the stand-in for the graphs zeroes its previous outputs, as a replay would)."""
    fn = torch.compile(torch.func.grad_and_value(compiled._objective, argnums=1, has_aux=True),
                       fullgraph=True, dynamic=False, backend="eager")
    handed: list[torch.Tensor] = []

    def replay(*args):
        for t in handed:
            t.zero_()
        out = fn(*args)
        handed[:] = [t for t in torch.utils._pytree.tree_leaves(out)
                     if isinstance(t, torch.Tensor)]
        return out

    monkeypatch.setattr(compiled, "_compiled", lambda graphs: replay if graphs else None)
    monkeypatch.setattr(compiled, "uses_graphs", lambda algo, device: True)
    algo, batch = _setup(steps=1, seed=2)
    progress = TrainingProgress(1, 1)
    want = _eager_grads(algo, batch, "loop", progress)
    optimizer = torch.optim.SGD(algo.parameters(), lr=0.0)
    metrics = meta_update(algo, batch, "compiled", progress, optimizer)
    kept = {n: p.grad for n, p in algo.named_parameters()}
    loss = metrics["loss"].clone()
    for t in handed:  # the next replay
        t.zero_()
    _assert_close(kept, want)
    assert metrics["loss"] == loss and loss > 0


@pytest.mark.parametrize(("max_seconds", "expected"), [(None, "compiled"), (600, "vmap"),
                                                       (3600, "compiled")])
def test_auto_weighs_the_compilation_against_the_time_budget(
        tmp_path: Path, monkeypatch, max_seconds: float | None, expected: str) -> None:
    """Compiled at 0.5 ms against vmap at 2 ms, three 180-s compilations, 1,000,000
    iterations. Over the whole schedule the compilations cost 0.54 ms per iteration:
    compiled wins. Under a 10-minute budget they take 540 of its 600 s, and compiled
    completes 120,000 iterations where vmap completes 300,000: vmap wins. An hour is
    more than compiled needs for the whole schedule (1,040 s): compiled wins, its
    compilations spread over the iterations as without a budget."""
    sets = ["train.iterations=1000000", "device=cpu"]
    if max_seconds is not None:
        sets.append(f"train.max_seconds={max_seconds}")
    exp = build_experiment(load_config(SINE, sets), torch.device("cpu"))
    monkeypatch.setattr(vectorize, "cache_root", lambda: tmp_path)
    entry = {"vmap": 2e-3, "loop": 4e-2, "fused": 3e-3, "compiled": 5e-4,
             vectorize.COMPILE_KEY: 180.0}
    (tmp_path / "vectorize.json").write_text(json.dumps({vectorize.cache_key(exp): entry}))
    timings = {k: v for k, v in entry.items() if k != vectorize.COMPILE_KEY}
    effective = vectorize._effective(exp, timings, 180.0)
    if max_seconds == 600:
        assert effective["compiled"] == pytest.approx(5e-4 * 600 / (600 - 540))
    else:
        assert effective["compiled"] == pytest.approx(5e-4 + 540 / 1e6)
    assert vectorize.choose(exp, "auto")[0] == expected


def test_a_short_time_budget_is_not_spent_timing_a_compilation() -> None:
    """60,000 iterations at 0.8 s would be worth a compilation; a 600-s budget is not."""
    long = build_experiment(load_config(SINE, ["train.iterations=60000", "device=cpu"]),
                            torch.device("cpu"))
    assert vectorize._worth_compiling(long, {"fused": 0.8})
    short = build_experiment(load_config(SINE, ["train.iterations=60000", "device=cpu",
                                                "train.max_seconds=600"]), torch.device("cpu"))
    assert not vectorize._worth_compiling(short, {"fused": 0.8})
    assert vectorize.run_seconds(short, 0.8) == 600


def test_a_meta_lstm_run_is_worth_timing_its_small_compilation_sooner() -> None:
    """The meta-LSTM compiles a one-update graph (seconds), not the whole meta-gradient: its
    ``compiled`` path is timed for a run of 5 minutes, where MAML's waits for 20."""
    sets = ["train.iterations=500", "device=cpu"]
    lstm = build_experiment(load_config(SINE.parent / "sine-meta-lstm.yaml", sets),
                            torch.device("cpu"))
    maml = build_experiment(load_config(SINE, sets), torch.device("cpu"))
    assert vectorize.min_compile_s(lstm) == vectorize.MIN_INNER_COMPILE_S == 300
    assert vectorize.min_compile_s(maml) == vectorize.MIN_COMPILE_S == 1200
    assert vectorize._worth_compiling(lstm, {"fused": 0.8})  # 400 s of training
    assert not vectorize._worth_compiling(maml, {"fused": 0.8})


def test_a_stop_while_compiling_is_raised_as_the_stop(monkeypatch) -> None:
    """A stop signal that arrives while the meta-gradient compiles reaches the caller wrapped
    in the compiler's error: it is raised as the stop (the run then ends ``interrupted``),
    not as a failed compilation; a real compiler failure stays a CompileError."""
    from torch._dynamo.exc import BackendCompilerFailed

    from fewshot_cli.engine.stopping import Interrupted

    def failing(inner: Exception):
        def run(*args: object) -> object:
            raise BackendCompilerFailed(None, inner, None)
        return lambda graphs: run

    algo, batch = _setup(steps=1)
    monkeypatch.setattr(compiled, "_compiled", failing(Interrupted(15)))
    with pytest.raises(Interrupted):
        compiled.meta_gradient(algo, batch, TrainingProgress(1, 1))
    monkeypatch.setattr(compiled, "_compiled", failing(RuntimeError("no compiler")))
    with pytest.raises(compiled.CompileError, match="torch.compile failed"):
        compiled.meta_gradient(algo, batch, TrainingProgress(1, 1))
