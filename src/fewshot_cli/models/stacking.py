"""The per-task parameter stacks of the networks' ``forward_tasks`` (the fused path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def stacked(params: Mapping[str, torch.Tensor], name: str, shape: Sequence[int],
            b: int) -> torch.Tensor:
    """``params[name]`` as a ``[B, *shape]`` stack: a tensor of the plain ``shape`` is shared
    by all ``b`` tasks (a view), a ``[b, *shape]`` one is returned as it is."""
    if name not in params:
        raise KeyError(f"forward_tasks: missing parameter {name}")
    p, shape = params[name], torch.Size(shape)
    if p.shape == shape:
        return p.expand(b, *shape)
    if p.shape[1:] != shape or p.shape[0] != b:
        raise ValueError(f"forward_tasks: {name} has shape {tuple(p.shape)}, expected "
                         f"{(b, *shape)} or {tuple(shape)}")
    return p
