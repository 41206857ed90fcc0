"""MAML and first-order MAML.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML. Algorithm 2: for each task, take
``inner_steps`` gradient steps of size ``inner_lr`` on the support loss,
then meta-update the initial parameters with the gradient of the query loss
at the adapted parameters, averaged over ``meta_batch`` tasks.

``first_order=True`` drops the second-order terms (the paper's "first-order
approximation", FOMAML): the inner gradients are treated as constants.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad_and_value, vmap

from ..tasks.base import TaskBatch
from .base import MetaAlgorithm, Params, Vectorize, accuracy, map_tasks, stack_params


class MAML(MetaAlgorithm):
    """MAML with plain SGD inner steps (``inner_lr``), optionally first order."""

    def __init__(self, model: nn.Module, loss: str, inner_lr: float, inner_steps: int,
                 classification: bool, first_order: bool = False) -> None:
        super().__init__(model, loss, inner_lr, inner_steps, classification)
        self.first_order = first_order

    def inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                   create_graph: bool, fused: bool = False) -> tuple[Params, torch.Tensor]:
        grads, loss = grad_and_value(self.task_loss)(params, x, y, fused)
        if not create_graph:
            grads = {k: g.detach() for k, g in grads.items()}
        new = {k: p - self.inner_lr * grads[k] for k, p in params.items()}
        return new, loss.detach()

    def _task(self, params: Params, sx, sy, qx, qy) -> tuple[torch.Tensor, ...]:
        fast, support, _ = self.adapt(params, sx, sy, self.inner_steps,
                                      create_graph=not self.first_order)
        out = self.forward_with(fast, qx)
        loss = self.loss_fn(out, qy)
        acc = accuracy(out, qy).detach() if self.classification else loss.detach()
        return loss, support, acc

    def _fused_outer_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict]:
        """All tasks at once through the network's ``forward_tasks`` (same numbers)."""
        n = len(batch)
        fast, support, _ = self.adapt(stack_params(self.params(), n), batch.support_x,
                                      batch.support_y, self.inner_steps,
                                      create_graph=not self.first_order, fused=True)
        out = self.forward_with(fast, batch.query_x, fused=True)
        loss = vmap(self.loss_fn)(out, batch.query_y).mean()
        metrics = {"inner_loss": support / n}
        if self.classification:
            metrics["accuracy"] = vmap(accuracy)(out, batch.query_y).mean().detach()
        return loss, metrics

    def outer_loss(self, batch: TaskBatch, mode: Vectorize) -> tuple[torch.Tensor, dict]:
        if mode == "fused":
            return self._fused_outer_loss(batch)
        loss, support, acc = map_tasks(self._task, self.params(), batch.support_x,
                                       batch.support_y, batch.query_x, batch.query_y, mode=mode)
        metrics = {"inner_loss": support.mean(0)}
        if self.classification:
            metrics["accuracy"] = acc.mean()
        return loss.mean(), metrics
