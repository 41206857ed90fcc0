"""The contract between task distributions and algorithms.

A task source draws whole meta-batches of tasks as stacked tensors whose
leading dimension is the task. All randomness comes from a caller-owned
``torch.Generator``, so the run owns (and can checkpoint) the sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from ..config import Problem

Split = Literal["train", "val", "test"]


@dataclass
class TaskBatch:
    """B tasks: ``support_x [B, S, ...]``, ``support_y [B, S, ...]``,
    ``query_x [B, Q, ...]``, ``query_y [B, Q, ...]``.

    Regression targets are float ``[B, n, 1]``; classification labels are
    int64 ``[B, n]`` in ``0..ways-1``. ``unlabelled_x [B, U, ...]`` holds
    unlabelled inputs (a demonstration) for tasks that have them. ``info``
    carries per-task extras that plots may use (e.g. sinusoid amplitude/phase,
    or class names); the algorithms never read it.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    info: dict[str, object] = field(default_factory=dict)
    unlabelled_x: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def split(self, size: int) -> list[TaskBatch]:
        """Consecutive batches of at most ``size`` tasks (tensors of ``info`` whose leading
        dimension is the task's are split too)."""
        n = len(self)

        def part(t: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
            return None if t is None else t[a:b]

        out = []
        for a in range(0, n, size):
            b = min(a + size, n)
            info = {k: v[a:b] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n
                    else v for k, v in self.info.items()}
            out.append(TaskBatch(self.support_x[a:b], self.support_y[a:b], self.query_x[a:b],
                                 self.query_y[a:b], info, part(self.unlabelled_x, a, b)))
        return out

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        """Move to ``device``; ``dtype`` converts float tensors only (labels stay int64)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return TaskBatch(
            move(self.support_x), move(self.support_y), move(self.query_x), move(self.query_y),
            dict(self.info), None if self.unlabelled_x is None else move(self.unlabelled_x),
        )


@dataclass(frozen=True)
class TaskShape:
    """What an algorithm is told of its tasks, without a task source (tests, tools)."""

    problem: Problem
    input_shape: tuple[int, ...]
    output_dim: int
    #: Features of one support "label" as adaptation sees it, where that differs from
    #: ``output_dim`` (a sinusoid demonstration that shows inputs alone: 0).
    observation_dim: int | None = None


class TaskSource(Protocol):
    """A distribution over tasks.

    ``problem`` tells the algorithm which loss family applies, ``input_shape``
    is the shape of one example (``(1,)`` for sinusoids, ``(C, H, W)`` for
    images), ``output_dim`` the model's output width (1 for regression,
    ``ways`` for classification).
    """

    problem: Problem
    input_shape: tuple[int, ...]
    output_dim: int

    def sample(
        self,
        n_tasks: int,
        generator: torch.Generator,
        split: Split = "train",
        shots: int | None = None,
        queries: int | None = None,
    ) -> TaskBatch:
        """Draw ``n_tasks`` tasks from ``split``.

        ``shots`` and ``queries`` override the configured support and query
        sizes (per class for classification, points per task for regression).
        """
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data the tasks are drawn from (meta.json's
        ``provenance.data``; ``fewshot train --resume`` compares it)."""
        ...
