"""Meta-learning algorithms, one file each; ``build`` maps ``algorithm.kind`` to a class."""

from __future__ import annotations

from torch import nn

from ..config import Config
from .base import VECTORIZE_MODES, MetaAlgorithm, Params, Vectorize, map_tasks
from .maml import MAML
from .pretrain import Pretrain

_CLASSES: dict[str, type[MAML]] = {"maml": MAML, "pretrain": Pretrain}


def build(cfg: Config, model: nn.Module) -> MetaAlgorithm:
    """The algorithm named by ``cfg.algorithm.kind``, wrapping ``model``."""
    a = cfg.algorithm
    return _CLASSES[a.kind](
        model, loss=a.loss, inner_lr=a.inner_lr, inner_steps=a.inner_steps,
        classification=cfg.problem == "classification", first_order=a.first_order,
    )


__all__ = ["MAML", "VECTORIZE_MODES", "MetaAlgorithm", "Params", "Pretrain", "Vectorize",
           "build", "map_tasks"]
