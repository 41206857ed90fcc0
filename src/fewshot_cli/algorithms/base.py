"""The algorithm plug-in interface: what every meta-learning algorithm provides,
and what the engine (trainer, evaluator, plots) calls.

An algorithm is an ``nn.Module`` that owns the network (``self.model``) and
any extra meta-learned tensors (learned step sizes, a learned loss, ...), so
they share one ``state_dict`` and one optimiser. It never mutates the network
during adaptation: fast weights are a dict of tensors that :meth:`Algorithm.forward`
puts in the network's place for one call (``torch.func.functional_call``'s contract,
without its per-call walk over the modules).

A subclass writes, for **one task** (:mod:`.batching` maps it over a meta-batch):

- :meth:`Algorithm.inner_step` -- one adaptation step. It sees only a
  :class:`Support` (the labelled support set and, where the task has them,
  unlabelled inputs), the step index, and per-task state it carried from the
  previous step. :meth:`Algorithm.adapt` runs the steps; training, validation,
  ``fewshot eval`` and the plots all adapt through it.
- :meth:`Algorithm.task_objective` -- the meta-training loss of one task,
  given its :class:`Support` and :class:`Query`, and the
  :class:`TrainingProgress`. It returns the loss and named metrics.

The engine owns the meta-update (``fewshot_cli.engine.meta_update``): it takes the
gradient of :meth:`Algorithm.meta_loss` (compiled or not), averages it over the
processes, clips it to :meth:`Algorithm.meta_grad_clip`, steps the optimiser and calls
:meth:`Algorithm.after_update`. An algorithm whose meta-update is not the gradient of
its loss (Reptile) writes a surrogate loss whose gradient is that update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from ..config import AlgorithmSection
from ..tasks.base import TaskBatch, TaskSource
from .batching import (
    WHOLE_GRAPH_PATH,
    Context,
    Query,
    Support,
    TrainingProgress,
    Vectorize,
    join_batches,
    map_tasks,
    split,
)
from .losses import LOSSES, PER_TASK, accuracy
from .params import Metrics, Params, detached, inner_gradient, sgd_update
from .settings import Settings


class Adapted(NamedTuple):
    """The result of :meth:`Algorithm.adapt`."""

    params: Params
    state: Any
    metrics: Metrics          # name -> [steps] (``[B, steps]`` fused), one value per step
    observed: list[Any]       # observe(params) before the first step and after each step


class Evaluation(NamedTuple):
    """The result of :meth:`Algorithm.evaluate_tasks` on ``B`` tasks."""

    curve: torch.Tensor              # [B, steps + 1, m]: query loss (and accuracy) per step
    inner: Metrics                   # name -> [B, steps]: the adaptation's own metrics
    probed: torch.Tensor | None      # [B, 2, G, out]: predictions on probe inputs, before/after

    @staticmethod
    def join(parts: list[Evaluation]) -> Evaluation:
        """The evaluations of consecutive batches of tasks as one."""
        if len(parts) == 1:
            return parts[0]
        return Evaluation(torch.cat([p.curve for p in parts]),
                          {k: torch.cat([p.inner[k] for p in parts]) for k in parts[0].inner},
                          None if parts[0].probed is None else
                          torch.cat([p.probed for p in parts]))  # type: ignore[misc]


class Algorithm(nn.Module):
    """Base class of the plug-ins (see the module docstring).

    Class attributes a subclass sets: ``kind`` (its ``algorithm.kind``),
    ``paths`` (the ``train.vectorize`` paths it supports; ``fused`` also needs a
    network with ``forward_tasks``), ``compiled_inner`` (an eager path: on the ``compiled``
    path the algorithm runs that path and compiles its own pieces where ``Context.compiled``
    says so, instead of the whole meta-gradient being compiled as one function; None: the
    whole).
    """

    kind: ClassVar[str]
    paths: ClassVar[tuple[Vectorize, ...]] = ("vmap", "loop")
    compiled_inner: ClassVar[Vectorize | None] = None

    @classmethod
    def learns_step_sizes(cls, cfg: AlgorithmSection) -> bool:
        """Whether this algorithm, configured by ``cfg``, learns its step sizes: ``inner_lr``
        then means nothing, ``eval --inner-lr`` is refused (before anything is loaded) and
        baselines keep their own. False unless a subclass says otherwise."""
        return False

    def __init__(self, model: nn.Module, cfg: AlgorithmSection, task: TaskSource,
                 settings: Settings | None = None) -> None:
        """``task`` describes the tasks (``problem``, ``input_shape``, ``output_dim``),
        for algorithms that size extra meta-parameters from them; ``settings`` is how the
        engine runs it (one process, no autocast, all queries in one pass by default)."""
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.settings = settings or Settings()
        self.loss_fn = LOSSES[cfg.loss]
        self.classification = task.problem == "classification"
        self.inner_lr = cfg.inner_lr
        self.inner_steps = cfg.inner_steps
        #: The factor from the mean support loss to the one the inner step differentiates:
        #: N (ways) for ``inner_loss_reduction: sum/K`` in classification, else 1.
        self.inner_loss_scale = (
            float(task.output_dim) if self.classification
            and getattr(cfg, "inner_loss_reduction", "mean") == "sum/K" else 1.0)

    # -- the network, functionally ---------------------------------------------
    def params(self) -> Params:
        """The parameters adaptation starts from (the network's meta-learned init)."""
        return dict(self.model.named_parameters())

    @property
    def available_paths(self) -> tuple[Vectorize, ...]:
        """The declared paths this network can run (``fused`` needs ``forward_tasks``)."""
        fusable = hasattr(self.model, "forward_tasks")
        paths = tuple(p for p in self.paths if p != "fused" or fusable)
        if self.compiled_inner is not None and self.compiled_inner not in paths:
            paths = tuple(p for p in paths if p != "compiled")
        return paths

    def eager_path(self, vectorize: Vectorize) -> tuple[Vectorize, bool]:
        """The eager path ``vectorize`` runs and whether the algorithm's own compiled pieces
        are on: ``compiled`` is :attr:`compiled_inner` with them, where the algorithm has
        one (otherwise :data:`WHOLE_GRAPH_PATH`, inside or in place of the whole compiled
        function)."""
        if vectorize == "compiled":
            return ((self.compiled_inner, True) if self.compiled_inner
                    else (WHOLE_GRAPH_PATH, False))
        return vectorize, False

    def forward(self, params: Params, x: torch.Tensor, ctx: Context,  # type: ignore[override]
                hidden: bool = False) -> Any:
        """Network output (and with ``hidden`` its hidden activations) under ``params``.

        Off the fused path this is ``functional_call`` without its per-call walk over the
        modules, which costs a small network as much as its arithmetic: each tensor of
        ``params`` stands in for the network's own during the call, found through a
        name -> (module, attribute) table that is rebuilt when a submodule is replaced."""
        if ctx.fused:
            return self.model.forward_tasks(params, x, return_hidden=hidden)
        kwargs = {"return_hidden": True} if hidden else {}
        model, edges, slots = self.__dict__.get("_slots") or (None, [], {})
        if (model is not self.model or not all(t.get(k) is m for t, k, m in edges)
                or not slots.keys() >= params.keys()):
            modules = dict(self.model.named_modules(remove_duplicate=False))
            edges = [(m._modules, k, c) for m in modules.values() for k, c in m._modules.items()]
            slots = {f"{prefix}.{k}" if prefix else k: (m, k) for prefix, m in modules.items()
                     for k in (*m._parameters, *m._buffers)}
            self.__dict__["_slots"] = (self.model, edges, slots)
        if not slots.keys() >= params.keys():  # names the network does not have
            return functional_call(self.model, params, (x,), kwargs)
        swapped: list[tuple[dict[str, Any], str, Any]] = []
        try:
            for name, value in params.items():
                module, attr = slots[name]
                table = module._parameters if attr in module._parameters else module._buffers
                swapped.append((table, attr, table[attr]))
                table[attr] = value
            return self.model(x, **kwargs)
        finally:
            for table, attr, old in reversed(swapped):
                table[attr] = old

    def per_task(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 out: torch.Tensor, y: torch.Tensor, ctx: Context) -> torch.Tensor:
        """``fn(out, y)`` of one task, or ``[B]`` of every task on the fused path."""
        if not ctx.fused:
            return fn(out, y)
        batched = PER_TASK.get(fn)
        return batched(out, y) if batched is not None else vmap(fn)(out, y)

    def query_batches(self, x: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, ...]:
        """One task's (fused: every task's) query inputs as the batches the outer loss
        passes through the network: ``x`` whole, or in meta-training with
        ``settings.query_batch`` consecutive batches of that many images (the query
        layout puts image ``p * ways + j`` in class ``j``; batch norm then sees each
        batch's statistics, as at test with ``eval.query_batch: per_class``)."""
        size = self.settings.query_batch
        if not ctx.training or size is None:
            return (x,)
        return x.split(size, dim=1 if ctx.fused else 0)

    def query_forward(self, params: Params, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """:meth:`forward` of the queries ``x``, in the batches of :meth:`query_batches`."""
        return join_batches([self.forward(params, part, ctx)
                             for part in self.query_batches(x, ctx)], ctx)

    def task_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                  ctx: Context) -> torch.Tensor:
        """The task loss (``algorithm.loss``) of one task (``[B]`` when fused)."""
        return self.per_task(self.loss_fn, self.forward(params, x, ctx), y, ctx)

    def task_gradient(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                      create_graph: bool, ctx: Context) -> tuple[Params, torch.Tensor]:
        """The task loss's gradient at ``params`` on ``(x, y)`` (:func:`inner_gradient`: in
        the graph with ``create_graph``, else a constant) and the loss, detached.

        On the fused path the gradient of the summed task losses with respect to
        the ``[B, ...]`` stacks is exactly the stack of per-task gradients, at
        any order, since task b's loss depends on slice b alone.
        """
        def total(p: Params) -> tuple[torch.Tensor, torch.Tensor]:
            loss = self.task_loss(p, x, y, ctx)
            return self.inner_total(loss), loss

        grads, loss = inner_gradient(total, params, create_graph)
        return grads, loss.detach()

    def inner_total(self, loss: torch.Tensor) -> torch.Tensor:
        """What an inner step differentiates: the tasks' support losses (``[B]`` fused, one
        task's otherwise) summed, times :attr:`inner_loss_scale`."""
        total = loss.sum()
        return total if self.inner_loss_scale == 1.0 else total * self.inner_loss_scale

    def sgd_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, lr: Any,
                 create_graph: bool, ctx: Context) -> tuple[Params, torch.Tensor]:
        """One SGD step on the task loss; ``lr`` is a number or a dict of per-parameter
        tensors. Returns the new parameters and the loss before the step."""
        grads, loss = self.task_gradient(params, x, y, create_graph, ctx)
        return sgd_update(params, grads, lr), loss

    # -- adaptation: one function for training, evaluation and plots -------------
    def init_state(self, params: Params, support: Support, ctx: Context) -> Any:
        """Per-task state carried across inner steps (optimiser moments, LSTM cells...)."""
        return None

    def inner_step(self, params: Params, state: Any, support: Support, step: int,
                   ctx: Context) -> tuple[Params, Any, Metrics]:
        """Inner step ``step`` (0-based) of one task: new params, new state, and
        scalar metrics of the step (``[B]`` when fused)."""
        raise NotImplementedError

    def adapt(self, params: Params, support: Support, steps: int, ctx: Context,
              observe: Callable[[Params], Any] | None = None) -> Adapted:
        """Run ``steps`` inner steps of one task (all tasks when ``ctx.fused``).

        ``observe(params)`` is called before the first step and after each one
        (query metrics at evaluation, a multi-step loss in training).
        """
        state = self.init_state(params, support, ctx)
        seen = [observe(params)] if observe is not None else []
        per_step: list[Metrics] = []
        for step in range(steps):
            params, state, m = self.inner_step(params, state, support, step, ctx)
            per_step.append(m)
            if observe is not None:
                seen.append(observe(params))
        metrics = {k: torch.stack([m[k] for m in per_step], dim=-1) for k in
                   (per_step[0] if per_step else {})}
        return Adapted(params, state, metrics, seen)

    # -- the outer objective -------------------------------------------------------
    def task_objective(self, params: Params, support: Support, query: Query,
                       ctx: Context) -> tuple[torch.Tensor, Metrics]:
        """Meta-training loss of one task (``[B]`` when fused) and named metrics,
        each a scalar or a per-step vector per task.

        The default is MAML's objective, shared by the algorithms that differ only in
        their inner step: adapt for ``inner_steps`` on the support set, then the task
        loss on the queries (:meth:`outcome_metrics` for the metrics).
        """
        adapted = self.adapt(params, support, self.inner_steps, ctx)
        out = self.query_forward(adapted.params, query.x, ctx)
        loss = self.per_task(self.loss_fn, out, query.y, ctx)
        return loss, self.outcome_metrics(adapted, support, query, out, ctx)

    def outcome_metrics(self, adapted: Adapted, support: Support, query: Query,
                        out: torch.Tensor, ctx: Context) -> Metrics:
        """The adaptation's own metrics, :meth:`after_adaptation` on logged iterations
        (it may cost a forward pass) and, for classification, the query ``accuracy``
        of ``out``."""
        metrics = dict(adapted.metrics)
        if ctx.progress is None or ctx.progress.logged:
            metrics.update(self.after_adaptation(detached(adapted.params), adapted.state,
                                                 support, ctx))
        if self.classification:
            metrics["accuracy"] = self.per_task(accuracy, out, query.y, ctx).detach()
        return metrics

    def after_adaptation(self, params: Params, state: Any, support: Support,
                         ctx: Context) -> Metrics:
        """Metrics of the adapted (detached) parameters on the support set:
        ``inner_loss_after``, the support loss after the last step."""
        return {"inner_loss_after": self.task_loss(params, support.x, support.y,
                                                   ctx).detach()}

    # -- the meta-update (the engine's; these are what it asks of the algorithm) -----------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` to ``settings.autocast`` on the parameters' device, or nothing."""
        if self.settings.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.parameters()).device.type, dtype=self.settings.autocast)

    def meta_loss(self, batch: TaskBatch, vectorize: Vectorize, progress: TrainingProgress
                  ) -> tuple[torch.Tensor, Metrics]:
        """Mean outer loss of a meta-batch and its metrics averaged over tasks, computed under
        :meth:`autocast` (low-precision results come back in float32). Its gradient is the
        meta-gradient."""
        support, query = split(batch)
        path, own = self.eager_path(vectorize)
        with self.autocast():
            loss, metrics = map_tasks(self.task_objective, self.params(), support, query,
                                      vectorize=path,
                                      ctx=Context(True, progress=progress, compiled=own))
        if self.settings.autocast is not None:
            loss, metrics = tree_map(lambda t: t.float() if t.dtype == self.settings.autocast
                                     else t, (loss, metrics))
        return loss.mean(), {k: v.detach().mean(0) for k, v in metrics.items()}

    def meta_grad_clip_value(self) -> float | None:
        """Clip each element of the meta-gradient to [-c, c] (before the norm clip); None:
        no clipping."""
        return None

    def meta_grad_clip(self) -> float | None:
        """Clip the meta-gradient to this norm over all meta-parameters (``inf``: only
        measure it); None: no clipping. The engine reports the norm as ``meta_grad_norm``."""
        return None

    def after_update(self, batch: TaskBatch, progress: TrainingProgress,
                     metrics: Metrics) -> Metrics:
        """Called after each optimiser step with the meta-update's metrics (``loss``, the
        mean of :meth:`meta_loss`, among them); returns the metrics to log. Unchanged by
        default."""
        return metrics

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The meta-optimiser over every meta-parameter (``meta_optimizer``, ``meta_lr``).
        Adam is the fused implementation on CPU and CUDA (one kernel for all tensors)."""
        if self.cfg.meta_optimizer != "adam":
            return torch.optim.SGD(self.parameters(), lr=self.cfg.meta_lr)
        device = next(self.parameters()).device.type
        return torch.optim.Adam(self.parameters(), lr=self.cfg.meta_lr,
                                fused=device in ("cpu", "cuda"))

    def configure_scheduler(self, optimizer: torch.optim.Optimizer, total: int
                            ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """A schedule stepped after every meta-update (saved in ``last.pt``); none by default."""
        return None

    # -- evaluation ------------------------------------------------------------------
    def query_metrics(self, params: Params, query: Query, ctx: Context,
                      chunks: int = 1) -> torch.Tensor:
        """``[loss]`` or ``[loss, accuracy]`` of one task's queries (``[B, m]`` fused).

        With ``chunks > 1`` the queries are classified in that many separate
        forward passes (batch norm then sees each chunk's statistics).
        """
        out = join_batches([self.forward(params, x, ctx)
                            for x in query.x.chunk(chunks, dim=1 if ctx.fused else 0)], ctx)
        metrics = [self.loss_fn] + ([accuracy] if self.classification else [])
        return torch.stack([self.per_task(m, out, query.y, ctx) for m in metrics], dim=-1)

    def adaptation_curve(self, batch: TaskBatch, steps: int, vectorize: Vectorize,
                         query_chunks: int = 1) -> torch.Tensor:
        """Query metrics after 0..steps inner steps, ``[B, steps + 1, m]`` (no outer graph;
        without the adaptation's diagnostics)."""
        return self.evaluate_tasks(batch, steps, vectorize, query_chunks,
                                   diagnostics=False).curve

    def eval_tasks_at_once(self) -> int | None:
        """The most tasks :meth:`evaluate_tasks` adapts in one pass (more are taken in turn,
        with the same results); None: any number."""
        return None

    def evaluate_tasks(self, batch: TaskBatch, steps: int, vectorize: Vectorize,
                       query_chunks: int = 1, probe: torch.Tensor | None = None, *,
                       diagnostics: bool = True) -> Evaluation:
        """Adapt every task of ``batch`` for ``steps`` steps, without an outer graph, at most
        :meth:`eval_tasks_at_once` at a time.

        Returns the query metrics after 0..steps steps, the adaptation's own per-step
        metrics (e.g. ``inner_loss``, ``[B, steps]``; those only diagnostics need left out
        without ``diagnostics``, see :class:`Context`) and, given ``probe`` inputs
        ``[G, ...]`` shared by all tasks, the network's predictions on them before and
        after adaptation, ``[B, 2, G, out]`` (function-space errors, plots).
        """
        limit = self.eval_tasks_at_once()
        if limit is not None and len(batch) > limit:
            return Evaluation.join([self.evaluate_tasks(b, steps, vectorize, query_chunks, probe,
                                                        diagnostics=diagnostics)
                                    for b in batch.split(limit)])
        base = detached(self.params())

        def one(params: Params, support: Support, query: Query, ctx: Context) -> Any:
            adapted = self.adapt(params, support, steps, ctx,
                                 observe=lambda p: self.query_metrics(p, query, ctx,
                                                                      query_chunks))
            curve = torch.stack(adapted.observed, dim=-2)
            if probe is None:
                return curve, adapted.metrics
            grid = probe.expand(support.x.shape[0], *probe.shape) if ctx.fused else probe
            seen = [self.forward(p, grid, ctx) for p in (params, adapted.params)]
            return curve, adapted.metrics, torch.stack(seen, dim=-3)

        support, query = split(batch)
        path, own = self.eager_path(vectorize)
        curve, metrics, *probed = map_tasks(one, base, support, query, vectorize=path,
                                            ctx=Context(training=False, compiled=own,
                                                        diagnostics=diagnostics))
        probed = probed[0] if probed else None
        return Evaluation(curve.detach(), {k: v.detach() for k, v in metrics.items()},
                          None if probed is None else probed.detach())

    def adapt_one(self, batch: TaskBatch, index: int, steps: int) -> Params:
        """Adapted parameters of task ``index`` after ``steps`` inner steps (plots)."""
        support, _ = split(batch)
        one = Support(*(None if t is None else t[index] for t in support))
        return detached(self.adapt(detached(self.params()), one, steps,
                                   Context(training=False)).params)

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Network output for one task's inputs (plots)."""
        with torch.no_grad():
            return self.forward(params, x, Context(training=False))

    def references(self, source: TaskSource, steps: int, vectorize: Vectorize, chunk: int
                   ) -> list[tuple[Algorithm, dict[str, Any]]]:
        """Other adaptation rules ``fewshot eval`` scores on the same test tasks as this
        one (e.g. plain SGD from a learned init), each with the fields of its eval.json
        entry that differ from the run's (``name``, ``algorithm``, ...); ``steps`` is the
        number of inner steps evaluated, ``chunk`` the tasks per batch. None by default."""
        return []
