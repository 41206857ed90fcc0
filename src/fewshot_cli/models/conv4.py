"""The four-block convolutional network of few-shot classification
(Vinyals et al. 2016; Finn et al. 2017, sec. 5.2).

Each block is 3x3 conv (F filters) -> batch norm on the current batch's
statistics -> ReLU -> 2x2 max-pool. ``strided=True`` gives the variant of
the MAML reference code for Omniglot: stride-2 convolutions, no pooling, and
a spatial mean before the linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchStatNorm(nn.Module):
    """Batch norm that always normalises with the current batch's statistics.

    Written from primitive tensor ops rather than ``F.batch_norm``: under
    ``torch.func.vmap(grad(...))`` the fused kernel's batching rule treats the
    saved mean and variance as constants, which silently gives a wrong
    second-order meta-gradient. Primitive ops differentiate exactly at any order.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, 2, 3)
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias.view(1, -1, 1, 1)


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, strided: bool, batch_norm: bool) -> None:
        super().__init__()
        self.strided = strided
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2 if strided else 1, padding=1)
        self.norm = BatchStatNorm(c_out) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return x if self.strided else F.max_pool2d(x, 2)


class Conv4(nn.Module):
    """Conv4 classifier for ``input_shape = (C, H, W)`` and ``ways`` classes."""

    def __init__(self, input_shape: tuple[int, int, int], ways: int, filters: int = 64,
                 strided: bool = False, batch_norm: bool = True) -> None:
        super().__init__()
        c, h, w = input_shape
        self.strided = strided
        self.blocks = nn.ModuleList(
            ConvBlock(c if i == 0 else filters, filters, strided, batch_norm) for i in range(4)
        )
        for _ in range(4):
            h, w = ((h + 1) // 2, (w + 1) // 2) if strided else (h // 2, w // 2)
        if min(h, w) < 1:
            raise ValueError(f"image size {input_shape[1:]} is too small for conv4")
        features = filters if strided else filters * h * w
        self.head = nn.Linear(features, ways)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        x = x.mean(dim=(2, 3)) if self.strided else x.flatten(1)
        out = self.head(x)
        return (out, hidden) if return_hidden else out
