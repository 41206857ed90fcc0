"""Parameter dicts (name -> tensor) and the one way an inner loop takes their gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad_and_value

Params = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


def detached(params: Params) -> Params:
    """Every tensor detached from the graph."""
    return {k: v.detach() for k, v in params.items()}


def stack_params(params: Params, n_tasks: int) -> Params:
    """Every tensor repeated (as a view) along a new leading task dimension."""
    return {k: v.expand(n_tasks, *v.shape) for k, v in params.items()}


def sgd_update(params: Params, grads: Params, lr: Any) -> Params:
    """``p - lr * g`` for every tensor; ``lr`` is a number or a dict of per-tensor rates."""
    if isinstance(lr, dict):
        return {k: p - lr[k] * grads[k] for k, p in params.items()}
    return {k: p - lr * grads[k] for k, p in params.items()}


class FlatLayout:
    """A network's parameters laid end to end as one vector of coordinates, in
    ``named_parameters`` order: for what acts on every coordinate alike (the meta-LSTM's
    update rule, Reptile's carried Adam moments)."""

    def __init__(self, module: torch.nn.Module) -> None:
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]

    @property
    def size(self) -> int:
        """The number of coordinates."""
        return sum(self.sizes)

    def flat(self, params: Params, fused: bool = False) -> torch.Tensor:
        """``[n]`` (``[B, n]`` when ``fused``: tensors with a leading task dimension)."""
        lead = 1 if fused else 0
        return torch.cat([params[k].reshape(*params[k].shape[:lead], -1) for k in self.names],
                         dim=-1)

    def unflat(self, flat: torch.Tensor) -> Params:
        """The tensors of ``flat`` ``[..., n]``, by name, with its leading dimensions."""
        lead = flat.shape[:-1]
        return {k: t.reshape(*lead, *shape) for k, shape, t in
                zip(self.names, self.shapes, flat.split(self.sizes, dim=-1))}


def param_key(name: str) -> str:
    """A parameter name as a ``ParameterDict`` key (a key may not contain dots)."""
    return name.replace(".", "/")


def inner_gradient(total: Callable[[Params], tuple[torch.Tensor, Any]], params: Params,
                   create_graph: bool) -> tuple[Params, Any]:
    """The gradient of ``total(params)[0]`` with respect to ``params``, and the auxiliary
    ``total(params)[1]``; kept in the graph with ``create_graph`` (second order), else
    detached (first order: a constant).

    Every algorithm's inner step takes its gradient here. Outside any ``torch.func``
    transform (the loop and fused paths) it is plain ``torch.autograd.grad``, which builds
    a smaller graph than ``grad_and_value`` and costs less; under ``no_grad`` (evaluation,
    a checkpointed step's first pass) it still takes the gradient, kept out of any graph.
    Under ``vmap`` it is ``grad_and_value``.
    """
    if torch._C._functorch.peek_interpreter_stack() is None:
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = {k: p if graph and p.requires_grad else p.detach().requires_grad_()
                      for k, p in params.items()}
            summed, aux = total(leaves)
            grads = dict(zip(leaves, torch.autograd.grad(
                summed, tuple(leaves.values()), create_graph=create_graph and graph,
                materialize_grads=True)))
    else:
        grads, (_, aux) = grad_and_value(total, has_aux=True)(params)
    if not create_graph:
        grads = detached(grads)
    return grads, aux
