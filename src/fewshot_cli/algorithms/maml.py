"""MAML and first-order MAML.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML. Algorithm 2: for each task, take
``inner_steps`` gradient steps of size ``inner_lr`` on the support loss,
then meta-update the initial parameters with the gradient of the query loss
at the adapted parameters, averaged over ``meta_batch`` tasks.

``first_order=True`` drops the second-order terms (the paper's "first-order
approximation", FOMAML): the inner gradients are treated as constants.

Metrics: ``inner_loss`` (the support loss before each inner step),
``inner_loss_after`` (after the last one; computed on logged iterations only)
and, for classification, the query ``accuracy`` after adaptation.
"""

from __future__ import annotations

import torch

from .base import Algorithm, Context, Metrics, Params, Query, Support, accuracy


class MAML(Algorithm):
    """MAML with plain SGD inner steps of size ``inner_lr``, optionally first order."""

    kind = "maml"
    paths = ("vmap", "loop", "fused")

    def inner_step(self, params: Params, state: None, support: Support, step: int,
                   ctx: Context) -> tuple[Params, None, Metrics]:
        create_graph = ctx.training and not getattr(self.cfg, "first_order", False)
        new, loss = self.sgd_step(params, support.x, support.y, self.inner_lr, create_graph, ctx)
        return new, None, {"inner_loss": loss}

    def task_objective(self, params: Params, support: Support, query: Query,
                       ctx: Context) -> tuple[torch.Tensor, Metrics]:
        adapted = self.adapt(params, support, self.inner_steps, ctx)
        out = self.forward(adapted.params, query.x, ctx)
        loss = self.per_task(self.loss_fn, out, query.y, ctx)
        metrics = dict(adapted.metrics)
        if ctx.progress is None or ctx.progress.logged:  # one more forward, when logged
            after = {k: v.detach() for k, v in adapted.params.items()}
            metrics["inner_loss_after"] = self.task_loss(after, support.x, support.y,
                                                         ctx).detach()
        if self.classification:
            metrics["accuracy"] = self.per_task(accuracy, out, query.y, ctx).detach()
        return loss, metrics
