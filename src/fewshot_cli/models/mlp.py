"""Fully connected regression network (the MAML paper's 1-40-40-1 sinusoid model)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """``in -> hidden[0] -> ... -> out`` with an activation between layers.

    ``forward(x, return_hidden=True)`` also returns every hidden layer's
    activations, so an algorithm that needs them (e.g. a learned loss over
    features) uses the same weights without a second copy of the model.
    """

    def __init__(self, in_features: int, out_features: int, hidden: list[int],
                 activation: str = "relu") -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = nn.ReLU() if activation == "relu" else nn.Tanh()

    @property
    def head_names(self) -> tuple[str, ...]:
        """The parameters of the head (the last linear layer); the rest is the body."""
        last = len(self.layers) - 1
        return (f"layers.{last}.weight", f"layers.{last}.bias")

    def features(self, x: torch.Tensor, return_hidden: bool = False):
        """The body's output, the head's input (the last hidden layer's activations; the
        input itself without hidden layers), and with ``return_hidden`` every hidden
        layer's activations. ``forward(x) == apply_head(features(x))``."""
        x = x.flatten(1) if x.dim() > 2 else x
        hidden = []
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
            hidden.append(x)
        return (x, hidden) if return_hidden else x

    def apply_head(self, features: torch.Tensor) -> torch.Tensor:
        """The last linear layer on body features."""
        return self.layers[-1](features)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        features, hidden = self.features(x, return_hidden=True)
        out = self.apply_head(features)
        return (out, hidden) if return_hidden else out


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
