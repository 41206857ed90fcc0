"""Sinusoid regression tasks (Finn et al. 2017, "Model-Agnostic Meta-Learning
for Fast Adaptation of Deep Networks", sec. 5.1).

Each task is ``y = A * sin(x - phase) + noise`` with the amplitude ``A`` and
the phase drawn per task and ``x`` drawn uniformly per point. ``phase_choices``
replaces the phase range by a discrete set (e.g. ``[0, pi]``).
"""

from __future__ import annotations

import torch

from ..config import SinusoidTask
from .base import Split, TaskBatch


def _uniform(n: tuple[int, ...], low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


class SinusoidTasks:
    """A distribution over sinusoids; the splits share it and differ only by seed."""

    problem = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(self, cfg: SinusoidTask) -> None:
        self.cfg = cfg

    def sample(
        self,
        n_tasks: int,
        generator: torch.Generator,
        split: Split = "train",
        shots: int | None = None,
        queries: int | None = None,
    ) -> TaskBatch:
        """Draw ``n_tasks`` sinusoids with ``shots`` support and ``queries`` query points."""
        c = self.cfg
        k = shots or c.shots
        q = queries or c.queries
        amp = _uniform((n_tasks,), *c.amplitude, generator)
        if c.phase_choices:
            choices = torch.tensor(c.phase_choices, dtype=torch.float32)
            idx = torch.randint(len(choices), (n_tasks,), generator=generator)
            phase = choices[idx]
        else:
            phase = _uniform((n_tasks,), *c.phase, generator)
        x = _uniform((n_tasks, k + q, 1), *c.x_range, generator)
        y = self.curve(x, amp, phase)
        if c.noise_std > 0:
            y = y + c.noise_std * torch.randn(y.shape, generator=generator)
        return TaskBatch(
            support_x=x[:, :k], support_y=y[:, :k], query_x=x[:, k:], query_y=y[:, k:],
            info={"amplitude": amp, "phase": phase},
        )

    @staticmethod
    def curve(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Noise-free targets; ``x`` is ``[B, n, 1]``, amplitude and phase ``[B]``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))


def build(cfg: SinusoidTask) -> SinusoidTasks:
    return SinusoidTasks(cfg)
