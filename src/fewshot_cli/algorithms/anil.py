"""ANIL ("almost no inner loop"): MAML that adapts the network's head alone.

Raghu, Raghu, Bengio & Vinyals (2020), "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR. The paper finds that MAML's inner loop
changes the body of the network very little (feature reuse), and removes it from the inner
loop: for each task only the head (``model.head_names``: conv4's linear classifier, an
MLP's last layer) takes ``inner_steps`` SGD steps of size ``inner_lr``; the body and the
head's initial weights are meta-learned through the query loss, as in MAML.

Since the body does not change during adaptation, its features of the support and of the
query images are computed once per task (``model.features``), and every inner step runs
the head alone on them (``model.apply_head``). That is the whole of ANIL's speed-up over
MAML: one body pass per set instead of one per inner step, and no backward pass through
the body inside the inner loop. The meta-gradient still reaches the body, through the query
features and (second order) through the support features the adapted head depends on.
``first_order`` treats the inner gradient as a constant, as first-order MAML does.

Evaluation adapts the head on the support features in the same way; the query metrics
observed after each step run the whole network (the adapted parameters are the body's
unchanged ones with the adapted head), so anything that reads adapted parameters (plots,
``fewshot eval``) works as for MAML.

Metrics: ``inner_loss`` (support loss before each step), ``inner_loss_after`` (after the
last one; logged iterations) and, for classification, the query ``accuracy``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..config import ANILConfig
from ..tasks.base import TaskSource
from .base import Algorithm
from .batching import Context, Query, Support, Vectorize, join_batches
from .params import Metrics, Params, inner_gradient, sgd_update
from .settings import Settings


class _Method(nn.Module):
    """A network's method as a module's ``forward``, so that ``functional_call`` can run it
    under given parameters (keys prefixed ``net.``)."""

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__()
        self.net = net
        self.name = name

    def forward(self, *args: Any) -> Any:
        return getattr(self.net, self.name)(*args)


class ANIL(Algorithm):
    """ANIL (Raghu et al. 2020): inner steps on the head, body features computed once."""

    kind = "anil"
    paths = ("vmap", "loop", "fused")
    cfg: ANILConfig

    def __init__(self, model: nn.Module, cfg: ANILConfig, task: TaskSource,
                 settings: Settings | None = None) -> None:
        super().__init__(model, cfg, task, settings)
        names = getattr(model, "head_names", None)
        if names is None or not hasattr(model, "features") or not hasattr(model, "apply_head"):
            raise TypeError(f"ANIL needs a network with features, apply_head and head_names; "
                            f"{type(model).__name__} has not")
        self.head_names: tuple[str, ...] = tuple(names)

    @property
    def available_paths(self) -> tuple[Vectorize, ...]:
        """``fused`` needs the network's per-task halves (``features_tasks``,
        ``apply_head_tasks``)."""
        fusable = hasattr(self.model, "features_tasks") and hasattr(self.model,
                                                                    "apply_head_tasks")
        return tuple(p for p in self.paths if p != "fused" or fusable)

    # -- the network in two halves, functionally --------------------------------------------
    def features(self, params: Params, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The body's features of ``x`` under ``params`` (``[B, n, F]`` fused)."""
        if ctx.fused:
            return self.model.features_tasks(params, x)
        body = {f"net.{k}": v for k, v in params.items() if k not in self.head_names}
        return functional_call(_Method(self.model, "features"), body, (x,))

    def head(self, head: Params, features: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The head's output on body ``features`` under the head parameters ``head``."""
        if ctx.fused:
            return self.model.apply_head_tasks(head, features)
        return functional_call(_Method(self.model, "apply_head"),
                               {f"net.{k}": v for k, v in head.items()}, (features,))

    def head_loss(self, head: Params, features: torch.Tensor, y: torch.Tensor,
                  ctx: Context) -> torch.Tensor:
        """The task loss of the head on ``features`` (``[B]`` fused)."""
        return self.per_task(self.loss_fn, self.head(head, features, ctx), y, ctx)

    # -- adaptation -------------------------------------------------------------------------
    def init_state(self, params: Params, support: Support, ctx: Context) -> torch.Tensor:
        """The support set's body features: computed once, read by every inner step."""
        return self.features(params, support.x, ctx)

    def inner_step(self, params: Params, state: torch.Tensor, support: Support, step: int,
                   ctx: Context) -> tuple[Params, torch.Tensor, Metrics]:
        features = state
        head = {k: params[k] for k in self.head_names}

        def total(h: Params) -> tuple[torch.Tensor, torch.Tensor]:
            loss = self.head_loss(h, features, support.y, ctx)
            return self.inner_total(loss), loss

        create_graph = ctx.training and not self.cfg.first_order
        grads, loss = inner_gradient(total, head, create_graph)
        new = {**params, **sgd_update(head, grads, self.inner_lr)}
        return new, features, {"inner_loss": loss.detach()}

    # -- the outer objective ----------------------------------------------------------------
    def task_objective(self, params: Params, support: Support, query: Query,
                       ctx: Context) -> tuple[torch.Tensor, Metrics]:
        adapted = self.adapt(params, support, self.inner_steps, ctx)
        head = {k: adapted.params[k] for k in self.head_names}
        features = join_batches([self.features(params, x, ctx)
                                 for x in self.query_batches(query.x, ctx)], ctx)
        out = self.head(head, features, ctx)
        loss = self.per_task(self.loss_fn, out, query.y, ctx)
        return loss, self.outcome_metrics(adapted, support, query, out, ctx)

    def after_adaptation(self, params: Params, state: torch.Tensor, support: Support,
                         ctx: Context) -> Metrics:
        """The support loss after the last step, from the head alone (no body pass)."""
        head = {k: params[k] for k in self.head_names}
        return {"inner_loss_after": self.head_loss(head, state.detach(), support.y,
                                                   ctx).detach()}
