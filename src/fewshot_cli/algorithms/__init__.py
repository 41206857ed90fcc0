"""Meta-learning algorithms, one file each, registered in ``ALGORITHMS``.

Adding an algorithm is one module here (a subclass of :class:`Algorithm`),
its config section (a subclass of ``AlgorithmSection`` in ``config.py``) and
one line below. Modules are imported when a run asks for their kind.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..config import Config
from ..tasks.base import TaskSource
from .base import Algorithm, Evaluation
from .batching import (
    VECTORIZE,
    Context,
    Query,
    Support,
    TrainingProgress,
    Vectorize,
    map_tasks,
)
from .params import Params
from .settings import ProcessGroup, Settings

#: ``algorithm.kind`` -> ``module:Class`` of its implementation.
ALGORITHMS: dict[str, str] = {
    "maml": "maml:MAML",
    "daml": "daml:DAML",
    "meta_lstm": "meta_lstm:MetaLSTM",
    "pretrain": "pretrain:Pretrain",
    "metasgd": "metasgd:MetaSGD",
    "anil": "anil:ANIL",
    "reptile": "reptile:Reptile",
}


def algorithm_class(kind: str) -> type[Algorithm]:
    module, name = ALGORITHMS[kind].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def build(cfg: Config, model: nn.Module, task: TaskSource,
          settings: Settings | None = None) -> Algorithm:
    """The algorithm named by ``cfg.algorithm.kind``, wrapping ``model``, for ``task``'s
    tasks, run as ``settings`` say."""
    return algorithm_class(cfg.algorithm.kind)(model, cfg.algorithm, task, settings)


__all__ = ["ALGORITHMS", "VECTORIZE", "Algorithm", "Context", "Evaluation", "Params",
           "ProcessGroup", "Query", "Settings", "Support", "TrainingProgress", "Vectorize",
           "algorithm_class", "build", "map_tasks"]
