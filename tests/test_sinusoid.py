"""Sinusoid task sampler: shapes, ranges, discrete phases, determinism."""

from __future__ import annotations

import math

import torch

from fewshot_cli.config import SinusoidTask
from fewshot_cli.tasks.sinusoid import SinusoidTasks


def test_shapes_and_ranges() -> None:
    src = SinusoidTasks(SinusoidTask())
    b = src.sample(200, torch.Generator().manual_seed(0))
    assert b.support_x.shape == (200, 10, 1) and b.query_y.shape == (200, 10, 1)
    assert b.support_x.min() >= -5 and b.support_x.max() <= 5
    amp, phase = b.info["amplitude"], b.info["phase"]
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and amp.std() > 1
    assert phase.min() >= 0 and phase.max() <= math.pi
    expected = src.curve(b.query_x, amp, phase)
    assert torch.allclose(b.query_y, expected)


def test_overrides_choices_and_noise() -> None:
    cfg = SinusoidTask(amplitude=(1, 1), phase_choices=[0.0, math.pi], x_range=(-6.3, 6.3),
                       shots=4, queries=4, noise_std=0.1)
    b = SinusoidTasks(cfg).sample(300, torch.Generator().manual_seed(1), shots=7, queries=3)
    assert b.support_x.shape == (300, 7, 1) and b.query_x.shape == (300, 3, 1)
    assert set(b.info["phase"].tolist()) == {0.0, float(torch.tensor(math.pi))}
    clean = SinusoidTasks.curve(b.support_x, b.info["amplitude"], b.info["phase"])
    noise = b.support_y - clean
    assert 0.07 < noise.std() < 0.13


def test_same_generator_seed_same_tasks() -> None:
    src = SinusoidTasks(SinusoidTask())
    a = src.sample(5, torch.Generator().manual_seed(3))
    b = src.sample(5, torch.Generator().manual_seed(3))
    c = src.sample(5, torch.Generator().manual_seed(4))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)
