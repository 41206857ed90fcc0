"""Running a per-task function over a meta-batch, and what it is given.

A per-task function is written for **one task**: it receives the parameters, the task's
:class:`Support` (and :class:`Query`, for objectives) and a :class:`Context`. The engine
maps it over the tasks of a meta-batch along one of three ways (``train.vectorize``):
``vmap`` (``torch.func.vmap``, parameters shared), ``loop`` (task by task) or ``fused``
(called once with ``[B, ...]`` stacked parameters; the network's ``forward_tasks`` runs
every task at once and losses come back per task, ``[B]``). ``compiled`` compiles the
whole meta-gradient of the ``vmap`` way and maps everything else as ``vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch.func import vmap
from torch.utils import _pytree as pytree

from ..tasks.base import TaskBatch
from .params import stack_params

Vectorize = Literal["vmap", "loop", "fused", "compiled"]
#: Every value of ``train.vectorize`` but ``auto``.
VECTORIZE: tuple[str, ...] = get_args(Vectorize)
#: The eager path ``compiled`` builds the whole compiled meta-gradient from (and falls back
#: to, and evaluates on), for an algorithm without pieces of its own to compile.
WHOLE_GRAPH_PATH: Vectorize = "vmap"


class Support(NamedTuple):
    """All that adaptation may see of a task: ``x [S, ...]``, ``y [S, ...]`` and,
    where the task has them, unlabelled inputs ``unlabelled [U, ...]`` (a
    demonstration). With a leading task dimension on the fused path."""

    x: torch.Tensor
    y: torch.Tensor
    unlabelled: torch.Tensor | None = None


class Query(NamedTuple):
    """A task's query set, for the outer objective and evaluation only."""

    x: torch.Tensor
    y: torch.Tensor


def split(batch: TaskBatch) -> tuple[Support, Query]:
    """The two halves of a meta-batch; only the first ever reaches adaptation."""
    return (Support(batch.support_x, batch.support_y, batch.unlabelled_x),
            Query(batch.query_x, batch.query_y))


def support_batch(support: Support, step: int, size: int | None, fused: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The support examples of inner step ``step``: the ``step``-th batch of ``size``
    examples, the batches taken in turn (the last of an epoch may be smaller); all when
    ``size`` is None or covers the set."""
    dim = 1 if fused else 0
    n = support.x.shape[dim]
    if size is None or size >= n:
        return support.x, support.y
    start = (step % math.ceil(n / size)) * size
    stop = min(start + size, n)
    return support.x.narrow(dim, start, stop - start), support.y.narrow(dim, start, stop - start)


@dataclass(frozen=True)
class TrainingProgress:
    """Where meta-training is: ``iteration`` (1-based) of ``total``. ``logged``: this
    iteration's metrics end a log window, so an algorithm may add metrics that cost
    extra work (they are averaged over the iterations that report them)."""

    iteration: int
    total: int
    logged: bool = True

    @property
    def fraction(self) -> float:
        return self.iteration / max(self.total, 1)


@dataclass(frozen=True)
class Context:
    """How a per-task function is being run.

    ``training``: inside meta-training (the outer loss will be differentiated);
    ``fused``: parameters are ``[B, ...]`` stacks and inputs ``[B, n, ...]``;
    ``progress``: the training progress (None at evaluation);
    ``compiled``: on the ``compiled`` path of an algorithm that compiles its own pieces
    (:attr:`Algorithm.compiled_inner`);
    ``diagnostics``: at evaluation, whether the adaptation's costlier per-step metrics are
    wanted (e.g. the meta-LSTM's gates per layer: ``fewshot eval``; not validation, which
    reads only the query curve).
    """

    training: bool
    fused: bool = False
    progress: TrainingProgress | None = None
    compiled: bool = False
    diagnostics: bool = False


def join_batches(parts: list[torch.Tensor], ctx: Context) -> torch.Tensor:
    """Outputs of one task's (fused: every task's) inputs passed in several batches,
    back as one."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1 if ctx.fused else 0)


def _in_dims(tree: Any) -> Any:
    return pytree.tree_map(lambda t: None if t is None else 0, tree)


def map_tasks(fn: Callable[..., Any], params: Any, *per_task: Any, vectorize: Vectorize,
              ctx: Context) -> Any:
    """``fn(params, *task_parts, ctx)`` for every task of a meta-batch.

    ``per_task`` are pytrees (e.g. :class:`Support`) of ``[B, ...]`` tensors. Every way
    returns the same pytree of ``[B, ...]`` results (module docstring). ``vectorize`` is an
    eager path (``compiled`` is resolved by :meth:`Algorithm.eager_path` first).
    """
    first = next(t for t in pytree.tree_leaves(per_task[0]) if t is not None)
    n = first.shape[0]
    if vectorize == "fused":
        return fn(stack_params(params, n), *per_task,
                  replace(ctx, fused=True))
    if vectorize == "vmap":
        return vmap(lambda p, *parts: fn(p, *parts, ctx),
                    in_dims=(None, *(_in_dims(t) for t in per_task)))(params, *per_task)
    leaves, spec = pytree.tree_flatten(per_task)  # each [B, ...] split once, not per task
    split_leaves = [[None] * n if t is None else t.unbind(0) for t in leaves]
    outs = [fn(params, *pytree.tree_unflatten([s[i] for s in split_leaves], spec), ctx)
            for i in range(n)]
    return pytree.tree_map(lambda *xs: torch.stack(xs), *outs)
