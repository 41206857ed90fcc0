"""Sinusoid regression tasks (Finn et al. 2017, "Model-Agnostic Meta-Learning
for Fast Adaptation of Deep Networks", sec. 5.1).

Each task is ``y = A * sin(x - phase) + noise`` with the amplitude ``A`` and
the phase drawn per task and ``x`` drawn uniformly per point. ``phase_choices``
replaces the phase range by a discrete set (e.g. ``[0, pi]``).

With ``demonstration`` the support set is a demonstration from another domain
(Yu et al. 2018, "One-Shot Imitation from Observing Humans via Domain-Adaptive
Meta-Learning"): its inputs, and for targets only the curve seen through a fixed
transformation (or nothing at all). The query set holds the task's true curve.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import SinusoidTask
from .base import Split, TaskBatch
from .fingerprint import digest

#: Points of the probe grid over ``x_range`` (function-space errors at evaluation).
PROBE_POINTS = 200


def _uniform(n: tuple[int, ...], low: float | torch.Tensor, high: float | torch.Tensor,
             g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def observation_dim(cfg: SinusoidTask) -> int:
    """Features of one support "label" as adaptation sees it: 1 (a value), or 0 for a
    demonstration that shows inputs alone."""
    demo = cfg.demonstration
    return 0 if demo is not None and not demo.observe else 1


class SinusoidTasks:
    """A distribution over sinusoids; the splits share it and differ only by seed."""

    problem = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(self, cfg: SinusoidTask) -> None:
        self.cfg = cfg
        demo = cfg.demonstration
        #: True when the support set is a demonstration, never target values.
        self.demonstration = demo is not None
        #: Features of one support "label" as adaptation sees it (0: the demonstration
        #: shows inputs alone).
        self.observation_dim = observation_dim(cfg)

    def fingerprint(self) -> dict[str, Any]:
        """The task distribution is its settings: their digest."""
        settings = self.cfg.model_dump(mode="json")
        return {"kind": "sinusoid", "sha256": digest(settings)}

    def sample(
        self,
        n_tasks: int,
        generator: torch.Generator,
        split: Split = "train",
        shots: int | None = None,
        queries: int | None = None,
    ) -> TaskBatch:
        """Draw ``n_tasks`` sinusoids with ``shots`` support (or demonstration) points and
        ``queries`` query points."""
        c = self.cfg
        k = shots or c.shots
        q = queries or c.queries
        amp = _uniform((n_tasks,), *c.amplitude, generator)
        idx = None
        if c.phase_choices:
            choices = torch.tensor(c.phase_choices, dtype=torch.float32)
            idx = torch.randint(len(choices), (n_tasks,), generator=generator)
            phase = choices[idx]
        else:
            phase = _uniform((n_tasks,), *c.phase, generator)
        if c.demonstration is not None:
            return self._with_demonstration(amp, phase, idx, k, q, generator)
        x = _uniform((n_tasks, k + q, 1), *c.x_range, generator)
        y = self.curve(x, amp, phase)
        if c.noise_std > 0:
            y = y + c.noise_std * torch.randn(y.shape, generator=generator)
        return TaskBatch(
            support_x=x[:, :k], support_y=y[:, :k], query_x=x[:, k:], query_y=y[:, k:],
            info={"amplitude": amp, "phase": phase},
        )

    def _with_demonstration(self, amp: torch.Tensor, phase: torch.Tensor,
                            idx: torch.Tensor | None, k: int, q: int,
                            generator: torch.Generator) -> TaskBatch:
        """Support = ``k`` demonstration points (inputs, and the transformed curve or no
        observation); query = ``q`` points of the true curve over ``x_range``."""
        c, demo = self.cfg, self.cfg.demonstration
        assert demo is not None
        n = len(amp)
        if demo.x_ranges is not None:
            assert idx is not None  # the config requires phase_choices with x_ranges
            ranges = torch.tensor(demo.x_ranges, dtype=torch.float32)[idx]  # [B, 2]
            low, high = ranges[:, :1, None], ranges[:, 1:, None]
        else:
            low, high = demo.x_range or c.x_range
        demo_x = _uniform((n, k, 1), low, high, generator)
        if demo.observe:
            seen = demo.scale * self.curve(demo_x, amp, phase) + demo.shift
            if demo.noise_std > 0:
                seen = seen + demo.noise_std * torch.randn(seen.shape, generator=generator)
        else:
            seen = demo_x.new_zeros(n, k, 0)
        x = _uniform((n, q, 1), *c.x_range, generator)
        y = self.curve(x, amp, phase)
        if c.noise_std > 0:
            y = y + c.noise_std * torch.randn(y.shape, generator=generator)
        return TaskBatch(support_x=demo_x, support_y=seen, query_x=x, query_y=y,
                         info={"amplitude": amp, "phase": phase})

    @staticmethod
    def curve(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Noise-free targets; ``x`` is ``[B, n, 1]``, amplitude and phase ``[B]``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    # -- function-space scores at evaluation -------------------------------------------
    def probe(self) -> torch.Tensor:
        """``[G, 1]`` evenly spaced inputs over ``x_range``."""
        return torch.linspace(*self.cfg.x_range, PROBE_POINTS).view(-1, 1)

    def probe_description(self) -> dict[str, float | int]:
        low, high = self.cfg.x_range
        return {"low": low, "high": high, "points": PROBE_POINTS}

    def probe_metrics(self, batch: TaskBatch, predicted: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
        """Scores of predictions ``[B, 2, G, 1]`` (before, after adaptation) on the probe
        grid, each ``[B, 2]``: ``curve_l1``, the mean absolute error to the task's true
        curve; with two or more ``phase_choices`` also ``phase_identified``, 1 where the
        prediction is closer (in L1) to its own phase's curve than to any other phase's."""
        grid = self.probe().to(predicted.dtype).expand(len(batch), -1, -1)  # [B, G, 1]
        amp = batch.info["amplitude"].to(predicted.dtype)
        phase = batch.info["phase"].to(predicted.dtype)

        def l1_to(ph: torch.Tensor) -> torch.Tensor:
            truth = self.curve(grid, amp, ph).unsqueeze(1)  # [B, 1, G, 1]
            return (predicted - truth).abs().mean(dim=(-2, -1))

        out = {"curve_l1": l1_to(phase)}
        choices = self.cfg.phase_choices or []
        if len(choices) >= 2:
            dists = torch.stack([l1_to(torch.full_like(phase, ch)) for ch in choices], -1)
            own = torch.tensor([min(range(len(choices)), key=lambda j: abs(choices[j] - p))
                                for p in phase.tolist()])
            out["phase_identified"] = (dists.argmin(-1) == own.view(-1, 1)).to(
                predicted.dtype)
        return out


def build(cfg: SinusoidTask) -> SinusoidTasks:
    return SinusoidTasks(cfg)


__all__ = ["PROBE_POINTS", "SinusoidTasks", "build"]
