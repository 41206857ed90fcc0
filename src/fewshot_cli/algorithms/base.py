"""The algorithm plug-in interface: what every meta-learning algorithm provides,
and what the engine (trainer, evaluator, plots) calls.

An algorithm is an ``nn.Module`` that owns the network (``self.model``) and
any extra meta-learned tensors (learned step sizes, a learned loss, ...), so
they share one ``state_dict`` and one optimiser. It never mutates the network
during adaptation: fast weights are a dict of tensors that :meth:`Algorithm.forward`
puts in the network's place for one call (``torch.func.functional_call``'s contract,
without its per-call walk over the modules).

A subclass writes, for **one task**:

- :meth:`Algorithm.inner_step` -- one adaptation step. It sees only a
  :class:`Support` (the labelled support set and, where the task has them,
  unlabelled inputs), the step index, and per-task state it carried from the
  previous step. :meth:`Algorithm.adapt` runs the steps; training, validation,
  ``fewshot eval`` and the plots all adapt through it.
- :meth:`Algorithm.task_objective` -- the meta-training loss of one task,
  given its :class:`Support` and :class:`Query`, and the training
  :class:`Progress`. It returns the loss and named metrics.

The engine maps the per-task functions over a meta-batch along one of the
paths the algorithm declares in ``paths``: ``vmap`` (``torch.func.vmap``),
``loop`` (task by task) or ``fused`` (the function is called once with
``[B, ...]`` stacked parameters; ``self.forward`` then runs the network's
``forward_tasks`` and losses come back per task, ``[B]``). An algorithm whose
meta-update is not the gradient of a loss overrides :meth:`Algorithm.meta_step`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from ..config import AlgorithmSection
from ..engine.distributed import Sync
from ..tasks.base import TaskBatch, TaskSource

Params = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Path = Literal["vmap", "loop", "fused", "compiled"]
PATHS: tuple[str, ...] = get_args(Path)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).mean()


def l1(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).abs().mean()


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


LOSSES: dict[str, LossFn] = {"mse": mse, "l1": l1, "cross_entropy": cross_entropy}


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(dim=-1) == y).to(out.dtype).mean()


#: The same functions over a leading task dimension, ``[B, n, ...] -> [B]``, written out:
#: the fused path's per-task losses without ``vmap``'s wrapping (~10% of a sinusoid
#: meta-iteration on that path).
PER_TASK: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    mse: lambda out, y: (out - y).pow(2).flatten(1).mean(1),
    l1: lambda out, y: (out - y).abs().flatten(1).mean(1),
    cross_entropy: lambda out, y: F.cross_entropy(
        out.flatten(0, 1), y.flatten(0, 1), reduction="none").view(out.shape[0], -1).mean(1),
    accuracy: lambda out, y: (out.argmax(dim=-1) == y).to(out.dtype).flatten(1).mean(1),
}


class Support(NamedTuple):
    """All that adaptation may see of a task: ``x [S, ...]``, ``y [S, ...]`` and,
    where the task has them, unlabelled inputs ``unlabelled [U, ...]`` (a
    demonstration). With a leading task dimension on the fused path."""

    x: torch.Tensor
    y: torch.Tensor
    unlabelled: torch.Tensor | None = None


class Query(NamedTuple):
    """A task's query set, for the outer objective and evaluation only."""

    x: torch.Tensor
    y: torch.Tensor


def split(batch: TaskBatch) -> tuple[Support, Query]:
    """The two halves of a meta-batch; only the first ever reaches adaptation."""
    return (Support(batch.support_x, batch.support_y, batch.unlabelled_x),
            Query(batch.query_x, batch.query_y))


@dataclass(frozen=True)
class Progress:
    """Where meta-training is: ``iteration`` (1-based) of ``total``. ``logged``: this
    iteration's metrics end a log window, so an algorithm may add metrics that cost
    extra work (they are averaged over the iterations that report them)."""

    iteration: int
    total: int
    logged: bool = True

    @property
    def fraction(self) -> float:
        return self.iteration / max(self.total, 1)


@dataclass(frozen=True)
class Context:
    """How a per-task function is being run.

    ``training``: inside meta-training (the outer loss will be differentiated);
    ``fused``: parameters are ``[B, ...]`` stacks and inputs ``[B, n, ...]``;
    ``progress``: the training progress (None at evaluation).
    """

    training: bool
    fused: bool = False
    progress: Progress | None = None


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


def inner_gradient(total: Callable[[Params], tuple[torch.Tensor, Any]], params: Params,
                   create_graph: bool) -> tuple[Params, Any]:
    """The gradient of ``total(params)[0]`` with respect to ``params``, and the auxiliary
    ``total(params)[1]``; kept in the graph with ``create_graph``, else detached.

    Outside any ``torch.func`` transform (the loop and fused paths) it is plain
    ``torch.autograd.grad``, about half the cost of ``grad_and_value`` and a smaller graph
    for the outer backward; under no_grad (a checkpointed inner step's first pass) the
    same operations, kept out of any graph. Under ``vmap`` it is ``grad_and_value``.
    """
    if torch._C._functorch.peek_interpreter_stack() is None:
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = {k: p if graph and p.requires_grad else p.detach().requires_grad_()
                      for k, p in params.items()}
            summed, aux = total(leaves)
            grads = dict(zip(leaves, torch.autograd.grad(
                summed, tuple(leaves.values()), create_graph=create_graph and graph,
                materialize_grads=True)))
    else:
        grads, (_, aux) = grad_and_value(total, has_aux=True)(params)
    if not create_graph:
        grads = {k: g.detach() for k, g in grads.items()}
    return grads, aux


def join_batches(parts: list[torch.Tensor], ctx: Context) -> torch.Tensor:
    """Outputs of one task's (fused: every task's) queries passed in batches
    (:meth:`Algorithm.query_batches` in training, chunks at evaluation), back as one."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1 if ctx.fused else 0)


def stack_params(params: Params, n_tasks: int) -> Params:
    """Every tensor repeated (as a view) along a new leading task dimension."""
    return {k: v.expand(n_tasks, *v.shape) for k, v in params.items()}


def _in_dims(tree: Any) -> Any:
    return tree_map(lambda t: None if t is None else 0, tree)


def map_tasks(fn: Callable[..., Any], params: Any, *per_task: Any, path: Path,
              ctx: Context) -> Any:
    """``fn(params, *task_parts, ctx)`` for every task of a meta-batch.

    ``per_task`` are pytrees (e.g. :class:`Support`) of ``[B, ...]`` tensors.
    Every path returns the same pytree of ``[B, ...]`` results: ``vmap`` maps
    with :func:`torch.func.vmap` (params shared), ``loop`` calls ``fn`` task by
    task and stacks, ``fused`` calls it once with params stacked to ``[B, ...]``.
    ``compiled`` compiles only the meta-gradient (``Algorithm.meta_step``); anything
    else it runs, evaluation included, maps as ``vmap``.
    """
    first = next(t for t in torch.utils._pytree.tree_leaves(per_task[0]) if t is not None)
    n = first.shape[0]
    if path == "compiled":
        path = "vmap"
    if path == "fused":
        return fn(stack_params(params, n), *per_task, Context(ctx.training, True, ctx.progress))
    if path == "vmap":
        return vmap(lambda p, *parts: fn(p, *parts, ctx),
                    in_dims=(None, *(_in_dims(t) for t in per_task)))(params, *per_task)
    pytree = torch.utils._pytree
    leaves, spec = pytree.tree_flatten(per_task)  # each [B, ...] split once, not per task
    split_leaves = [[None] * n if t is None else t.unbind(0) for t in leaves]
    outs = [fn(params, *pytree.tree_unflatten([s[i] for s in split_leaves], spec), ctx)
            for i in range(n)]
    return tree_map(lambda *xs: torch.stack(xs), *outs)


class Algorithm(nn.Module):
    """Base class of the plug-ins (see the module docstring).

    Class attributes a subclass sets: ``kind`` (its ``algorithm.kind``),
    ``paths`` (the batching paths it supports; ``fused`` also needs a network
    with ``forward_tasks``).
    """

    kind: ClassVar[str]
    paths: ClassVar[tuple[Path, ...]] = ("vmap", "loop")
    #: False for an algorithm that learns its step sizes (the meta-LSTM): ``inner_lr`` then
    #: means nothing, ``eval --inner-lr`` is refused and baselines keep their own.
    uses_inner_lr: ClassVar[bool] = True

    @classmethod
    def learns_step_sizes(cls, cfg: AlgorithmSection) -> bool:
        """Whether this algorithm, configured by ``cfg``, learns its step sizes (then
        ``eval --inner-lr`` is refused before anything is loaded); ``not uses_inner_lr``
        unless a config option decides it (MAML's ``learned_inner_lrs``)."""
        return not cls.uses_inner_lr

    @property
    def learned_step_sizes(self) -> bool:
        """:meth:`learns_step_sizes` of this instance's config: ``inner_lr`` means nothing."""
        return self.learns_step_sizes(self.cfg)

    def __init__(self, model: nn.Module, cfg: AlgorithmSection, task: TaskSource) -> None:
        """``task`` describes the tasks (``problem``, ``input_shape``, ``output_dim``),
        for algorithms that size extra meta-parameters from them."""
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.loss_fn = LOSSES[cfg.loss]
        self.classification = task.problem == "classification"
        self.inner_lr = cfg.inner_lr
        self.inner_steps = cfg.inner_steps
        #: The process group of a distributed run (one process by default); set by the engine.
        self.sync = Sync()

    # -- the network, functionally ---------------------------------------------
    def params(self) -> Params:
        """The parameters adaptation starts from (the network's meta-learned init)."""
        return dict(self.model.named_parameters())

    @property
    def available_paths(self) -> tuple[Path, ...]:
        """The declared paths this network can run (``fused`` needs ``forward_tasks``)."""
        fusable = hasattr(self.model, "forward_tasks")
        return tuple(p for p in self.paths if p != "fused" or fusable)

    def forward(self, params: Params, x: torch.Tensor, ctx: Context,  # type: ignore[override]
                hidden: bool = False) -> Any:
        """Network output (and with ``hidden`` its hidden activations) under ``params``.

        Off the fused path this is ``functional_call`` without its per-call walk over the
        modules (~40 us a call, a tenth of a sinusoid task's meta-iteration): each tensor
        of ``params`` stands in for the network's own during the call, found through a
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

    #: ``train.query_batch: per_class``: in meta-training each task's queries pass through
    #: the network in batches of this many images, one per class (batch norm sees each
    #: batch's statistics, as at test with ``eval.query_batch: per_class``); None: all in
    #: one pass. Set by the engine.
    train_query_batch: int | None = None

    def query_batches(self, x: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, ...]:
        """One task's (fused: every task's) query inputs as the batches the outer loss
        passes through the network: ``x`` whole, or in meta-training with
        :attr:`train_query_batch` consecutive batches of that many images (the query
        layout puts image ``p * ways + j`` in class ``j``)."""
        if not ctx.training or self.train_query_batch is None:
            return (x,)
        return x.split(self.train_query_batch, dim=1 if ctx.fused else 0)

    def query_forward(self, params: Params, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """:meth:`forward` of the queries ``x``, in the batches of :meth:`query_batches`."""
        return join_batches([self.forward(params, part, ctx)
                             for part in self.query_batches(x, ctx)], ctx)

    def task_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                  ctx: Context) -> torch.Tensor:
        """The task loss (``algorithm.loss``) of one task (``[B]`` when fused)."""
        return self.per_task(self.loss_fn, self.forward(params, x, ctx), y, ctx)

    def sgd_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, lr: Any,
                 create_graph: bool, ctx: Context) -> tuple[Params, torch.Tensor]:
        """One SGD step on the task loss; ``lr`` is a number or a dict of per-parameter
        tensors. Returns the new parameters and the loss before the step.

        On the fused path the gradient of the summed task losses with respect to
        the ``[B, ...]`` stacks is exactly the stack of per-task gradients, at
        any order, since task b's loss depends on slice b alone. The gradient is
        :func:`inner_gradient`'s.
        """
        def total(p: Params) -> tuple[torch.Tensor, torch.Tensor]:
            loss = self.task_loss(p, x, y, ctx)
            return loss.sum(), loss

        grads, loss = inner_gradient(total, params, create_graph)
        if isinstance(lr, dict):
            return {k: p - lr[k] * grads[k] for k, p in params.items()}, loss.detach()
        return {k: p - lr * grads[k] for k, p in params.items()}, loss.detach()

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
            after = {k: v.detach() for k, v in adapted.params.items()}
            metrics.update(self.after_adaptation(after, adapted.state, support, ctx))
        if self.classification:
            metrics["accuracy"] = self.per_task(accuracy, out, query.y, ctx).detach()
        return metrics

    def after_adaptation(self, params: Params, state: Any, support: Support,
                         ctx: Context) -> Metrics:
        """Metrics of the adapted (detached) parameters on the support set:
        ``inner_loss_after``, the support loss after the last step."""
        return {"inner_loss_after": self.task_loss(params, support.x, support.y,
                                                   ctx).detach()}

    #: ``train.autocast``: the dtype meta-training's forward passes (inner loops, outer loss)
    #: run in under ``torch.autocast``, or None; set by the engine. Parameters, gradients and
    #: the optimiser keep their dtype, and evaluation never autocasts.
    autocast_dtype: torch.dtype | None = None

    #: ``train.cuda_graphs``: on a CUDA device the ``compiled`` path replays the meta-gradient
    #: as CUDA graphs (:mod:`fewshot_cli.engine.compiled`); set by the engine.
    cuda_graphs: bool = False

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` to :attr:`autocast_dtype` on the parameters' device, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.parameters()).device.type, dtype=self.autocast_dtype)

    def meta_loss(self, batch: TaskBatch, path: Path, progress: Progress
                  ) -> tuple[torch.Tensor, Metrics]:
        """Mean outer loss of a meta-batch and its metrics averaged over tasks, computed under
        :meth:`autocast` (low-precision results come back in float32)."""
        support, query = split(batch)
        with self.autocast():
            loss, metrics = map_tasks(self.task_objective, self.params(), support, query,
                                      path=path, ctx=Context(True, progress=progress))
        if self.autocast_dtype is not None:
            loss, metrics = tree_map(lambda t: t.float() if t.dtype == self.autocast_dtype
                                     else t, (loss, metrics))
        return loss.mean(), {k: v.detach().mean(0) for k, v in metrics.items()}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The meta-optimiser over every meta-parameter (``meta_optimizer``, ``meta_lr``).
        Adam is the fused implementation on CPU and CUDA (one kernel for all tensors:
        ~0.1 ms of a sinusoid meta-iteration's ~1 ms)."""
        if self.cfg.meta_optimizer != "adam":
            return torch.optim.SGD(self.parameters(), lr=self.cfg.meta_lr)
        device = next(self.parameters()).device.type
        return torch.optim.Adam(self.parameters(), lr=self.cfg.meta_lr,
                                fused=device in ("cpu", "cuda"))

    def configure_scheduler(self, optimizer: torch.optim.Optimizer, total: int
                            ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """A schedule stepped after every meta-update (saved in ``last.pt``); none by default."""
        return None

    def meta_step(self, batch: TaskBatch, path: Path, progress: Progress,
                  optimizer: torch.optim.Optimizer) -> Metrics:
        """One meta-update; returns detached metrics, ``loss`` among them.

        The default descends the gradient of :meth:`meta_loss`. Override it for
        a meta-update that is not a loss gradient (e.g. Reptile). :meth:`meta_loss` runs
        under :meth:`autocast` (so does an override of it), the backward pass does not.
        On the ``compiled`` path the gradients come from one compiled function
        (:mod:`fewshot_cli.engine.compiled`) instead of ``backward``.
        """
        if path == "compiled":
            from ..engine.compiled import meta_gradient

            got = meta_gradient(self, batch, progress)
            if got is not None:
                grads, loss, metrics = got
                optimizer.zero_grad(set_to_none=True)
                for name, p in self.named_parameters():
                    p.grad = grads.get(name)
                self.sync.gradients(self)
                optimizer.step()
                return {"loss": loss.detach(), **metrics}
            path = "vmap"  # the objective changes every iteration: the eager path
        with self.autocast():
            loss, metrics = self.meta_loss(batch, path, progress)
        optimizer.zero_grad(set_to_none=True)
        self.meta_backward(loss)
        optimizer.step()
        return {"loss": loss.detach(), **metrics}

    def meta_backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, then the meta-gradients averaged over the processes of a
        distributed run (:attr:`sync`). Every ``meta_step`` takes its gradients through
        here, before it reads or clips them."""
        loss.backward()
        self.sync.gradients(self)

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

    def adaptation_curve(self, batch: TaskBatch, steps: int, path: Path,
                         query_chunks: int = 1) -> torch.Tensor:
        """Query metrics after 0..steps inner steps, ``[B, steps + 1, m]`` (no outer graph)."""
        return self.evaluate_tasks(batch, steps, path, query_chunks).curve

    def evaluate_tasks(self, batch: TaskBatch, steps: int, path: Path, query_chunks: int = 1,
                       probe: torch.Tensor | None = None) -> Evaluation:
        """Adapt every task of ``batch`` for ``steps`` steps, without an outer graph.

        Returns the query metrics after 0..steps steps, the adaptation's own per-step
        metrics (e.g. ``inner_loss``, ``[B, steps]``) and, given ``probe`` inputs
        ``[G, ...]`` shared by all tasks, the network's predictions on them before and
        after adaptation, ``[B, 2, G, out]`` (function-space errors, plots).
        """
        base = {k: v.detach() for k, v in self.params().items()}

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
        curve, metrics, *probed = map_tasks(one, base, support, query, path=path,
                                            ctx=Context(training=False))
        probed = probed[0] if probed else None
        return Evaluation(curve.detach(), {k: v.detach() for k, v in metrics.items()},
                          None if probed is None else probed.detach())

    def adapt_one(self, batch: TaskBatch, index: int, steps: int) -> Params:
        """Adapted parameters of task ``index`` after ``steps`` inner steps (plots)."""
        base = {k: v.detach() for k, v in self.params().items()}
        support, _ = split(batch)
        one = Support(*(None if t is None else t[index] for t in support))
        params = self.adapt(base, one, steps, Context(training=False)).params
        return {k: v.detach() for k, v in params.items()}

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Network output for one task's inputs (plots)."""
        with torch.no_grad():
            return self.forward(params, x, Context(training=False))

    def references(self, source: TaskSource, steps: int, path: Path, chunk: int
                   ) -> list[tuple[Algorithm, dict[str, Any]]]:
        """Other adaptation rules ``fewshot eval`` scores on the same test tasks as this
        one (e.g. plain SGD from a learned init), each with the fields of its eval.json
        entry that differ from the run's (``name``, ``algorithm``, ...); ``steps`` is the
        number of inner steps evaluated, ``chunk`` the tasks per batch. None by default."""
        return []
