"""Task losses and metrics, for one task and over a leading task dimension."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).mean()


def l1(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).abs().mean()


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


LOSSES: dict[str, LossFn] = {"mse": mse, "l1": l1, "cross_entropy": cross_entropy}


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(dim=-1) == y).to(out.dtype).mean()


#: The same functions over a leading task dimension, ``[B, n, ...] -> [B]``, written out
#: so that the fused path needs no ``vmap`` wrapper for them.
PER_TASK: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    mse: lambda out, y: (out - y).pow(2).flatten(1).mean(1),
    l1: lambda out, y: (out - y).abs().flatten(1).mean(1),
    cross_entropy: lambda out, y: F.cross_entropy(
        out.flatten(0, 1), y.flatten(0, 1), reduction="none").view(out.shape[0], -1).mean(1),
    accuracy: lambda out, y: (out.argmax(dim=-1) == y).to(out.dtype).flatten(1).mean(1),
}
