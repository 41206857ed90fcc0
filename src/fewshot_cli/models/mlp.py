"""Fully connected regression network (the MAML paper's 1-40-40-1 sinusoid model)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .stacking import stacked


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

    # -- B networks at once (the ``fused`` batching path) ----------------------------------
    def forward_tasks(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                      return_hidden: bool = False):
        """Outputs of B networks at once: task b's parameters on task b's inputs.

        ``params`` maps every name of ``named_parameters()`` to a ``[B, *shape]`` stack of
        per-task values (a tensor of the plain ``shape`` is shared by all tasks); ``x`` is
        ``[B, n, ...]``. Returns ``[B, n, out]`` (and with ``return_hidden`` every hidden
        layer's activations, ``[B, n, h]``), equal to stacking ``functional_call(self,
        params_b, (x_b,))`` over b. Each layer is one ``torch.baddbmm`` (one autograd node
        for the product and the bias).
        """
        features, hidden = self.features_tasks(params, x, return_hidden=True)
        out = self.apply_head_tasks(params, features)
        return (out, hidden) if return_hidden else out

    def features_tasks(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                       return_hidden: bool = False):
        """:meth:`features` of B networks at once (see :meth:`forward_tasks`): ``[B, n, F]``
        (and with ``return_hidden`` every hidden layer's activations)."""
        if x.dim() < 3:
            raise ValueError(f"forward_tasks expects inputs [B, n, ...], got {tuple(x.shape)}")
        x = x.flatten(2) if x.dim() > 3 else x
        hidden = []
        for i in range(len(self.layers) - 1):
            x = self.act(self._linear_tasks(params, i, x))
            hidden.append(x)
        return (x, hidden) if return_hidden else x

    def apply_head_tasks(self, params: Mapping[str, torch.Tensor], features: torch.Tensor
                         ) -> torch.Tensor:
        """:meth:`apply_head` of B networks at once: ``[B, n, F]`` to ``[B, n, out]``."""
        return self._linear_tasks(params, len(self.layers) - 1, features)

    def _linear_tasks(self, params: Mapping[str, torch.Tensor], i: int, x: torch.Tensor
                      ) -> torch.Tensor:
        """Layer ``i`` of B networks on ``x [B, n, in]``: ``bias_b + x_b @ weight_b^T``."""
        b, layer = x.shape[0], self.layers[i]
        shape = (layer.out_features, layer.in_features)
        weight = stacked(params, f"layers.{i}.weight", shape, b)
        bias = stacked(params, f"layers.{i}.bias", shape[:1], b)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
