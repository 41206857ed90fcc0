"""The algorithm interface and the engine around it: what adaptation may see,
the registry, a plug-in with its own metrics and meta-update, batching paths,
divergence, checkpoints and TensorBoard."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.func import functional_call

from fewshot_cli.algorithms import (
    ALGORITHMS,
    VECTORIZE,
    Algorithm,
    Context,
    Support,
    TrainingProgress,
    algorithm_class,
)
from fewshot_cli.algorithms.batching import split
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import ALGORITHM_SECTIONS, MAMLConfig, load_config, validate
from fewshot_cli.engine import checkpoint, vectorize
from fewshot_cli.engine.evaluator import divergence_summary, load_experiment, summarize
from fewshot_cli.engine.setup import build_experiment
from fewshot_cli.engine.stopping import StopSignals
from fewshot_cli.engine.trainer import train
from fewshot_cli.errors import ConfigError, FewshotError, RunDirError
from fewshot_cli.models import Conv4
from fewshot_cli.plots import plot_run
from fewshot_cli.rundir import RunDir
from fewshot_cli.tasks.base import TaskBatch, TaskShape

ROOT = Path(__file__).resolve().parents[1]
SINE = ROOT / "configs" / "sine-maml.yaml"
SHORT = ["train.iterations=30", "train.log_every=10", "train.val_every=15", "train.val_tasks=5",
         "train.checkpoint_every=10", "algorithm.meta_batch=3", "train.vectorize=vmap",
         "device=cpu"]
SENTINEL = 12345.0


def sine_cfg(*extra: str, kind: str = "maml"):
    cfg = load_config(SINE, SHORT + list(extra))
    if kind != "maml":
        data = cfg.to_dict()
        data["algorithm"] = {k: v for k, v in data["algorithm"].items() if k != "first_order"}
        data["algorithm"]["kind"] = kind
        cfg = validate(data, "test")
    return cfg


def poisoned(batch: TaskBatch) -> TaskBatch:
    """The same tasks with every query value replaced by a sentinel."""
    return TaskBatch(batch.support_x, batch.support_y,
                     torch.full_like(batch.query_x, SENTINEL),
                     torch.full_like(batch.query_y, SENTINEL), batch.info)


# ----------------------------------------------------------------------------- the interface
def test_registry_and_config_sections_agree() -> None:
    assert set(ALGORITHMS) == set(ALGORITHM_SECTIONS)
    for kind in ALGORITHMS:
        cls = algorithm_class(kind)
        assert issubclass(cls, Algorithm) and cls.kind == kind
        assert set(cls.paths) <= set(VECTORIZE)


def test_support_has_no_query_fields() -> None:
    assert Support._fields == ("x", "y", "unlabelled")


@pytest.mark.parametrize("kind", sorted(ALGORITHMS))
def test_query_never_reaches_adaptation(kind: str, monkeypatch) -> None:
    """Adaptation, in training and in evaluation, only ever sees support values.

    (On the loop path, where values can be inspected; vmap maps the same functions
    over the same ``split(batch)``.)"""
    path = "loop"
    exp = build_experiment(sine_cfg(kind=kind), torch.device("cpu"))
    batch = poisoned(exp.source.sample(3, torch.Generator().manual_seed(0), "train"))
    seen: list[Any] = []
    inner_step = type(exp.algo).inner_step

    def spy(self, params, state, support, step, ctx):  # noqa: ANN001
        seen.append(support)
        for t in (support.x, support.y):
            assert not bool((t == SENTINEL).any()), "a query value reached adaptation"
        return inner_step(self, params, state, support, step, ctx)

    monkeypatch.setattr(type(exp.algo), "inner_step", spy)
    exp.algo.meta_loss(batch, path, TrainingProgress(1, 1))
    exp.algo.adaptation_curve(batch, 2, path)
    exp.algo.adapt_one(batch, 0, 2)
    assert seen and all(isinstance(s, Support) for s in seen)


def test_adapted_params_do_not_depend_on_query_labels() -> None:
    exp = build_experiment(sine_cfg(), torch.device("cpu"))
    batch = exp.source.sample(2, torch.Generator().manual_seed(0), "train")
    a = exp.algo.adapt_one(batch, 0, 3)
    b = exp.algo.adapt_one(poisoned(batch), 0, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)


class Averaged(MAML):
    """A toy plug-in: its own metric names, per-task state across steps, and a meta-update
    that is not a loss gradient (Reptile-like: move towards the adapted weights)."""

    kind = "toy"
    paths = ("loop",)

    def init_state(self, params, support, ctx):  # noqa: ANN001
        return torch.zeros(())

    def inner_step(self, params, state, support, step, ctx):  # noqa: ANN001
        new, loss = self.sgd_step(params, support.x, support.y, self.inner_lr, False, ctx)
        return new, state + step, {"support_mse": loss, "step_index": state + step}

    def meta_loss(self, batch, vectorize, progress):  # noqa: ANN001
        """A surrogate whose gradient points from the mean adapted weights to the init."""
        support, _ = split(batch)
        base_params = {k: v.detach() for k, v in self.params().items()}
        target = {k: torch.zeros_like(v) for k, v in base_params.items()}
        with torch.no_grad():
            for i in range(len(batch)):
                one = Support(support.x[i], support.y[i])
                fast = self.adapt(base_params, one, 2, Context(True, progress=progress)).params
                for k in target:
                    target[k] += fast[k] / len(batch)
        surrogate = sum((p - target[k]).pow(2).sum() / 2 for k, p in self.params().items())
        return surrogate, {"progress": torch.tensor(progress.fraction), "moved": torch.ones(2)}

    def after_update(self, batch, progress, metrics):  # noqa: ANN001
        metrics.pop("loss")  # the surrogate is not a loss worth logging
        return metrics


def test_a_plug_in_with_its_own_metrics_trains_logs_and_plots(tmp_path: Path) -> None:
    cfg = sine_cfg()
    exp = build_experiment(cfg, torch.device("cpu"))
    toy = Averaged(exp.algo.model, cfg.algorithm, exp.source)
    exp.algo = toy
    # the path is the algorithm's to declare: vmap is refused, auto picks loop without timing
    with pytest.raises(ConfigError, match="not available for algorithm"):
        vectorize.choose(exp, "vmap")
    path, info = vectorize.choose(exp, "auto")
    assert path == "loop" and info["source"] == "only path"
    before = {k: v.clone() for k, v in toy.state_dict().items()}
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(cfg)
    outcome = train(exp, run, path, stop=StopSignals(), show_progress=False)
    assert outcome.status == "completed" and outcome.exit_code == 0
    assert any(not torch.equal(before[k], v) for k, v in toy.state_dict().items())
    rows = run.read_metrics()
    logged = [r for r in rows if "progress" in r]
    assert [r["iteration"] for r in logged] == [10, 20, 30]
    assert logged[-1]["progress"] == pytest.approx((21 + 30) / 2 / 30)  # window mean
    assert logged[0]["moved"] == [1.0, 1.0] and "val_loss" in rows[-1]
    from fewshot_cli.plots import algorithm_metrics, plot_metrics

    assert algorithm_metrics(rows) == ["progress", "moved"]
    assert plot_metrics(run, rows, cfg).is_file()


def test_window_averages_each_metric_over_the_iterations_that_reported_it() -> None:
    from fewshot_cli.engine.trainer import Window

    w = Window()
    w.add({"loss": torch.tensor(1.0), "steps": torch.tensor([1.0, 3.0])})
    w.add({"loss": torch.tensor(3.0), "steps": torch.tensor([3.0, 5.0]),
           "sparse": torch.tensor(7.0)})
    restored = Window()
    restored.load_state_dict(w.state_dict())
    assert restored.flush() == {"loss": 2.0, "steps": [2.0, 4.0], "sparse": 7.0}
    assert w.flush() == {"loss": 2.0, "steps": [2.0, 4.0], "sparse": 7.0} and not w.sums


def test_progress_reaches_the_objective() -> None:
    fractions = []

    class Spy(MAML):
        def task_objective(self, params, support, query, ctx):  # noqa: ANN001
            fractions.append(ctx.progress.fraction)
            return super().task_objective(params, support, query, ctx)

    cfg = sine_cfg()
    exp = build_experiment(cfg, torch.device("cpu"))
    algo = Spy(exp.algo.model, cfg.algorithm, exp.source)
    batch = exp.source.sample(2, torch.Generator().manual_seed(0), "train")
    algo.meta_loss(batch, "loop", TrainingProgress(3, 12))
    assert fractions == [0.25, 0.25]


def test_a_path_that_raises_is_an_error_not_a_slow_path(monkeypatch) -> None:
    exp = build_experiment(sine_cfg(), torch.device("cpu"))
    real = MAML.meta_loss

    def broken(self, batch, path, progress):  # noqa: ANN001
        if path == "loop":
            raise RuntimeError("boom in the loop path")
        return real(self, batch, path, progress)

    monkeypatch.setattr(MAML, "meta_loss", broken)
    monkeypatch.setattr(vectorize, "cache_root", lambda: Path("/nonexistent-fewshot-cache"))
    with pytest.raises(FewshotError, match="loop path failed while being timed.*boom"):
        vectorize.measure_paths(exp)


def test_measuring_paths_leaves_the_run_untouched() -> None:
    exp = build_experiment(sine_cfg(), torch.device("cpu"))
    params = {k: v.clone() for k, v in exp.algo.state_dict().items()}
    rng = torch.get_rng_state()
    timings, _ = vectorize.measure_paths(exp)
    assert set(timings) == {"vmap", "loop", "fused"}  # compiled: only for long runs
    assert all(torch.equal(params[k], v) for k, v in exp.algo.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_problem_is_a_property_of_the_task() -> None:
    assert load_config(SINE).problem == "regression"
    assert validate({"task": {"kind": "image_folder"}}, "x").problem == "classification"
    assert validate({"task": {"kind": "image_folder"}}, "x").model.kind == "conv4"


def test_algorithm_sections_are_validated_by_kind() -> None:
    with pytest.raises(ConfigError, match="unknown key 'algorithm.first_order'"):
        validate({"algorithm": {"kind": "pretrain", "first_order": True}}, "x")
    with pytest.raises(ConfigError, match="algorithm.kind: expected one of maml, pretrain"):
        validate({"algorithm": {"kind": "nope"}}, "x")
    assert validate({"algorithm": {"first_order": True}}, "x").algorithm.kind == "maml"


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(("strided", "size"), [(True, 28), (False, 16)])
def test_second_order_gradient_through_conv4_with_batch_norm_matches_finite_differences(
        strided: bool, size: int) -> None:
    """Directional derivatives of the fused path's meta-gradient against central differences
    of an independent plain-autograd objective (batch norm on 3-image batches is strongly
    curved: the difference shrinks as eps**2, so eps is small)."""
    torch.manual_seed(0)
    model = Conv4((1, size, size), 3, filters=2, strided=strided).double()
    algo = MAML(model, MAMLConfig(loss="cross_entropy", inner_lr=0.3, inner_steps=2),
                TaskShape("classification", (1, size, size), 3))
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 6, 1, size, size, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat(2).expand(2, -1).contiguous()
    batch = TaskBatch(images[:, :3], labels[:, :3], images[:, 3:], labels[:, 3:])
    names = [n for n, _ in model.named_parameters()]

    def objective(flat: torch.Tensor) -> torch.Tensor:
        """The MAML objective with plain autograd and functional_call, task by task."""
        params, i = {}, 0
        for n, p in model.named_parameters():
            params[n] = flat[i:i + p.numel()].view_as(p)
            i += p.numel()
        total = 0.0
        for t in range(2):
            fast = params
            for _ in range(2):
                out = functional_call(model, fast, (batch.support_x[t],))
                loss = torch.nn.functional.cross_entropy(out, batch.support_y[t])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {n: p - 0.3 * g for (n, p), g in zip(fast.items(), grads)}
            out = functional_call(model, fast, (batch.query_x[t],))
            total = total + torch.nn.functional.cross_entropy(out, batch.query_y[t])
        return total / 2

    algo.zero_grad()
    algo.meta_loss(batch, "fused", TrainingProgress(1, 1))[0].backward()
    got = torch.cat([dict(model.named_parameters())[n].grad.flatten() for n in names])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        d = torch.randn(flat.shape, generator=gen, dtype=torch.float64)
        eps = 1e-6
        with torch.enable_grad():
            fd = float((objective((flat + eps * d).requires_grad_())
                        - objective((flat - eps * d).requires_grad_())).detach()) / (2 * eps)
        assert abs(float(got @ d) - fd) < 1e-6 * max(1.0, abs(fd)), (float(got @ d), fd)


# ----------------------------------------------------------------------------- divergence
def test_summarize() -> None:
    s = summarize(torch.tensor([1.0, 2.0, 3.0, math.nan, math.inf]))
    assert s["n"] == 3 and s["diverged"] == 2
    assert s["mean"] == pytest.approx(2.0) and s["median"] == pytest.approx(2.0)
    assert s["std"] == pytest.approx(1.0) and s["ci95"] == pytest.approx(1.96 / math.sqrt(3))
    assert summarize(torch.tensor([math.nan]))["mean"] is None
    assert summarize(torch.tensor([4.0]))["ci95"] == 0.0


def test_one_divergence_policy_for_loss_and_accuracy() -> None:
    # task 1 diverges after step 1: its (meaningless) accuracy is not averaged in there
    curves = torch.tensor([[[1.0, 0.5], [0.5, 1.0]],
                           [[1.0, 1.0], [math.nan, 0.2]]])
    rows = divergence_summary(curves)
    assert rows[0]["loss"]["n"] == 2 and rows[0]["accuracy"]["mean"] == pytest.approx(0.75)
    assert rows[1]["loss"]["diverged"] == 1 and rows[1]["accuracy"]["diverged"] == 1
    assert rows[1]["accuracy"]["mean"] == pytest.approx(1.0)


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = sine_cfg("algorithm.meta_optimizer=sgd", "algorithm.meta_lr=10",
                   "train.iterations=200")
    exp = build_experiment(cfg, torch.device("cpu"))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(cfg)
    outcome = train(exp, run, "vmap", stop=StopSignals(), show_progress=False)
    assert outcome.status == "diverged" and "diverged at iteration" in outcome.message
    assert json.loads(run.meta_path.read_text())["status"] == "diverged"
    state = checkpoint.load(run.checkpoint_path("last"))
    assert all(torch.isfinite(v).all() for v in state["algorithm"].values())
    assert state["iteration"] < outcome.iteration


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def sine_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    cfg = sine_cfg("train.keep_checkpoints=2", "train.tensorboard=true")
    exp = build_experiment(cfg, torch.device("cpu"))
    run = RunDir(tmp_path_factory.mktemp("runs") / "run")
    run.path.mkdir()
    run.write_config(cfg)
    from fewshot_cli.engine.tensorboard import TensorBoardLog

    train(exp, run, "vmap", stop=StopSignals(), show_progress=False,
          tensorboard=TensorBoardLog(run.path / "tensorboard", config=cfg.to_dict()))
    run.in_memory = exp  # type: ignore[attr-defined]
    return run


def test_checkpoint_round_trip_gives_the_same_adaptation_curve(sine_run: RunDir) -> None:
    exp, state = load_experiment(sine_run, "last", device="cpu")
    assert state["format"] == checkpoint.FORMAT and state["iteration"] == 30
    assert state["config"] == exp.cfg.to_dict()
    batch = exp.source.sample(4, torch.Generator().manual_seed(5), "test")
    a = exp.algo.adaptation_curve(batch, 3, "vmap")
    b = sine_run.in_memory.algo.adaptation_curve(batch, 3, "vmap")  # type: ignore[attr-defined]
    assert torch.equal(a, b)


def test_keep_checkpoints_keeps_the_newest_n(sine_run: RunDir) -> None:
    kept = sorted(p.name for p in sine_run.checkpoint_dir.glob("iter-*.pt"))
    assert kept == ["iter-0000020.pt", "iter-0000030.pt"]
    assert checkpoint.load(sine_run.checkpoint_dir / "iter-0000020.pt")["iteration"] == 20


def test_tensorboard_event_files_mirror_the_metrics(sine_run: RunDir) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((sine_run.path / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(sine_run.path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss", "inner_loss/0", "val_loss"} <= set(tags)
    assert [e.step for e in acc.Scalars("loss")] == [10, 20, 30]


def test_tensorboard_hparams_hold_the_config_and_the_evaluation(sine_run: RunDir,
                                                                 tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from fewshot_cli.engine.tensorboard import HPARAM_METRICS, log_evaluation

    folder = sine_run.path / "tensorboard"
    acc = EventAccumulator(str(folder))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    session = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["algorithm.kind"].string_value == "maml"
    assert hparams["algorithm.inner_lr"].number_value == pytest.approx(0.01)
    assert hparams["train.iterations"].number_value == 30
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    result = {"settings": {"shots": 10}, "per_step": [
        {"step": 0, "loss": {"mean": 3.0}}, {"step": 1, "loss": {"mean": 1.5}}]}
    copy = tmp_path / "tb"
    shutil.copytree(folder, copy)
    log_evaluation(copy, [result], 30)
    acc = EventAccumulator(str(copy))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/loss")] == [(30, 1.5)]
    assert acc.Scalars("eval/10shot/loss/step0")[0].value == 3.0


def test_a_checkpoint_with_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "algorithm": {}, "x": Payload()}, path)
    with pytest.raises(RunDirError, match="refused") as e:
        checkpoint.load(path)
    assert "weights_only" not in str(e.value)
    assert not marker.exists()


def test_config_edited_after_training_is_named(sine_run: RunDir, tmp_path: Path) -> None:
    import shutil

    copy = RunDir(tmp_path / "copy")
    shutil.copytree(sine_run.path, copy.path)
    text = copy.config_path.read_text().replace("activation: relu", "activation: tanh")
    copy.config_path.write_text(text)
    with pytest.raises(ConfigError, match="model.activation: 'relu' in the checkpoint"):
        load_experiment(copy, "last", device="cpu")
    # where the data lives may change (another machine)
    copy.config_path.write_text(sine_run.config_path.read_text().replace(
        "eval:\n", "eval:\n  chunk: 7\n"))
    load_experiment(copy, "last", device="cpu")
    assert plot_run(copy, "last")
