"""The four-block convolutional network of few-shot classification
(Vinyals et al. 2016; Finn et al. 2017, sec. 5.2).

Each block is 3x3 conv (F filters) -> batch norm on the current batch's
statistics -> ReLU -> 2x2 max-pool. ``strided=True`` gives the variant of
the MAML reference code for Omniglot: stride-2 convolutions, no pooling, and
a spatial mean before the linear head.

Besides the ordinary ``forward``, :meth:`Conv4.forward_tasks` runs B copies of
the network with B different parameter sets in one pass (task b's filters
become group b of a grouped convolution), for meta-learning without
``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def batch_stat_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """Per-channel batch norm of ``x [N, C, H, W]`` with the batch's own statistics.

    Built from primitive ops only, so every derivative (of any order, under
    any ``torch.func`` transform) is exact. The variance is the biased one.
    """
    dims = (0, 2, 3)
    centred = x - x.mean(dim=dims, keepdim=True)
    var = (centred * centred).mean(dim=dims, keepdim=True)
    scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + eps)
    return centred * scale + bias.view(1, -1, 1, 1)


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
        return batch_stat_norm(x, self.weight, self.bias, self.eps)


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

    def forward_tasks(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                      return_hidden: bool = False):
        """Outputs of B networks at once: task b's parameters on task b's inputs.

        ``params`` maps every name of ``named_parameters()`` to a ``[B, *shape]``
        stack of per-task values (a tensor of the plain ``shape`` is shared by all
        tasks); ``x`` is ``[B, n, C, H, W]``. Returns ``[B, n, ways]`` (and with
        ``return_hidden`` the four block outputs as ``[B, n, F, H', W']``), equal to
        stacking ``functional_call(self, params_b, (x_b,))`` over b.

        The tasks are laid side by side in the channel dimension,
        ``[n, B*C, H, W]``: each convolution is one grouped convolution with
        ``groups=B``, and per-channel batch statistics of that layout are exactly
        per-task statistics. Batch norm uses the native ``F.batch_norm`` kernel,
        which differentiates exactly at any order under plain autograd and
        ``torch.func.grad`` but not under ``torch.func.vmap`` (see
        :class:`BatchStatNorm`): do not vmap this method.
        """
        if x.dim() != 5:
            raise ValueError(f"forward_tasks expects inputs [B, n, C, H, W], got {tuple(x.shape)}")
        b, n = x.shape[:2]
        shapes = dict(self.named_parameters())
        missing = shapes.keys() - params.keys()
        if missing:
            raise KeyError(f"forward_tasks: missing parameters {sorted(missing)}")

        def stacked(name: str) -> torch.Tensor:
            p, shape = params[name], shapes[name].shape
            if p.shape == shape:
                return p.expand(b, *shape)
            if p.shape[1:] != shape or p.shape[0] != b:
                raise ValueError(f"forward_tasks: {name} has shape {tuple(p.shape)}, expected "
                                 f"{(b, *shape)} or {tuple(shape)}")
            return p

        h = x.transpose(0, 1).reshape(n, b * x.shape[2], *x.shape[3:])
        hidden = []
        for i, block in enumerate(self.blocks):
            w = stacked(f"blocks.{i}.conv.weight")
            bias = stacked(f"blocks.{i}.conv.bias")
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1),
                         stride=block.conv.stride, padding=block.conv.padding, groups=b)
            if isinstance(block.norm, BatchStatNorm):
                h = F.batch_norm(h, None, None, stacked(f"blocks.{i}.norm.weight").reshape(-1),
                                 stacked(f"blocks.{i}.norm.bias").reshape(-1), training=True,
                                 momentum=0.0, eps=block.norm.eps)
            h = F.relu(h)
            if not self.strided:
                h = F.max_pool2d(h, 2)
            if return_hidden:
                hidden.append(h.view(n, b, -1, *h.shape[2:]).transpose(0, 1))
        features = (h.mean(dim=(2, 3)) if self.strided else h).reshape(n, b, -1).transpose(0, 1)
        weight, bias = stacked("head.weight"), stacked("head.bias")
        out = torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))
        return (out, hidden) if return_hidden else out
