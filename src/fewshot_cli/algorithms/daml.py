"""DAML: domain-adaptive meta-learning with a learned adaptation loss.

Yu, Finn, Xie, Dasari, Zhang, Abbeel & Levine (2018), "One-Shot Imitation from
Observing Humans via Domain-Adaptive Meta-Learning", RSS. The learner adapts from a
demonstration in another domain, which carries no target labels, so the inner loop
descends a *learned* loss L_psi over the network's activations on the demonstration:

    min over theta, psi of  sum_tasks  L_target(theta - alpha grad_theta L_psi(theta; demo),
                                                 query)

The loss network psi (``self.loss_net``, an MLP) reads, for every demonstration point,
the network's output, its hidden activations (``algorithm.hidden``) and the
demonstration's own observation where it has one (``algorithm.observation``); the inner
loss is the mean L1 norm (or squared L2 norm, ``loss_norm``) of its output. theta (the
network) and psi are meta-learned together, in one state_dict and one optimiser, through
the supervised query loss on the target domain. ``first_order`` drops the second
derivatives with respect to theta (the inner gradient is a constant in theta, as in
first-order MAML) but keeps its dependence on psi: the mixed derivative is how psi learns.

Metrics: ``learned_loss`` (the inner loss before each step), ``loss_net_output`` (the
loss network's mean output before each step), ``learned_loss_after`` (after the last
step, on logged iterations) and, for classification, the query ``accuracy``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import DAMLConfig
from ..models.mlp import MLP
from ..tasks.base import TaskSource
from .base import Algorithm
from .batching import Context, Support
from .params import Metrics, Params, detached, inner_gradient, sgd_update
from .settings import Settings


class DAML(Algorithm):
    """MAML whose inner loop minimises a meta-learned loss of the support activations."""

    kind = "daml"
    paths = ("vmap", "loop", "fused")
    cfg: DAMLConfig

    def __init__(self, model: torch.nn.Module, cfg: DAMLConfig, task: TaskSource,
                 settings: Settings | None = None) -> None:
        super().__init__(model, cfg, task, settings)
        self.ways = task.output_dim if self.classification else 0
        self.observation_dim = (self._observation_dim(task) if cfg.observation else 0)
        with torch.no_grad():
            out, hidden = model(torch.zeros(1, *task.input_shape), return_hidden=True)
        width = out.shape[-1] + sum(h[0].numel() for h in self._hidden(hidden))
        self.loss_net = MLP(width + self.observation_dim, 1, list(cfg.loss_hidden), "relu")

    def _observation_dim(self, task: TaskSource) -> int:
        """Features of one support observation: a demonstration's, regression targets', or
        one-hot class labels'."""
        if self.classification:
            return self.ways
        dim = getattr(task, "observation_dim", None)
        return task.output_dim if dim is None else int(dim)

    def _hidden(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """The hidden activations the loss network reads, deepest first."""
        chosen = {"all": hidden, "last": hidden[-1:], "none": []}[self.cfg.hidden]
        return list(reversed(chosen))

    # -- the learned inner loss ---------------------------------------------------------
    def _points(self, support: Support, step: int, ctx: Context) -> tuple[torch.Tensor, Any]:
        """The support points of inner step ``step``: all of them, or ``points_per_step``
        taken in turn (wrapping around when the steps outnumber the points)."""
        n = self.cfg.points_per_step
        if n is None:
            return support.x, support.y
        dim = 1 if ctx.fused else 0
        count = support.x.shape[dim]
        idx = (torch.arange(n, device=support.x.device) + step * n) % count
        return support.x.index_select(dim, idx), support.y.index_select(dim, idx)

    def learned_loss(self, params: Params, x: torch.Tensor, obs: torch.Tensor,
                     ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """L_psi of one task's points (``[B]`` fused) and the loss network's mean output."""
        out, hidden = self.forward(params, x, ctx, hidden=True)
        lead = out.dim() - 1  # 1, or 2 on the fused path ([B, n])
        parts = [out] + [h.flatten(lead) for h in self._hidden(hidden)]
        if self.observation_dim:
            classes = torch.arange(self.ways, device=obs.device)
            seen = ((obs.unsqueeze(-1) == classes).to(out.dtype) if self.classification
                    else obs.flatten(lead).to(out.dtype))
            parts.append(seen)
        z = torch.cat(parts, dim=-1)
        value = self.loss_net(z.reshape(-1, z.shape[-1])).view(*z.shape[:-1], 1)
        norm = value.abs() if self.cfg.loss_norm == "l1" else value.pow(2)
        if not ctx.fused:
            return norm.mean(), value.mean()
        return norm.mean(dim=(1, 2)), value.mean(dim=(1, 2))

    def inner_step(self, params: Params, state: None, support: Support, step: int,
                   ctx: Context) -> tuple[Params, None, Metrics]:
        x, obs = self._points(support, step, ctx)

        def total(p: Params) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            loss, raw = self.learned_loss(p, x, obs, ctx)
            return loss.sum(), (loss, raw)

        # First order: the inner gradient is taken at detached parameters, so it is a
        # constant with respect to theta but still a function of psi, the only path by
        # which psi learns.
        at = detached(params) if ctx.training and self.cfg.first_order else params
        grads, (loss, raw) = inner_gradient(total, at, create_graph=ctx.training)
        clip = self.cfg.inner_grad_clip
        if clip is not None:
            grads = {k: g.clamp(-clip, clip) for k, g in grads.items()}
        new = sgd_update(params, grads, self.inner_lr)
        return new, None, {"learned_loss": loss.detach(), "loss_net_output": raw.detach()}

    # -- the outer objective ------------------------------------------------------------
    def after_adaptation(self, params: Params, state: None, support: Support,
                         ctx: Context) -> Metrics:
        """The learned loss after the last step (on the next step's points)."""
        x, obs = self._points(support, self.inner_steps, ctx)
        return {"learned_loss_after": self.learned_loss(params, x, obs, ctx)[0].detach()}
