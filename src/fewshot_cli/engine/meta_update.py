"""One meta-update, the same for every algorithm.

The algorithm supplies its meta-objective (:meth:`~fewshot_cli.algorithms.Algorithm.
meta_loss`, a surrogate where the update is not a loss gradient, as Reptile's); this
module takes its gradient (from one compiled function on the ``compiled`` path, by
``backward`` otherwise), averages it over the processes of the run, clips it where the
algorithm asks (:meth:`~fewshot_cli.algorithms.Algorithm.meta_grad_clip`), steps the
optimiser and hands the metrics to the algorithm's
:meth:`~fewshot_cli.algorithms.Algorithm.after_update`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..algorithms import Algorithm, TrainingProgress, Vectorize
from ..algorithms.params import Metrics
from ..tasks import TaskBatch
from . import compiled


def meta_update(algo: Algorithm, batch: TaskBatch, vectorize: Vectorize,
                progress: TrainingProgress, optimizer: torch.optim.Optimizer) -> Metrics:
    """Update ``algo``'s meta-parameters on ``batch``; returns detached metrics, ``loss``
    (the mean outer loss) among them. The forward passes run under the algorithm's
    autocast, the backward pass does not."""
    optimizer.zero_grad(set_to_none=True)
    whole = vectorize == "compiled" and algo.compiled_inner is None
    got = compiled.meta_gradient(algo, batch, progress) if whole else None
    if got is not None:
        grads, loss, metrics = got
        for name, p in algo.named_parameters():
            p.grad = grads.get(name)
    else:  # meta_loss runs ``compiled`` as its eager path (Algorithm.eager_path)
        with algo.autocast():
            loss, metrics = algo.meta_loss(batch, vectorize, progress)
        loss.backward()
    algo.settings.group.gradients(algo)
    metrics = {"loss": loss.detach(), **metrics}
    value = algo.meta_grad_clip_value()
    if value is not None:
        for p in algo.parameters():
            if p.grad is not None:
                p.grad.clamp_(-value, value)
    clip = algo.meta_grad_clip()
    if clip is not None:
        metrics["meta_grad_norm"] = nn.utils.clip_grad_norm_(algo.parameters(), clip).detach()
    optimizer.step()
    return algo.after_update(batch, progress, metrics)
