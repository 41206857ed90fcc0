"""MAML, first-order MAML, and the MAML++ options.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML. Algorithm 2: for each task, take
``inner_steps`` gradient steps of size ``inner_lr`` on the support loss,
then meta-update the initial parameters with the gradient of the query loss
at the adapted parameters, averaged over ``meta_batch`` tasks.

``first_order=True`` drops the second-order terms (the paper's "first-order
approximation", FOMAML): the inner gradients are treated as constants.

MAML++: Antoniou, Edwards & Storkey (2019), "How to train your MAML", ICLR, sec. 4, with
the schedules and constants of the authors' code (github.com/AntreasAntoniou/
HowToTrainYourMAMLPytorch, ``few_shot_learning_system.py``). Each option is off by
default, and with all of them off this is exactly the MAML above. S is ``inner_steps``.

- MSL, ``msl_iterations: N`` -- multi-step loss: a task's outer loss is
  ``sum_s v_s * L_query(phi_{s+1})``, the query loss after every inner step. With
  ``f = (t - 1) / N`` at iteration t, ``v_s = max((1 - f) / S, 0.03 / S)`` for the first
  S - 1 steps and ``v_{S-1} = min((1 + f (S - 1)) / S, 1 - 0.03 (S - 1) / S)``: equal
  weights at first, moving to the last step (the code's
  ``get_per_step_loss_importance_vector``). After N iterations the last step's loss
  alone, as MAML. The code moves f once per 500-iteration epoch; here every iteration.
- DA, ``first_order_iterations: N`` -- derivative-order annealing: first-order
  meta-gradients (as ``first_order``) for iterations 1..N, second order after.
- BNWB, ``per_step_bn_weights`` -- batch norm weights and biases per inner step (conv4's
  ``per_step_norm``). Inner step s's support pass and the query pass after it use set s,
  as the code's ``num_step`` does. They are meta-learned and not adapted in the inner
  loop (the code's ``enable_inner_loop_optimizable_bn_params: false``).
- BNRS, ``per_step_bn_statistics`` -- running mean and variance per inner step, set s
  updated in meta-training from the batch statistics of step s's passes (momentum 0.1,
  the code's, applied once per pass, one update per meta-step). Batch norm still
  normalises with the batch's statistics, in training and at evaluation, as the authors'
  code does (``F.batch_norm(..., training=True)``: there the running statistics never
  reach an output, and the paper's evaluation is transductive).
  ``running_statistics_at_eval`` makes evaluation normalise step s's passes with set s
  instead, so the query batch shares no statistics (not transductive). A network trained
  on each pass's own statistics can do much worse that way, so it is off by default.
- LSLR, ``learned_inner_lrs`` -- a learned inner step size per parameter tensor and inner
  step, starting at ``inner_lr`` and meta-learned with the init (the code's
  ``LSLRGradientDescentLearningRule``). ``inner_lr`` is then only their start, so
  ``fewshot eval --inner-lr`` is refused, as for the other algorithms that learn their
  step sizes.
- CA, ``cosine_meta_lr`` -- the meta learning rate follows a cosine from ``meta_lr`` to
  ``meta_lr_final`` over training (``CosineAnnealingLR``'s curve, moved every iteration;
  the code moves it once per epoch).

The per-step sets (BNWB, BNRS, LSLR) number S; evaluating more steps than S reuses the
last set for the extra ones.

``checkpoint_inner_steps`` (off by default): activation checkpointing per inner step
(:class:`Recomputed`). A second-order step keeps only its input parameters; its support
pass and inner gradient are recomputed in the backward pass, so the memory the graph
holds does not grow with S (mini-ImageNet conv4: see ``benchmarks/inner_memory.py``),
for one more support forward and backward per step. The meta-gradient is the same (to
rounding; with every MAML++ option). It applies to ``algorithm.kind: maml`` (MAML and
MAML++; first-order steps, FOMAML's and DA's, keep no inner graph and are not
recomputed); ``pretrain`` shares this inner loop but has none in meta-training, and the
other algorithms have inner steps of their own. Not on the ``vmap`` path, nor ``compiled``
(which maps as ``vmap``): refused with a ConfigError, and left out of ``available_paths``.
The recomputed step is a ``torch.autograd.Function`` that ``torch.func.vmap`` cannot
batch, and torch's own checkpoint cannot run ``torch.func.grad`` inside (saved-tensor
hooks).

Metrics: ``inner_loss`` (the support loss before each inner step),
``inner_loss_after`` (after the last one; computed on logged iterations only)
and, for classification, the query ``accuracy`` after adaptation. While MSL is on, also
``query_loss_steps`` (the query loss after each step) and ``msl_weights``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..config import AlgorithmSection
from ..errors import ConfigError
from ..tasks.base import TaskBatch, TaskSource
from .base import Algorithm
from .batching import Context, Query, Support, TrainingProgress, Vectorize, join_batches
from .params import Metrics, Params, inner_gradient, param_key, sgd_update
from .settings import Settings

#: MSL: the floor of every weight but the last is this over S (the code's
#: ``min_value_for_non_final_losses``).
MSL_FLOOR = 0.03
#: BNRS: the running statistics' momentum per pass (the code's ``MetaBatchNormLayer``).
BN_MOMENTUM = 0.1
#: Metric key that carries BNRS's batch statistics from the tasks to ``after_update``.
BN_STATS = "_bn_stats"


def msl_weights(steps: int, fraction: float) -> list[float]:
    """MSL's per-step weights at ``fraction`` (0 to 1) of the MSL phase (see the module
    docstring); they sum to 1."""
    floor = MSL_FLOOR / steps
    first = [max((1.0 - fraction) / steps, floor)] * (steps - 1)
    last = min((1.0 + fraction * (steps - 1)) / steps, 1.0 - (steps - 1) * floor)
    return [*first, last]


Step = Callable[..., tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]]


class Recomputed(torch.autograd.Function):
    """Activation checkpointing of one inner step (``checkpoint_inner_steps``).

    ``apply(step, n, *inputs, *extra)``: ``step(*inputs)`` (``n`` tensors) returns a tuple
    of differentiable tensors and one of constants. It runs without keeping its graph, and
    again with it in the backward pass, which differentiates through it; only the inputs
    are kept in between. ``extra`` are the meta-parameters ``step`` reads by itself (learned
    step sizes, per-step batch norm sets), which get their gradients that way. The forward
    pass's autocast state is restored for the recomputation; ``step`` must be deterministic.
    (Not under ``torch.func.vmap``: no batching rule; the backward takes ``autograd.grad``.)
    """

    @staticmethod
    def forward(ctx: Any, step: Step, n: int, *tensors: torch.Tensor  # type: ignore[override]
                ) -> tuple[torch.Tensor, ...]:
        ctx.step, ctx.extra = step, tensors[n:]
        ctx.save_for_backward(*tensors[:n])
        ctx.set_materialize_grads(False)
        ctx.device = tensors[0].device.type
        ctx.cast = (torch.is_autocast_enabled(ctx.device), torch.get_autocast_dtype(ctx.device))
        # The step as the recomputation will run it (with grad mode on, so it takes the same
        # code path and rounds alike), its graph dropped as soon as it returns.
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in tensors[:n]]
        with torch.enable_grad():
            diff, const = step(*inputs)
        diff = tuple(t.detach() for t in diff)
        ctx.mark_non_differentiable(*const)
        return (*diff, *const)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None  # type: ignore[override]
                 ) -> tuple[torch.Tensor | None, ...]:
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        enabled, dtype = ctx.cast
        with torch.enable_grad(), torch.autocast(ctx.device, dtype=dtype, enabled=enabled):
            diff, _ = ctx.step(*inputs)
        pairs = [(o, g) for o, g in zip(diff, grads) if g is not None and o.requires_grad]
        every = (*inputs, *ctx.extra)
        wrt = [t for t in every if t.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                       allow_unused=True) if pairs and wrt else [None] * len(wrt))
        return (None, None, *(next(got) if t.requires_grad else None for t in every))


class MAML(Algorithm):
    """MAML with SGD inner steps of size ``inner_lr``, optionally first order, with the
    MAML++ options of the module docstring."""

    kind = "maml"
    paths = ("vmap", "loop", "fused", "compiled")

    def __init__(self, model: nn.Module, cfg: AlgorithmSection, task: TaskSource,
                 settings: Settings | None = None) -> None:
        super().__init__(model, cfg, task, settings)

        def option(key: str, off: Any) -> Any:  # a subclass's section may lack the key
            return getattr(cfg, key, off)

        self.first_order: bool = option("first_order", False)
        self.msl_iterations: int | None = option("msl_iterations", None)
        self.first_order_iterations: int | None = option("first_order_iterations", None)
        self.checkpoint_inner_steps: bool = option("checkpoint_inner_steps", False)
        bn_weights = option("per_step_bn_weights", False)
        bn_stats = option("per_step_bn_statistics", False)
        eval_running = option("running_statistics_at_eval", False)
        per_step: list[str] = []
        if bn_weights or bn_stats:
            key = "per_step_bn_weights" if bn_weights else "per_step_bn_statistics"
            if not hasattr(model, "per_step_norm") or not model.norms():
                found = ("a conv4 with batch_norm: false" if hasattr(model, "per_step_norm")
                         else f"model {type(model).__name__}")
                raise ConfigError(f"algorithm.{key}: needs model.kind conv4 with batch_norm: "
                                  f"true, found {found}")
            try:
                per_step = model.per_step_norm(self.inner_steps, bn_weights, bn_stats)
            except ValueError as e:
                raise ConfigError(f"algorithm.{key}: {e}") from None
        self.per_step_norm = bn_weights or bn_stats
        self.bn_statistics = bn_stats
        #: The parameters the inner loop adapts: all but the per-step batch norm sets (and
        #: but batch norm's scale and offset without ``inner_adapts_batch_norm``).
        norms = ({id(m) for m in model.norms()} if hasattr(model, "norms")
                 and not option("inner_adapts_batch_norm", True) else set())
        norm_names = {f"{n}.{k}" for n, m in model.named_modules() if id(m) in norms
                      for k in ("weight", "bias")}
        self.adapted = [n for n, _ in model.named_parameters()
                        if n not in per_step and n not in norm_names]
        sets = set(model.norm_step(0)) if self.per_step_norm else set()
        running = {k for k in sets if k.endswith(("running_mean", "running_var"))}
        #: BNRS's running statistics, where evaluation normalises with them.
        self.running = running if eval_running else set()
        #: The per-step sets the forward passes are given (``norm_tensors``).
        self.given = (sets - running) | self.running
        if option("learned_inner_lrs", False):
            weights = dict(model.named_parameters())
            self.inner_lrs = nn.ParameterDict({
                param_key(n): nn.Parameter(weights[n].new_full((self.inner_steps,), cfg.inner_lr))
                for n in self.adapted})

    @classmethod
    def learns_step_sizes(cls, cfg: AlgorithmSection) -> bool:
        return bool(getattr(cfg, "learned_inner_lrs", False))

    def meta_grad_clip_value(self) -> float | None:
        return getattr(self.cfg, "meta_grad_clip_value", None)

    @property
    def available_paths(self) -> tuple[Vectorize, ...]:
        """As :attr:`Algorithm.available_paths`, less ``vmap`` and ``compiled`` (which maps as
        ``vmap``) with ``checkpoint_inner_steps`` (:class:`Recomputed` has no ``vmap``
        batching rule)."""
        paths = super().available_paths
        return (tuple(p for p in paths if p not in ("vmap", "compiled"))
                if self.checkpoint_inner_steps else paths)

    def meta_loss(self, batch: TaskBatch, vectorize: Vectorize, progress: TrainingProgress
                  ) -> tuple[torch.Tensor, Metrics]:
        if vectorize == "vmap" and self.checkpoint_inner_steps:
            raise ConfigError("algorithm.checkpoint_inner_steps: needs train.vectorize loop, "
                              "fused or auto (vmap cannot recompute an inner step), found vmap")
        return super().meta_loss(batch, vectorize, progress)

    # -- the network, with this step's batch norm sets -------------------------------------
    def norm_tensors(self, step: int, ctx: Context) -> Params:
        """Inner step ``step``'s per-step batch norm sets (BNWB, BNRS; none without them),
        constants outside training."""
        if not self.given:
            return {}
        sets = {k: v for k, v in self.model.norm_step(step).items() if k in self.given}
        return sets if ctx.training else {k: v.detach() for k, v in sets.items()}

    def params(self) -> Params:
        """The adapted parameters' initial values and the first step's batch norm sets."""
        params = dict(self.model.named_parameters())
        if not self.per_step_norm:
            return params
        return {**{n: params[n] for n in self.adapted}, **self.norm_tensors(0, Context(True))}

    def forward(self, params: Params, x: torch.Tensor, ctx: Context,  # type: ignore[override]
                hidden: bool = False, stats: bool = False) -> Any:
        """As :meth:`Algorithm.forward`; in meta-training batch norm always uses the batch's
        statistics (running ones given for evaluation are left out), and ``stats`` also
        returns them."""
        if ctx.training and self.running:
            params = {k: v for k, v in params.items() if k not in self.running}
        if not stats:
            return super().forward(params, x, ctx, hidden)
        if ctx.fused:
            return self.model.forward_tasks(params, x, return_stats=True)
        return functional_call(self.model, params, (x,), {"return_stats": True})

    # -- the inner loop ------------------------------------------------------------------------
    def first_order_now(self, ctx: Context) -> bool:
        """First-order meta-gradients: ``first_order``, or DA's first iterations."""
        if self.first_order:
            return True
        n, progress = self.first_order_iterations, ctx.progress
        return n is not None and progress is not None and progress.iteration <= n

    def step_sizes(self, step: int, ctx: Context) -> Any:
        """``inner_lr``, or with LSLR step ``step``'s rate of every adapted tensor."""
        if not hasattr(self, "inner_lrs"):
            return self.inner_lr
        return {n: self.inner_lrs[param_key(n)][step] if ctx.training
                else self.inner_lrs[param_key(n)][step].detach() for n in self.adapted}

    def collects_statistics(self, ctx: Context) -> bool:
        return self.bn_statistics and ctx.training

    def init_state(self, params: Params, support: Support, ctx: Context) -> Any:
        """BNRS in meta-training: the batch statistics of each step's support pass."""
        return () if self.collects_statistics(ctx) else None

    def checkpoints(self, ctx: Context) -> bool:
        """``checkpoint_inner_steps`` applies: meta-training with a second-order step (a
        first-order one keeps no graph of its inner gradient)."""
        return self.checkpoint_inner_steps and ctx.training and not self.first_order_now(ctx)

    def inner_step(self, params: Params, state: Any, support: Support, step: int,
                   ctx: Context) -> tuple[Params, Any, Metrics]:
        """:meth:`sgd_inner_step`, recomputed in the backward pass where :meth:`checkpoints`."""
        if not self.checkpoints(ctx):
            return self.sgd_inner_step(params, state, support, step, ctx)
        names, out = list(params), {}

        def run(*values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            new, st, metrics = self.sgd_inner_step(dict(zip(names, values)), state, support,
                                                   step, ctx)
            leaves, out["spec"] = tree_flatten((st, metrics))
            out["keys"], out["leaves"] = list(new), leaves
            return list(new.values()), [x for x in leaves if isinstance(x, torch.Tensor)]

        extra = [p for p in self.parameters() if p.requires_grad]
        got = iter(Recomputed.apply(run, len(names), *params.values(), *extra))
        new = {k: next(got) for k in out["keys"]}
        leaves = [next(got) if isinstance(x, torch.Tensor) else x for x in out["leaves"]]
        state, metrics = tree_unflatten(leaves, out["spec"])
        return new, state, metrics

    def sgd_inner_step(self, params: Params, state: Any, support: Support, step: int,
                       ctx: Context) -> tuple[Params, Any, Metrics]:
        """One SGD step on the support loss (with the MAML++ options), kept in the graph."""
        s = min(step, self.inner_steps - 1)
        params = {**params, **self.norm_tensors(s, ctx)}
        create_graph = ctx.training and not self.first_order_now(ctx)
        collect = self.collects_statistics(ctx)
        adapted = {k: params[k] for k in self.adapted}
        fixed = {k: v for k, v in params.items() if k not in adapted}  # batch norm sets
        lr = self.step_sizes(s, ctx)

        def total(p: Params) -> tuple[torch.Tensor, Any]:
            out = self.forward({**p, **fixed}, support.x, ctx, stats=collect)
            if not collect:
                loss = self.per_task(self.loss_fn, out, support.y, ctx)
                return self.inner_total(loss), loss
            loss = self.per_task(self.loss_fn, out[0], support.y, ctx)
            return self.inner_total(loss), (loss, out[1])

        grads, aux = inner_gradient(total, adapted, create_graph)
        loss, stats = aux if collect else (aux, None)
        new = sgd_update(adapted, grads, lr)
        if collect:
            state = (*state, stats)
        return {**new, **fixed}, state, {"inner_loss": loss.detach()}

    # -- the outer objective -------------------------------------------------------------------
    def msl_weights_at(self, progress: TrainingProgress | None) -> list[float] | None:
        """MSL's weights at this iteration, or None once (or where) MSL is off."""
        n = self.msl_iterations
        if n is None or progress is None or progress.iteration > n:
            return None
        return msl_weights(self.inner_steps, (progress.iteration - 1) / n)

    def task_objective(self, params: Params, support: Support, query: Query,
                       ctx: Context) -> tuple[torch.Tensor, Metrics]:
        weights = self.msl_weights_at(ctx.progress) if ctx.training else None
        collect = self.collects_statistics(ctx)
        adapted = self.adapt(params, support, self.inner_steps, ctx,
                             observe=None if weights is None else (lambda p: p))
        metrics = dict(adapted.metrics)
        # the query passes: after the last step, or (MSL) after every step
        points = adapted.observed[1:] if weights is not None else [adapted.params]
        outs, losses, query_stats = [], [], []
        for p in points:
            parts = [self.forward(p, x, ctx, stats=collect)
                     for x in self.query_batches(query.x, ctx)]
            if collect:  # a pass in batches: the mean of their statistics
                query_stats.append(torch.stack([s for _, s in parts]).mean(0))
                parts = [o for o, _ in parts]
            outs.append(join_batches(parts, ctx))
            losses.append(self.per_task(self.loss_fn, outs[-1], query.y, ctx))
        out = outs[-1]
        if weights is None:
            loss = losses[-1]
        else:
            loss = sum(w * q for w, q in zip(weights, losses))
            metrics["query_loss_steps"] = torch.stack(losses, dim=-1).detach()
        if collect:
            metrics[BN_STATS] = self._pass_statistics(adapted.state, query_stats)
        return loss, {**metrics, **self.outcome_metrics(adapted, support, query, out, ctx)}

    def _pass_statistics(self, support: tuple[torch.Tensor, ...],
                         query: list[torch.Tensor]) -> torch.Tensor:
        """Per step, the mean batch statistics of its passes ``[S, 4, 2, F]`` (``[B, ...]``
        fused): step s's support pass, and the query pass after it where there was one."""
        sums = torch.stack(support, dim=-4)
        counts = self._passes(len(query) > 1).to(sums)
        if len(query) > 1:
            sums = sums + torch.stack(query, dim=-4)
        else:  # no in-place writes: this runs under vmap
            before = torch.zeros_like(sums.narrow(-4, 0, self.inner_steps - 1))
            sums = sums + torch.cat([before, query[0].unsqueeze(-4)], dim=-4)
        return sums / counts.view(-1, 1, 1, 1)

    def _passes(self, every_step: bool) -> torch.Tensor:
        """Passes per step: a support pass, and a query pass after every step (MSL) or
        after the last one."""
        counts = torch.full((self.inner_steps,), 2.0 if every_step else 1.0)
        counts[-1] = 2.0
        return counts

    def after_update(self, batch: TaskBatch, progress: TrainingProgress,
                     metrics: Metrics) -> Metrics:
        """BNRS's running statistics take in this meta-batch's (``1 - momentum`` to the
        power of the passes they saw); MSL's weights are logged."""
        stats = metrics.pop(BN_STATS, None)
        weights = self.msl_weights_at(progress)
        if stats is not None:  # the whole meta-batch's, across the processes of the run
            group = self.settings.group
            (stats,), _ = group.mean([stats])
            tasks = round(len(batch) / group.weight)
            passes = self._passes(weights is not None).to(stats) * tasks
            self.model.update_step_statistics(stats, (1.0 - BN_MOMENTUM) ** passes)
        if weights is not None:
            metrics["msl_weights"] = torch.tensor(weights)
        return metrics

    def configure_scheduler(self, optimizer: torch.optim.Optimizer, total: int
                            ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """CA: a cosine from ``meta_lr`` at the first iteration to ``meta_lr_final`` at the
        end of ``total`` (``CosineAnnealingLR``'s curve, in closed form: a run extended
        with ``--resume`` stretches it to the new end instead of starting a second period)."""
        if not getattr(self.cfg, "cosine_meta_lr", False):
            return None
        start, final = self.cfg.meta_lr, self.cfg.meta_lr_final

        def factor(i: int) -> float:
            return (final + (start - final) * (1 + math.cos(math.pi * min(i, total) / total)) / 2
                    ) / start

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
