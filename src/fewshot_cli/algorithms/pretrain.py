"""Pretrained baseline of the MAML paper (Finn et al. 2017, sec. 5.1,
"pretrained"): one network trained by ordinary supervised learning on the
mixture of all tasks (support and query points pooled, no inner loop), then
fine-tuned at test time with the same SGD inner loop as MAML.

Metrics: for classification, the ``accuracy`` of the joint model.
"""

from __future__ import annotations

import torch

from ..tasks.base import TaskBatch
from .batching import TrainingProgress, Vectorize
from .losses import accuracy
from .maml import MAML
from .params import Metrics


class Pretrain(MAML):
    """Joint training on pooled task data; adaptation (evaluation) is MAML's SGD step."""

    kind = "pretrain"

    def meta_loss(self, batch: TaskBatch, vectorize: Vectorize, progress: TrainingProgress
                  ) -> tuple[torch.Tensor, Metrics]:
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        out = self.model(x.flatten(0, 1))
        target = y.flatten(0, 1)
        metrics: Metrics = {}
        if self.classification:
            metrics["accuracy"] = accuracy(out, target).detach()
        return self.loss_fn(out, target), metrics
