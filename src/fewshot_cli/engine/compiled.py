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

Evaluation (validation, ``fewshot eval``) of a run on this path can be compiled too where the
algorithm says it pays (``compiled_evaluation``; :func:`evaluate_tasks`): each inner step
of a pass of ``eval_tasks_at_once`` tasks, with the query metrics after it and without an
outer gradient, is one call of a compiled function (one step, not the whole adaptation:
the graph, and its compilation, is a step's size); the last pass of a chunk is padded to
the others' size (its extra tasks dropped), so that one graph serves every pass. Where
that cannot be compiled the evaluation runs on the eager ``vmap`` path, with a warning.
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
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from ..algorithms.base import Evaluation
from ..algorithms.batching import Context, Query, Support, split
from ..algorithms.params import Params, detached, stack_params
from ..errors import FewshotError
from ..tasks.base import TaskBatch
from .stopping import Interrupted

# A CUDA build of torch compiling for the CPU of a machine without a GPU logs a warning
# about the CUDA runtime on every compile; it says nothing about this run.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

#: The eager path the compiled function is built from, and the fallback.
INNER_PATH = "vmap"


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
        return self.algo.meta_loss(TaskBatch(sx, sy, qx, qy, unlabelled_x=ux), INNER_PATH,
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
        self.eval_eager = False


_STATES: weakref.WeakKeyDictionary[nn.Module, _State] = weakref.WeakKeyDictionary()


def _key(batch: tuple[torch.Tensor | None, ...], logged: bool) -> tuple[Any, ...]:
    """What may rightly need its own graph: shapes, dtypes, devices, ``logged`` and the
    thread count (inductor's CPU kernels are generated for it)."""
    shapes = tuple(None if t is None else (tuple(t.shape), t.dtype, str(t.device))
                   for t in batch)
    return (*shapes, logged, torch.get_num_threads())


def _unused(algo: Any, batch: TaskBatch, progress: Any) -> set[str]:
    """Names of the meta-parameters the eager meta-loss does not reach (checked once)."""
    loss, _ = algo.meta_loss(batch, INNER_PATH, progress)
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
    caller then runs :data:`INNER_PATH`). Gradients of unreached parameters are absent.

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
        raise CompileError(f"train.vectorize: compiled: torch.compile failed ({_first_line(e)}); "
                           f"choose another with --set train.vectorize=PATH") from None
    except RuntimeError as e:
        if not seen or "fail_on_recompile" not in str(e):
            raise
        state.eager = True
        warnings.warn(f"train.vectorize: compiled: the {type(algo).__name__} objective changes "
                      f"from iteration to iteration (it would recompile every time); using "
                      f"the eager {INNER_PATH} path", RuntimeWarning, stacklevel=2)
        return None
    state.keys.add(key)
    if graphs:  # out of the graphs' memory before the next replay reuses it
        grads, loss, metrics = tree_map(torch.clone, (grads, loss, metrics))
    return ({n.removeprefix("algo."): g for n, g in grads.items()}, loss, metrics)


class _Stepper(nn.Module):
    """One inner step of every task of a pass on :data:`INNER_PATH`, and the query metrics
    after it, as a module's ``forward`` (the algorithm's weights its parameters)."""

    def __init__(self, algo: nn.Module) -> None:
        super().__init__()
        self.algo = algo

    def forward(self, params: Params, state: Any, support: Support, query: Query, step: int,
                query_chunks: int) -> Any:
        algo, ctx = self.algo, Context(training=False)

        def one(p: Params, s: Any, sup: Support, q: Query) -> Any:
            new, s, metrics = algo.inner_step(p, s, sup, step, ctx)
            return new, s, metrics, algo.query_metrics(new, q, ctx, query_chunks)

        return vmap(one, in_dims=_in_dims((params, state, support, query)),
                    out_dims=(0, _in_dims(state), 0, 0))(params, state, support, query)


def _step(module: _Stepper, meta: dict[str, torch.Tensor], *args: Any) -> Any:
    return functional_call(module, meta, args)


@functools.cache
def _compiled_evaluation() -> Callable[..., Any]:
    """The compiled inner step of an evaluation pass. One step, not the whole adaptation: the
    graph is a step's size, so it compiles in a step's time (the whole adaptation unrolled,
    12 steps of the Omniglot meta-LSTM, took 3.5 minutes). ``dynamic=None``: an algorithm
    whose step reads its index (support batches taken in turn) gets the index as a
    symbolic integer after its second value instead of one graph per step."""
    return torch.compile(_step, fullgraph=True, dynamic=None)


def _in_dims(tree: Any) -> Any:
    return tree_map(lambda t: None if t is None else 0, tree)


def _adapt_pass(algo: Any, compiled: Callable[..., Any], tensors: tuple[torch.Tensor | None, ...],
                steps: int, query_chunks: int, probe: torch.Tensor | None) -> Evaluation:
    """``algo.evaluate_tasks`` of one pass (the same results as the eager vmap path), each
    inner step from ``compiled``; the step before adaptation and the probe are eager."""
    sx, sy, qx, qy, ux = tensors
    support, query = split(TaskBatch(sx, sy, qx, qy, unlabelled_x=ux))
    module = _Stepper(algo)
    meta = {n: p.detach() for n, p in module.named_parameters()}
    ctx = Context(training=False)
    # every task's own copy of the initial parameters: the step's inputs then have the same
    # layout at every step (an expanded view would be a second graph)
    params = {k: v.clone() for k, v in stack_params(detached(algo.params()), len(sx)).items()}
    first = algo.init_state({k: v[0] for k, v in params.items()},
                            tree_map(lambda t: None if t is None else t[0], support), ctx)
    state = vmap(lambda p, sup: algo.init_state(p, sup, ctx), in_dims=_in_dims((params, support)),
                 out_dims=_in_dims(first))(params, support)
    curve = [vmap(lambda p, q: algo.query_metrics(p, q, ctx, query_chunks))(params, query)]
    per_step: list[dict[str, torch.Tensor]] = []
    for step in range(steps):
        params, state, metrics, seen = compiled(module, meta, params, state, support, query,
                                                step, query_chunks)
        per_step.append(metrics)
        curve.append(seen)
    inner = {k: torch.stack([m[k] for m in per_step], dim=-1) for k in
             (per_step[0] if per_step else {})}
    probed = None
    if probe is not None:
        first = stack_params(detached(algo.params()), len(sx))
        probed = torch.stack([vmap(lambda p: algo.forward(p, probe, ctx))(p)
                              for p in (first, params)], dim=-3)
    return Evaluation(torch.stack(curve, dim=-2), inner, probed)


def _first_line(e: BaseException) -> str:
    """What a compiler error says first (at most 200 characters), or its type."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _interrupted(e: BaseException) -> Interrupted | None:
    """A stop signal that reached the compiler and came back wrapped in its errors."""
    while e is not None:
        if isinstance(e, Interrupted):
            return e
        e = (getattr(e, "inner_exception", None) or e.__cause__  # type: ignore[assignment]
             or e.__context__)
    return None


def _pass_tensors(part: TaskBatch, size: int) -> tuple[torch.Tensor | None, ...]:
    """A pass's tensors, its last task repeated up to ``size`` tasks, each a fresh copy: a
    slice of a larger chunk has a storage offset the compiled function's guards would see as
    new every pass (a recompilation each, then dynamo's recompilation limit and the eager
    path)."""
    n = len(part)
    index = torch.cat([torch.arange(n), torch.full((size - n,), n - 1)]).to(
        part.support_x.device)
    return tuple(None if t is None else t.index_select(0, index) for t in (
        part.support_x, part.support_y, part.query_x, part.query_y, part.unlabelled_x))


def evaluate_tasks(algo: Any, batch: TaskBatch, steps: int, vectorize: str,
                   query_chunks: int = 1, probe: torch.Tensor | None = None) -> Evaluation:
    """``algo.evaluate_tasks`` on ``vectorize``; on ``compiled``, each pass of at most
    :meth:`eval_tasks_at_once` tasks from one compiled function (module docstring), the
    same results as the eager ``vmap`` path."""
    state = _STATES.setdefault(algo, _State())
    if vectorize != "compiled" or state.eval_eager or not algo.compiled_evaluation:
        path = INNER_PATH if vectorize == "compiled" else vectorize
        return algo.evaluate_tasks(batch, steps, path, query_chunks, probe)
    size = min(algo.eval_tasks_at_once() or len(batch), len(batch))
    compiled = _compiled_evaluation()
    parts = []
    for part in batch.split(size):
        n = len(part)
        tensors = _pass_tensors(part, size)
        try:
            with torch.no_grad():
                curve, inner, probed = _adapt_pass(algo, compiled, tensors, steps,
                                                   query_chunks, probe)
        except Exception as e:  # the compiler's errors are many; a stop is not one of them
            stop = _interrupted(e)
            if stop is not None:
                raise stop from None
            from torch._dynamo.exc import BackendCompilerFailed, Unsupported
            if not isinstance(e, (BackendCompilerFailed, Unsupported)):
                raise
            state.eval_eager = True
            warnings.warn(f"evaluation: compiled: torch.compile failed ({_first_line(e)}); "
                          f"evaluating on the eager {INNER_PATH} path", RuntimeWarning,
                          stacklevel=2)
            return algo.evaluate_tasks(batch, steps, INNER_PATH, query_chunks, probe)
        parts.append(Evaluation(curve[:n], {k: v[:n] for k, v in inner.items()},
                                None if probed is None else probed[:n]))
    return Evaluation.join(parts)
