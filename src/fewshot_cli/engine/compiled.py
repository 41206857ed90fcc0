"""The ``compiled`` batching path: the whole meta-gradient as one compiled function.

Plain double backward cannot run through a ``torch.compile`` region, so the
meta-gradient is built functionally instead: :func:`torch.func.grad_and_value`
of the algorithm's :meth:`~fewshot_cli.algorithms.Algorithm.meta_loss` on the
``vmap`` path (inner loop and outer loss), taken with respect to every
meta-parameter of the algorithm through :func:`torch.func.functional_call`, and
that whole function is compiled once. The compiled code has no autograd graph
and no per-operator dispatch left, which is what a small network such as the
sinusoid MLP spends its time on. On a GPU, ``train.cuda_graphs`` also replays it as
CUDA graphs (``mode="reduce-overhead"``), for meta-batches small enough that kernel
launches dominate.

``torch.compile`` keeps one compiled graph per guard set: one per batch shape, dtype,
device, ``TrainingProgress.logged`` and intra-op thread count; a copy of the algorithm (the
engine times paths on copies) reuses them. An objective that reads the iteration number (MAML++'s
multi-step loss or derivative-order annealing) would need a new graph every
iteration; the first call that would recompile for a key already compiled switches
that algorithm to the eager ``vmap`` path instead (same mathematics), with a warning.

An algorithm may instead compile its own pieces (``compiled_inner``: the LSTM meta-learner
compiles its coordinate-wise update): on this path it then runs that eager path with
``Context.compiled`` set, in training and evaluation alike, and this module is not used.
Evaluation (validation, ``fewshot eval``) of a run whose meta-gradient was compiled whole
runs on the eager ``vmap`` path (:meth:`~fewshot_cli.algorithms.Algorithm.eager_path`).
"""

from __future__ import annotations

import functools
import logging
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value
from torch.utils._pytree import tree_map

from ..algorithms.batching import WHOLE_GRAPH_PATH
from ..errors import FewshotError, first_line, raise_stop
from ..tasks.base import TaskBatch

# A CUDA build of torch compiling for the CPU of a machine without a GPU logs a warning
# about the CUDA runtime on every compile; it says nothing about this run.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

class CompileError(FewshotError):
    """The meta-gradient could not be compiled here (no C++ compiler, an unsupported
    operation...): choose another ``train.vectorize`` path."""


class _Objective(nn.Module):
    """``meta_loss`` of ``algo`` as a module's ``forward``, for ``functional_call``."""

    def __init__(self, algo: nn.Module) -> None:
        super().__init__()
        self.algo = algo

    def forward(self, batch: tuple[torch.Tensor | None, ...], progress: Any) -> Any:
        sx, sy, qx, qy, ux = batch
        return self.algo.meta_loss(TaskBatch(sx, sy, qx, qy, unlabelled_x=ux), WHOLE_GRAPH_PATH,
                                   progress)


def _objective(module: _Objective, params: dict[str, torch.Tensor],
               batch: tuple[torch.Tensor | None, ...], progress: Any) -> Any:
    """Mean outer loss and metrics of ``module.algo`` with meta-parameters ``params``."""
    return functional_call(module, params, (batch, progress))


_gradient = grad_and_value(_objective, argnums=1, has_aux=True)


@functools.cache
def _compiled(graphs: bool) -> Callable[..., Any]:
    """The compiled meta-gradient, made when first asked (``torch.compile`` imports dynamo,
    which costs a command that never compiles a second or two of start-up). With ``graphs``
    it is replayed as CUDA graphs (``train.cuda_graphs``): one graph launch per
    meta-iteration instead of one launch per kernel. Its outputs live in the graphs' own
    memory, which the next replay overwrites, so :func:`meta_gradient` copies them out."""
    if graphs:
        return torch.compile(_gradient, mode="reduce-overhead", fullgraph=True, dynamic=False)
    return torch.compile(_gradient, fullgraph=True, dynamic=False)


def uses_graphs(algo: Any, device: torch.device) -> bool:
    """Whether the meta-gradient of ``algo`` on ``device`` is replayed as CUDA graphs:
    ``train.cuda_graphs`` (the algorithm's ``settings.cuda_graphs``) on a CUDA device."""
    return algo.settings.cuda_graphs and device.type == "cuda"


class _State:
    """Per algorithm instance: the keys compiled for it, the meta-parameters that get no
    gradient (their ``.grad`` stays None, as after ``backward``), and whether it fell back
    to the eager path."""

    def __init__(self) -> None:
        self.keys: set[tuple[Any, ...]] = set()
        self.unused: set[str] | None = None
        self.eager = False


_STATES: weakref.WeakKeyDictionary[nn.Module, _State] = weakref.WeakKeyDictionary()


def _key(batch: tuple[torch.Tensor | None, ...], logged: bool) -> tuple[Any, ...]:
    """What may rightly need its own graph: shapes, dtypes, devices, ``logged`` and the
    thread count (inductor's CPU kernels are generated for it)."""
    shapes = tuple(None if t is None else (tuple(t.shape), t.dtype, str(t.device))
                   for t in batch)
    return (*shapes, logged, torch.get_num_threads())


def _unused(algo: Any, batch: TaskBatch, progress: Any) -> set[str]:
    """Names of the meta-parameters the eager meta-loss does not reach (checked once)."""
    loss, _ = algo.meta_loss(batch, WHOLE_GRAPH_PATH, progress)
    names, params = zip(*[(n, p) for n, p in algo.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n for n, g in zip(names, grads) if g is None}


def uses_eager(algo: Any) -> bool:
    """Whether ``algo`` fell back to the eager path (its objective changes per iteration)."""
    state = _STATES.get(algo)
    return state is not None and state.eager


def meta_gradient(algo: Any, batch: TaskBatch, progress: Any
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]] | None:
    """``(gradients by parameter name, mean outer loss, metrics)`` of ``algo`` on ``batch``,
    from the compiled function; None once ``algo`` has fallen back to the eager path (the
    caller then runs :data:`WHOLE_GRAPH_PATH`). Gradients of unreached parameters are absent.

    Raises :class:`CompileError` where compilation itself fails.
    """
    state = _STATES.setdefault(algo, _State())
    if state.eager:
        return None
    tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y,
               batch.unlabelled_x)
    key = _key(tensors, bool(getattr(progress, "logged", True)))
    if state.unused is None:
        state.unused = _unused(algo, batch, progress)
    module = _Objective(algo)
    params = {n: p.detach() for n, p in module.named_parameters()
              if p.requires_grad and n.removeprefix("algo.") not in state.unused}
    seen = key in state.keys
    graphs = uses_graphs(algo, batch.support_x.device)
    compiled = _compiled(graphs)
    if graphs:  # each meta-iteration is a new step of the graphs (no backward follows)
        torch.compiler.cudagraph_mark_step_begin()
    from torch._dynamo.exc import BackendCompilerFailed, Unsupported

    try:
        with torch.compiler.set_stance("fail_on_recompile" if seen else "default"):
            grads, (loss, metrics) = compiled(module, params, tensors, progress)
    except (BackendCompilerFailed, Unsupported) as e:
        raise_stop(e)  # a stop signal that arrived while it compiled
        raise CompileError(f"train.vectorize: compiled: torch.compile failed ({first_line(e)}); "
                           f"choose another with --set train.vectorize=PATH") from None
    except RuntimeError as e:
        if not seen or "fail_on_recompile" not in str(e):
            raise
        state.eager = True
        warnings.warn(f"train.vectorize: compiled: the {type(algo).__name__} objective changes "
                      f"from iteration to iteration (it would recompile every time); using "
                      f"the eager {WHOLE_GRAPH_PATH} path", RuntimeWarning, stacklevel=2)
        return None
    state.keys.add(key)
    if graphs:  # out of the graphs' memory before the next replay reuses it
        grads, loss, metrics = tree_map(torch.clone, (grads, loss, metrics))
    return ({n.removeprefix("algo."): g for n, g in grads.items()}, loss, metrics)
