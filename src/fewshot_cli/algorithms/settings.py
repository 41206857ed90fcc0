"""How the engine runs an algorithm, fixed when the algorithm is built.

An algorithm reads these but never changes them; the engine builds one :class:`Settings`
from the config (``train.autocast``, ``train.query_batch``, ``train.cuda_graphs``) and
the process group of the run, and passes it to the algorithm's constructor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn


class ProcessGroup(Protocol):
    """What an algorithm may ask of the processes that share a meta-batch (the engine's
    ``Sync`` is one)."""

    #: This process's share of the meta-batch, over the meta-batch.
    weight: float

    def mean(self, tensors: Iterable[torch.Tensor], flags: Iterable[bool] = ()
             ) -> tuple[list[torch.Tensor], list[bool]]:
        """Each tensor's meta-batch-weighted mean over the processes, and each flag, true
        where it is true in any process."""
        ...

    def gradients(self, module: nn.Module) -> None:
        """Every parameter's ``.grad`` summed over the processes, each weighted by its
        share."""
        ...


class SingleProcess:
    """The process group of a run in one process: every method is the identity."""

    weight = 1.0

    def mean(self, tensors: Iterable[torch.Tensor], flags: Iterable[bool] = ()
             ) -> tuple[list[torch.Tensor], list[bool]]:
        return list(tensors), list(flags)

    def gradients(self, module: nn.Module) -> None:
        return None


@dataclass(frozen=True)
class Settings:
    """``autocast``: the dtype meta-training's forward passes run in under
    ``torch.autocast`` (None: none); parameters, gradients and the optimiser keep their
    dtype, and evaluation never autocasts. ``query_batch``: in meta-training each task's
    queries pass through the network in batches of this many images, one per class (None:
    all in one pass). ``cuda_graphs``: on a CUDA device the ``compiled`` path replays the
    meta-gradient as CUDA graphs. ``group``: the processes sharing each meta-batch."""

    autocast: torch.dtype | None = None
    query_batch: int | None = None
    cuda_graphs: bool = False
    group: ProcessGroup = field(default_factory=SingleProcess)
