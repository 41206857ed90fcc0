"""Meta-SGD: a meta-learned step size for every coordinate of every parameter.

Li, Zhou, Chen & Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835. The learner's initial parameters theta and a tensor alpha of theta's
shape are meta-learned together; a task adapts in one step

    theta' = theta - alpha * grad_theta L_support(theta)       (elementwise product)

so alpha sets both the size and the direction of the update, coordinate by coordinate
(an entry may turn negative). The meta-objective is the query loss at theta', averaged
over the meta-batch, differentiated with respect to theta and alpha (paper, Algorithm 1).

- alpha is ``self.lr``, one tensor per network parameter, owned by the algorithm: it is
  in the algorithm's ``state_dict`` (``lr.<name>`` with the name's dots as ``/``) and in
  the one meta-optimiser with theta. Every entry starts uniformly at random in
  ``algorithm.lr_init`` (the paper's [0.005, 0.1]).
- One inner step by default (``inner_steps: 1``), as in the paper; more steps reuse the
  same alpha. ``inner_lr`` is not used, and ``fewshot eval --inner-lr`` is refused.
- ``first_order`` treats the support gradient as a constant: theta' stays linear in alpha,
  so alpha still receives the gradient ``-grad L_support * grad L_query``.

Metrics: ``inner_loss`` (support loss before each step), ``inner_loss_after`` (after the
last one; logged iterations), for classification the query ``accuracy``, and from each
meta-update ``lr_mean``, ``lr_abs_mean`` and ``lr_negative`` (the mean, mean magnitude and
share of negative entries of alpha over all coordinates).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import MetaSGDConfig
from ..tasks.base import TaskBatch, TaskSource
from .base import Algorithm
from .batching import Context, Support, TrainingProgress
from .params import Metrics, Params, param_key
from .settings import Settings


class MetaSGD(Algorithm):
    """Meta-SGD (Li et al. 2017): theta and a per-coordinate step size alpha, meta-learned."""

    kind = "metasgd"
    paths = ("vmap", "loop", "fused")
    cfg: MetaSGDConfig

    @classmethod
    def learns_step_sizes(cls, cfg: MetaSGDConfig) -> bool:  # type: ignore[override]
        return True

    def __init__(self, model: nn.Module, cfg: MetaSGDConfig, task: TaskSource,
                 settings: Settings | None = None) -> None:
        super().__init__(model, cfg, task, settings)
        low, high = cfg.lr_init
        self.lr = nn.ParameterDict({
            param_key(name): nn.Parameter(torch.empty_like(p).uniform_(low, high))
            for name, p in model.named_parameters()})

    def step_sizes(self, ctx: Context) -> Params:
        """alpha by parameter name; detached outside training (no graph at evaluation)."""
        return {name: (self.lr[param_key(name)] if ctx.training
                       else self.lr[param_key(name)].detach())
                for name, _ in self.model.named_parameters()}

    def inner_step(self, params: Params, state: None, support: Support, step: int,
                   ctx: Context) -> tuple[Params, None, Metrics]:
        create_graph = ctx.training and not self.cfg.first_order
        new, loss = self.sgd_step(params, support.x, support.y, self.step_sizes(ctx),
                                  create_graph, ctx)
        return new, None, {"inner_loss": loss}

    def after_update(self, batch: TaskBatch, progress: TrainingProgress,
                     metrics: Metrics) -> Metrics:
        """Where alpha stands after the update."""
        with torch.no_grad():
            alpha = torch.cat([a.flatten() for a in self.lr.values()])
            metrics.update(lr_mean=alpha.mean(), lr_abs_mean=alpha.abs().mean(),
                           lr_negative=(alpha < 0).to(alpha.dtype).mean())
        return metrics
