"""Plain ``nn.Module`` networks; nothing meta-learning specific lives here.

Every model's ``forward(x, return_hidden=False)`` can also return its hidden
activations, and is ``apply_head(features(x))``: the body's features and the head
(the parameters named in ``head_names``), for algorithms that adapt the head alone.
``build(cfg.model, source)`` sizes the network for the task.
"""

from __future__ import annotations

from torch import nn

from ..config import Conv4Model, MLPModel
from ..errors import ConfigError
from ..tasks.base import TaskSource
from .conv4 import Conv4
from .mlp import MLP, flat_size


def build(cfg: MLPModel | Conv4Model, source: TaskSource) -> nn.Module:
    """Build the network named by ``cfg.kind`` for ``source``'s inputs and outputs."""
    if cfg.kind == "mlp":
        return MLP(flat_size(source.input_shape), source.output_dim, cfg.hidden, cfg.activation)
    if len(source.input_shape) != 3:
        raise ConfigError(
            f"model.kind: conv4 needs image tasks, found inputs of shape {source.input_shape}"
        )
    try:
        model = Conv4(source.input_shape, source.output_dim, cfg.filters, cfg.strided,
                      cfg.batch_norm, cfg.batch_norm_scale)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.init == "reference":
        model.reference_init()
    return model


__all__ = ["MLP", "Conv4", "build"]
