"""What every meta-learning algorithm shares: losses, mapping a per-task
function over a meta-batch, and the adaptation-curve evaluation.

An algorithm is an ``nn.Module`` that owns the network (``self.model``) and
any extra meta-learned tensors (learned step sizes, a learned loss, ...).
It never mutates the network during adaptation: fast weights are a dict of
tensors passed to ``torch.func.functional_call``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..tasks.base import TaskBatch

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Vectorize = Literal["vmap", "loop", "fused"]
VECTORIZE_MODES: tuple[str, ...] = get_args(Vectorize)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).mean()


def l1(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).abs().mean()


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


LOSSES: dict[str, LossFn] = {"mse": mse, "l1": l1, "cross_entropy": cross_entropy}


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(dim=-1) == y).to(out.dtype).mean()


def stack_params(params: Params, n_tasks: int) -> Params:
    """Every tensor repeated (as a view) along a new leading task dimension."""
    return {k: v.expand(n_tasks, *v.shape) for k, v in params.items()}


def map_tasks(fn: Callable[..., Any], params: Params, *tensors: torch.Tensor,
              mode: Vectorize) -> Any:
    """Apply ``fn(params, *task_tensors)`` to every task of a meta-batch.

    ``vmap`` maps with :func:`torch.func.vmap` (params shared, tensors split
    along dim 0); ``loop`` calls ``fn`` task by task and stacks the results.
    Both return the same pytree of ``[B, ...]`` tensors. (``fused`` is not a
    mapping: algorithms run it through the network's ``forward_tasks``.)
    """
    if mode == "vmap":
        return vmap(fn, in_dims=(None,) + (0,) * len(tensors))(params, *tensors)
    outs = [fn(params, *(t[i] for t in tensors)) for i in range(tensors[0].shape[0])]
    return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)


class MetaAlgorithm(nn.Module):
    """Base class: a network, a task loss, and an inner loop to adapt it.

    Subclasses define :meth:`inner_step` (one adaptation step on a task's
    support set) and :meth:`outer_loss` (the meta-training objective of a
    meta-batch). Training and evaluation share :meth:`adapt`.
    """

    def __init__(self, model: nn.Module, loss: str, inner_lr: float, inner_steps: int,
                 classification: bool) -> None:
        super().__init__()
        self.model = model
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.classification = classification

    # -- the functional core -------------------------------------------------
    def params(self) -> Params:
        """The network's meta-parameters as a name -> tensor dict."""
        return dict(self.model.named_parameters())

    @property
    def can_fuse(self) -> bool:
        """Whether the network runs many tasks' parameters at once (``forward_tasks``)."""
        return hasattr(self.model, "forward_tasks")

    def forward_with(self, params: Params, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """Network output; ``fused``: ``[B, ...]`` stacked params on ``[B, n, ...]`` inputs."""
        if fused:
            return self.model.forward_tasks(params, x)
        return functional_call(self.model, params, (x,))

    def task_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                  fused: bool = False) -> torch.Tensor:
        """Loss of one task; ``fused``: the sum of the B tasks' losses.

        The gradient of that sum with respect to ``[B, ...]`` stacked params is
        exactly the stack of per-task gradients, at any order, since task b's
        loss depends on slice b alone.
        """
        if fused:
            return vmap(self.loss_fn)(self.forward_with(params, x, fused=True), y).sum()
        return self.loss_fn(self.forward_with(params, x), y)

    def inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                   create_graph: bool, fused: bool = False) -> tuple[Params, torch.Tensor]:
        """One adaptation step on a support set; returns (new params, support loss before it)."""
        raise NotImplementedError

    def adapt(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, *,
              create_graph: bool, observe: Callable[[Params], Any] | None = None,
              fused: bool = False) -> tuple[Params, torch.Tensor, list]:
        """Run ``steps`` inner steps on one task's support set ``(x, y)``.

        Returns the adapted params, the support loss before each step
        (``[steps]``), and ``observe(params)`` evaluated before the first step
        and after every step (``steps + 1`` entries; empty when not given).
        With ``fused`` the same runs for all tasks at once: params are
        ``[B, ...]`` stacks, inputs ``[B, n, ...]``, and losses task sums.
        """
        losses, seen = [], []
        if observe is not None:
            seen.append(observe(params))
        for _ in range(steps):
            params, loss = self.inner_step(params, x, y, create_graph, fused)
            losses.append(loss)
            if observe is not None:
                seen.append(observe(params))
        support = torch.stack(losses) if losses else x.new_zeros(0)
        return params, support, seen

    def outer_loss(self, batch: TaskBatch, mode: Vectorize) -> tuple[torch.Tensor, dict]:
        """Meta-training loss of a meta-batch and its metrics (detached tensors)."""
        raise NotImplementedError

    # -- evaluation ------------------------------------------------------------
    def query_metrics(self, params: Params, qx: torch.Tensor, qy: torch.Tensor,
                      chunks: int, fused: bool = False) -> torch.Tensor:
        """Query loss (and accuracy for classification) of one task, ``[1 or 2]``
        (``[B, 1 or 2]`` when ``fused``).

        With ``chunks > 1`` the queries are classified in that many separate
        forward passes (batch norm then sees each chunk's statistics).
        """
        dim = 1 if fused else 0
        outs = [self.forward_with(params, x, fused) for x in qx.chunk(chunks, dim=dim)]
        out = torch.cat(outs, dim=dim) if len(outs) > 1 else outs[0]
        metrics = [self.loss_fn] + ([accuracy] if self.classification else [])
        if fused:
            return torch.stack([vmap(m)(out, qy) for m in metrics], dim=-1)
        return torch.stack([m(out, qy) for m in metrics])

    def adaptation_curve(self, batch: TaskBatch, steps: int, mode: Vectorize,
                         query_chunks: int = 1) -> torch.Tensor:
        """Query metrics after 0..steps inner steps, ``[B, steps + 1, 1 or 2]``.

        The outer parameters are not differentiated (evaluation only).
        """
        base = {k: v.detach() for k, v in self.params().items()}
        if mode == "fused":
            _, _, seen = self.adapt(
                stack_params(base, len(batch)), batch.support_x, batch.support_y, steps,
                create_graph=False, fused=True,
                observe=lambda p: self.query_metrics(p, batch.query_x, batch.query_y,
                                                     query_chunks, fused=True),
            )
            return torch.stack(seen, dim=1).detach()

        def one(params: Params, sx, sy, qx, qy) -> torch.Tensor:
            _, _, seen = self.adapt(
                params, sx, sy, steps, create_graph=False,
                observe=lambda p: self.query_metrics(p, qx, qy, query_chunks),
            )
            return torch.stack(seen)

        return map_tasks(one, base, batch.support_x, batch.support_y, batch.query_x,
                         batch.query_y, mode=mode).detach()

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Network output for one task's inputs (plots)."""
        with torch.no_grad():
            return self.forward_with(params, x)

    def adapt_one(self, batch: TaskBatch, index: int, steps: int) -> Params:
        """Adapted parameters of task ``index`` after ``steps`` inner steps (plots)."""
        base = {k: v.detach() for k, v in self.params().items()}
        params, _, _ = self.adapt(base, batch.support_x[index], batch.support_y[index], steps,
                                  create_graph=False)
        return {k: v.detach() for k, v in params.items()}
