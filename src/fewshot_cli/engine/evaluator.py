"""``fewshot eval``: adapt the meta-learned network to new test tasks.

Test tasks come from the task source's ``test`` split and a fixed evaluation
seed, so every run (and the pretrained baseline) is scored on the same tasks.
For 0..steps inner steps the query loss (and accuracy) is averaged over the
tasks with a 95% confidence interval ``1.96 * std / sqrt(n)``.

Divergence policy (shared with validation, :func:`divergence_summary`): a task
whose query loss is non-finite after s steps is *diverged* at s; it is counted
in that step's ``diverged`` column and left out of that step's loss *and*
accuracy statistics (NaN logits are not a 1-in-N guess).

Several protocols (``--shots 5,10,20``) are evaluated in one call, and baseline runs
(``--baseline``) on exactly the same tasks: each chunk of tasks is drawn once from the
evaluated run's task source and adapted by every network.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..algorithms import algorithm_class
from ..config import Config, EvalConfig
from ..errors import ConfigError, FewshotError
from ..rundir import RunDir
from . import checkpoint, vectorize
from .checkpoint import check_config
from .distributed import Sync
from .setup import Experiment, build_experiment, resolve_device


def load_experiment(run: RunDir, which: str, device: str | None = None,
                    inner_lr: float | None = None) -> tuple[Experiment, dict[str, Any]]:
    """Rebuild a run from its config and load checkpoint ``which`` into it.

    Returns the experiment and the checkpoint (with ``path``, the file read).
    A config.yaml changed since training (network, task, algorithm) is an
    error naming the key; ``inner_lr`` overrides the test-time step size.
    """
    cfg = run.read_config()
    dev = resolve_device(device or cfg.device)
    path = run.resolve_checkpoint(which)
    state = checkpoint.load(path, map_location=dev)
    check_config(cfg, state, path)
    if inner_lr is not None:
        cfg.algorithm.inner_lr = inner_lr
    exp = build_experiment(cfg, dev)
    checkpoint.load_weights(exp.algo, state["algorithm"], path)
    return exp, {**state, "path": path}


def summarize(values: torch.Tensor) -> dict[str, Any]:
    """Mean, 95% CI, median, std and counts of one metric over tasks; NaN/inf are
    counted as ``diverged`` and left out."""
    finite = torch.isfinite(values)
    v = values[finite].double()
    n = int(v.numel())
    out: dict[str, Any] = {"n": n, "diverged": int((~finite).sum())}
    if n == 0:
        out.update(mean=None, ci95=None, median=None, std=None)
        return out
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    out.update(mean=v.mean().item(), ci95=1.96 * std / math.sqrt(n), median=v.median().item(),
               std=std)
    return out


def divergence_summary(curves: torch.Tensor) -> list[dict[str, Any]]:
    """Per-step statistics of adaptation curves ``[tasks, steps + 1, m]`` (m = 1: loss;
    m = 2: loss, accuracy) under the divergence policy of the module docstring."""
    loss = curves[..., 0]
    diverged = ~torch.isfinite(loss)
    rows = []
    for s in range(curves.shape[1]):
        row: dict[str, Any] = {"step": s, "loss": summarize(loss[:, s])}
        if curves.shape[-1] > 1:
            acc = curves[:, s, 1].masked_fill(diverged[:, s], math.nan)
            row["accuracy"] = summarize(acc)
        rows.append(row)
    return rows


def eval_settings(cfg: Config, **overrides: Any) -> EvalConfig:
    """The run's ``eval`` section with the command line's non-None values on top."""
    data = cfg.eval.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EvalConfig.model_validate(data)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, reported in one line
        raise ConfigError(f"eval settings: {str(e).splitlines()[-1].strip()}") from None


def evaluate(run: RunDir, settings: EvalConfig, device: str | None = None,
             inner_lr: float | None = None) -> dict[str, Any]:
    """Evaluate a run under one protocol; returns the result (the caller writes
    ``eval.json``)."""
    return evaluate_protocols(run, [settings], device, inner_lr)[0]


@dataclass
class _Model:
    """One run being evaluated: the run itself or a baseline."""

    run: RunDir
    cfg: Config
    exp: Experiment
    state: dict[str, Any]
    path: str
    baseline: bool
    seconds: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)  # eval.json fields of a reference


def check_baseline(cfg: Config, baseline: RunDir, base_cfg: Config, what: str = "--baseline"
                   ) -> None:
    """ConfigError unless ``baseline``'s network can be scored on ``cfg``'s test tasks:
    the same task kind and problem, and for classification the same ways and inputs."""
    checks = [("task.kind", cfg.task.kind, base_cfg.task.kind),
              ("problem", cfg.problem, base_cfg.problem)]
    for key in ("ways", "image_size", "channels"):
        if hasattr(cfg.task, key) or hasattr(base_cfg.task, key):
            checks.append((f"task.{key}", getattr(cfg.task, key, None),
                           getattr(base_cfg.task, key, None)))
    for key, mine, theirs in checks:
        if mine != theirs:
            raise ConfigError(f"{what} {baseline.path}: cannot be compared on this run's test "
                              f"tasks: {key} is {theirs!r} there, {mine!r} here")


def query_chunks(classification: bool, query_batch: str, queries: int) -> int:
    """Forward passes a task's queries are classified in: one per query image of each class
    under ``query_batch: per_class`` (each pass one image per class), else one."""
    return queries if classification and query_batch == "per_class" else 1


def evaluate_protocols(run: RunDir, protocols: Sequence[EvalConfig], device: str | None = None,
                       inner_lr: float | None = None, baselines: Sequence[RunDir] = (),
                       table_steps: Sequence[int] | None = None,
                       sync: Sync | None = None,
                       progress: Callable[[int, int], None] | None = None
                       ) -> list[dict[str, Any]]:
    """Evaluate a run under every protocol (all with the checkpoint of the first), and
    each baseline run on exactly the same test tasks with the same protocol and inner step
    size. Returns one result per protocol and run, protocol by protocol, the run first.

    Every protocol draws its tasks from the run's task source with its own ``seed``, so
    protocols differing only in ``shots`` see the same task parameters (for sinusoids: the
    same amplitudes and phases). ``table_steps`` (the step counts to report, recorded in
    the settings) does not change what is computed: 0..steps.

    Under ``torchrun`` (``sync``) every rank draws every chunk of tasks but adapts only
    every world-th one; all ranks return the same results.

    ``progress(p, done)`` is told after each chunk: protocol ``p`` (an index into
    ``protocols``) has ``done`` of its tasks drawn and, on this rank, adapted.
    """
    sync = sync or Sync()
    cfg = run.read_config()
    which = protocols[0].checkpoint
    learned_lr = algorithm_class(cfg.algorithm.kind).learns_step_sizes(cfg.algorithm)
    if inner_lr is not None and learned_lr:
        raise ConfigError(f"--inner-lr: algorithm.kind {cfg.algorithm.kind} learns its step "
                          "sizes, so a test-time step size has no meaning for it")
    configs = [(b, b.read_config()) for b in baselines]
    for b, base_cfg in configs:  # refuse before any checkpoint is loaded
        if b.path.resolve() == run.path.resolve():
            raise ConfigError(f"--baseline {b.path}: is the run being evaluated itself")
        check_baseline(cfg, b, base_cfg)
    exp, state = load_experiment(run, which, device, inner_lr)
    models = [_Model(run, cfg, exp, state, recorded_path(run, exp), False)]
    # Baselines adapt with this run's step size, or their own when it learns its steps.
    lr = inner_lr if inner_lr is not None else None if learned_lr else cfg.algorithm.inner_lr
    for b, base_cfg in configs:
        bexp, bstate = load_experiment(b, which, str(exp.device), lr)
        models.append(_Model(b, base_cfg, bexp, bstate, recorded_path(b, bexp), True))
    first = protocols[0].steps or cfg.algorithm.eval_inner_steps
    for ref, fields in exp.algo.references(exp.source, first, models[0].path, protocols[0].chunk):
        models.append(_Model(run, cfg, replace(exp, algo=ref), state, models[0].path, True,
                             fields=fields))  # e.g. plain SGD from a meta-learned init
    results: list[dict[str, Any]] = []
    for number, settings in enumerate(protocols):
        steps = settings.steps if settings.steps is not None else cfg.algorithm.eval_inner_steps
        shots = settings.shots or cfg.task.shots
        queries = settings.queries or cfg.task.queries
        classification = exp.algo.classification
        chunks = query_chunks(classification, settings.query_batch, queries)
        gen = torch.Generator().manual_seed(settings.seed)
        parts: list[list[Part]] = [[] for _ in models]
        for m in models:
            m.seconds = 0.0
        left, index = settings.tasks, 0
        while left > 0:
            n = min(left, settings.chunk)
            batch = exp.source.sample(n, gen, "test", shots=shots, queries=queries)
            if index % sync.world == sync.rank:
                for m, out in zip(models, parts):
                    start = time.perf_counter()
                    out.append(_evaluate_chunk(m.exp, batch, steps, m.path, chunks))
                    m.seconds += time.perf_counter() - start
            left, index = left - n, index + 1
            if progress is not None:
                progress(number, settings.tasks - left)
        if sync.active:  # chunk i was adapted by rank i % world: put them back in order
            mine = [(out, m.seconds) for m, out in zip(models, parts)]
            every = sync.gather(mine)
            for k, m in enumerate(models):
                m.seconds = max(rank[k][1] for rank in every)
                parts[k] = [every[i % sync.world][k][0][i // sync.world] for i in range(index)]
        for m, out in zip(models, parts):
            result = _result(m, cfg, settings, torch.cat([p.curve for p in out]), steps,
                             shots, queries, classification, table_steps)
            result["inner"] = _inner_summary([p.inner for p in out])
            result.update(m.fields)
            if out[0].probe is not None:
                result["probe"] = _probe_summary(exp.source, [p.probe for p in out])
            results.append(result)
    return results


@dataclass
class Part:
    """One chunk of test tasks, evaluated: query curve, inner metrics, probe metrics."""

    curve: torch.Tensor
    inner: dict[str, torch.Tensor]
    probe: dict[str, torch.Tensor] | None


def _evaluate_chunk(exp: Experiment, batch: Any, steps: int, path: str, chunks: int) -> Part:
    """Adapt one chunk of test tasks; where the task source defines probe points (the whole
    input range of a sinusoid), also score the adapted function there."""
    source = exp.source
    probe = source.probe().to(exp.device, exp.dtype) if hasattr(source, "probe") else None
    moved = batch.to(exp.device, exp.dtype)
    ev = exp.algo.evaluate_tasks(moved, steps, path, chunks, probe)
    scored = None
    if ev.probed is not None:
        scored = {k: v.cpu() for k, v in source.probe_metrics(batch, ev.probed.cpu()).items()}
    return Part(ev.curve.cpu(), {k: v.cpu() for k, v in ev.inner.items()}, scored)


def _inner_summary(chunks: list[dict[str, torch.Tensor]]) -> dict[str, list[dict[str, Any]]]:
    """Per inner step, each adaptation metric summarised over tasks (``[tasks, steps]``)."""
    out = {}
    for name in chunks[0]:
        values = torch.cat([c[name] for c in chunks])
        if values.dim() != 2:
            continue
        out[name] = [summarize(values[:, s]) for s in range(values.shape[1])]
    return out


def _probe_summary(source: Any, chunks: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Function-space scores before and after adaptation (``[tasks, 2]`` each)."""
    out: dict[str, Any] = {"points": source.probe_description()}
    for name in chunks[0]:
        values = torch.cat([c[name] for c in chunks])
        out[name] = {"before": summarize(values[:, 0]), "after": summarize(values[:, 1])}
    return out


def _result(m: _Model, cfg: Config, settings: EvalConfig, curve: torch.Tensor, steps: int,
            shots: int, queries: int, classification: bool,
            table_steps: Sequence[int] | None) -> dict[str, Any]:
    """One entry of eval.json; ``curve`` is ``[tasks, steps + 1, metrics]`` and ``cfg`` the
    config of the run whose tasks were drawn."""
    diverged_tasks = int((~torch.isfinite(curve[..., 0]).all(dim=1)).sum())
    algo = m.cfg.algorithm
    return {
        "run": str(m.run.path),
        "name": m.run.path.name,
        "baseline": m.baseline,
        "algorithm": ("first-order " if getattr(algo, "first_order", False) else "") + algo.kind,
        "checkpoint": m.state["path"].stem,
        "checkpoint_requested": settings.checkpoint,
        "checkpoint_iteration": m.state.get("iteration"),
        "run_status": m.run.status(),
        "settings": {
            "tasks": settings.tasks, "steps": steps, "shots": shots, "queries": queries,
            "ways": getattr(cfg.task, "ways", None), "seed": settings.seed,
            "inner_lr": (None if m.exp.algo.learns_step_sizes(m.exp.algo.cfg)
                         else m.exp.algo.inner_lr),
            "split": "test", "loss": algo.loss,
            "query_batch": settings.query_batch if classification else "all",
            "protocol": _protocol(classification, settings.query_batch, queries, cfg),
            "vectorize": m.path, "device": str(m.exp.device),
            "table_steps": sorted(set(table_steps)) if table_steps else None,
        },
        "diverged_tasks": diverged_tasks,
        "per_step": divergence_summary(curve),
        "seconds": round(m.seconds, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def recorded_path(run: RunDir, exp: Experiment) -> str:
    """The batching path the run trained with (meta.json), if this algorithm can use it
    here; otherwise the best available one."""
    path = vectorize.recorded(run.read_meta())
    if path in exp.algo.available_paths:
        return path
    try:
        return vectorize.choose(exp, "auto")[0]
    except FewshotError:
        return exp.algo.available_paths[0]


def _protocol(classification: bool, query_batch: str, queries: int, cfg: Config) -> str:
    if not classification:
        return f"{queries} query points per task, one forward pass"
    ways = cfg.task.ways
    running = (getattr(cfg.algorithm, "eval_batch_norm", None) == "running"
               and getattr(cfg.model, "batch_norm", False))
    own = "each batch's" if query_batch == "per_class" else "that batch's"
    norm = ("batch norm uses the running statistics of the task's support batches" if running
            else f"batch norm uses {own} statistics")
    if query_batch == "per_class":
        return (f"{queries} queries per class, classified in {queries} batches of {ways} "
                f"(one image per class; {norm})")
    return f"{queries} queries per class, all {queries * ways} classified in one batch ({norm})"
