"""Reptile: move the initialisation towards the weights each task trains it to.

Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms",
arXiv:1803.02999, the batched version of the algorithm: each of ``meta_batch`` tasks is
trained from theta for k = ``inner_steps`` steps of SGD or Adam on its support set,
giving phi_i, and

    theta <- theta + eps * (1/n) * sum_i (phi_i - theta)

with the outer step size eps = ``meta_lr`` annealed linearly to ``meta_lr_final`` over
training (to 0 in the paper). No query set is used in training; evaluation adapts with
the same inner loop (``eval_inner_steps``, ``eval_inner_batch``), the usual protocol.

- The update is one step on the surrogate ``1/2 mean_i ||theta - phi_i||^2`` (phi_i held
  constant), whose gradient is ``theta - mean_i phi_i``, the paper's Reptile gradient up to
  the inner step size: with ``meta_optimizer: sgd`` at rate eps this is exactly the
  interpolation above; ``adam`` hands the same direction to Adam (the paper's variant).
  The schedule is a ``LambdaLR`` on eps, saved with the run.
- Every inner step in training takes ``inner_batch`` support examples in turn from a new
  shuffle of the task's support set (as the reference code, github.com/openai/
  supervised-reptile, draws its minibatches; 5 steps of 10 on 50 examples is one pass);
  evaluation takes ``eval_inner_batch`` in the support set's order (all of it by default).
- The inner Adam has beta1 = 0 by default (the reference code's
  ``AdamOptimizer(beta1=0)``; the paper found momentum hurt) and eps 1e-8. Its state
  (``adam_state``): ``fresh``, zero moments and step count for every task; or
  ``carried``, as the reference code (``reptile.py``: the optimiser's slots are not among
  the variables a meta-step resets, and evaluation restores them after each task): one
  state, saved with the run, that every task of training starts its Adam from and that
  each meta-update advances; evaluation starts every task from it and leaves it
  unchanged. The reference runs a meta-batch's tasks one after another, each from the
  state the previous one left; here they adapt side by side from the same state, which
  then advances as if they had run in turn: for a moment estimate ``s`` with decay
  ``beta`` over k steps of n tasks,
  ``s <- beta^(kn) s + (sum_j beta^(kj)) (mean_i s_i - beta^k s)``, ``s_i`` task i's
  final estimate (exact for one task; for several, each task's addition is weighted by
  the mean of the decays sequential order would give it), and the step count by kn.
- No second derivatives anywhere: adaptation starts from detached parameters.

Metrics: ``inner_loss`` (the minibatch loss before each inner step), ``reptile_step`` (the
mean over tasks of ``||phi_i - theta||``) and, on logged iterations, ``loss`` (the support
loss after adaptation, on the whole support set) and, for classification,
``support_accuracy`` (likewise).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..config import ReptileConfig
from ..tasks.base import TaskBatch, TaskSource
from .base import Algorithm
from .batching import Context, Query, Support, TrainingProgress, Vectorize, support_batch
from .losses import accuracy
from .params import FlatLayout, Metrics, Params, detached, sgd_update
from .settings import Settings

#: The inner Adam's epsilon (the reference code's TensorFlow default).
ADAM_EPS = 1e-8


class Reptile(Algorithm):
    """Reptile (Nichol et al. 2018); see the module docstring."""

    kind = "reptile"
    paths = ("vmap", "loop", "fused")
    cfg: ReptileConfig

    def __init__(self, model: nn.Module, cfg: ReptileConfig, task: TaskSource,
                 settings: Settings | None = None) -> None:
        super().__init__(model, cfg, task, settings)
        self.carried = cfg.inner_optimizer == "adam" and cfg.adam_state == "carried"
        if self.carried:  # the carried Adam state, flat over the network's parameters
            self.layout = FlatLayout(model)
            ref = next(model.parameters()).detach()
            self.register_buffer("adam_m", ref.new_zeros(self.layout.size))
            self.register_buffer("adam_v", ref.new_zeros(self.layout.size))
            self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))

    # -- the inner loop: SGD or Adam on support minibatches ------------------------------------
    def init_state(self, params: Params, support: Support, ctx: Context) -> Any:
        """Adam's first and second moments and the steps they have seen: zero (``fresh``)
        or the carried state; none for SGD."""
        if self.cfg.inner_optimizer == "sgd":
            return None
        if not self.carried:
            return ({k: torch.zeros_like(v) for k, v in params.items()},
                    {k: torch.zeros_like(v) for k, v in params.items()}, 0)
        lead = next(iter(params.values())).shape[:1] if ctx.fused else ()
        m, v = (self.layout.unflat(t.expand(*lead, -1)) for t in (self.adam_m, self.adam_v))
        return m, v, int(self.adam_t)

    def inner_step(self, params: Params, state: Any, support: Support, step: int,
                   ctx: Context) -> tuple[Params, Any, Metrics]:
        size = self.cfg.inner_batch if ctx.training else self.cfg.eval_inner_batch
        x, y = support_batch(support, step, size, ctx.fused)
        grads, loss = self.task_gradient(params, x, y, False, ctx)
        lr = self.inner_lr
        if state is None:
            return sgd_update(params, grads, lr), None, {"inner_loss": loss}
        b1, b2 = self.cfg.inner_betas
        m0, v0, seen = state
        m = {k: b1 * m0[k] + (1 - b1) * g for k, g in grads.items()}
        v = {k: b2 * v0[k] + (1 - b2) * g * g for k, g in grads.items()}
        t = seen + step + 1  # Adam's step count, for its bias corrections
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        new = {k: p - lr * (m[k] / c1) / ((v[k] / c2).sqrt() + ADAM_EPS)
               for k, p in params.items()}
        return new, (m, v, seen), {"inner_loss": loss}

    def advance_adam_state(self, m: torch.Tensor, v: torch.Tensor) -> None:
        """Advance the carried state by a meta-batch whose tasks ended at the mean moments
        ``m`` and ``v`` (flat, over the whole meta-batch); see the module docstring."""
        k, n = self.inner_steps, self.cfg.meta_batch
        with torch.no_grad():
            for buf, mean, beta in ((self.adam_m, m, self.cfg.inner_betas[0]),
                                    (self.adam_v, v, self.cfg.inner_betas[1])):
                weight = sum(beta ** (k * j) for j in range(n))
                buf.copy_(beta ** (k * n) * buf + weight * (mean.to(buf) - beta ** k * buf))
            self.adam_t += k * n

    # -- the meta-update ------------------------------------------------------------------------
    def task_objective(self, params: Params, support: Support, query: Query,
                       ctx: Context) -> tuple[torch.Tensor, Metrics]:
        """``1/2 ||theta - phi||^2`` of one task, phi its adapted weights (a constant): the
        gradient is the task's Reptile direction ``theta - phi``. ``query`` is not used."""
        adapted = self.adapt(detached(params), support, self.inner_steps, ctx)
        phi = detached(adapted.params)
        lead = 1 if ctx.fused else 0
        squared = sum((params[k] - phi[k]).pow(2).flatten(lead).sum(-1) for k in params)
        metrics = dict(adapted.metrics)
        metrics["reptile_step"] = squared.detach().sqrt()
        if self.carried:  # each task's final moments, for the carried state (not logged)
            metrics["adam_m"] = self.layout.flat(adapted.state[0], ctx.fused).detach()
            metrics["adam_v"] = self.layout.flat(adapted.state[1], ctx.fused).detach()
        if ctx.progress is None or ctx.progress.logged:  # one more forward, when logged
            out = self.forward(phi, support.x, ctx)
            metrics["inner_loss_after"] = self.per_task(self.loss_fn, out, support.y,
                                                        ctx).detach()
            if self.classification:
                metrics["support_accuracy"] = self.per_task(accuracy, out, support.y,
                                                            ctx).detach()
        return squared / 2, metrics

    def shuffled(self, batch: TaskBatch) -> TaskBatch:
        """The batch with each task's support set in a new random order (torch's generator,
        saved with the run), so that minibatches taken in turn are drawn without
        replacement; unchanged where a step takes the whole support set."""
        n, size = batch.support_x.shape[1], self.cfg.inner_batch
        if size is None or size >= n:
            return batch
        order = torch.rand(len(batch), n).argsort(dim=1).to(batch.support_x.device)
        rows = torch.arange(len(batch), device=order.device).unsqueeze(1)
        return dataclasses.replace(batch, support_x=batch.support_x[rows, order],
                                   support_y=batch.support_y[rows, order])

    def meta_loss(self, batch: TaskBatch, vectorize: Vectorize, progress: TrainingProgress
                  ) -> tuple[torch.Tensor, Metrics]:
        """The mean surrogate over the batch, its support sets shuffled: every parameter's
        gradient is ``theta - mean_i phi_i``, so the engine's step (``meta_optimizer: sgd``)
        is theta <- theta + eps * mean_i (phi_i - theta). The query sets are never read."""
        return super().meta_loss(self.shuffled(batch), vectorize, progress)

    def after_update(self, batch: TaskBatch, progress: TrainingProgress,
                     metrics: Metrics) -> Metrics:
        """``loss`` is the support loss after adaptation (logged iterations), not the
        surrogate. A carried Adam state advances by the meta-batch's mean final moments
        (averaged over the processes of a distributed run)."""
        if self.carried:
            moments, _ = self.settings.group.mean([metrics.pop("adam_m"),
                                                   metrics.pop("adam_v")])
            self.advance_adam_state(*moments)
        metrics.pop("loss", None)
        if "inner_loss_after" in metrics:
            metrics["loss"] = metrics.pop("inner_loss_after")
        return metrics

    def configure_scheduler(self, optimizer: torch.optim.Optimizer, total: int
                            ) -> torch.optim.lr_scheduler.LRScheduler:
        """eps from ``meta_lr`` at the first iteration linearly towards ``meta_lr_final``
        at the end of ``total`` (the reference code's ``frac_done`` schedule)."""
        drop = 1.0 - self.cfg.meta_lr_final / self.cfg.meta_lr
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: 1.0 - drop * min(i, total) / total)
