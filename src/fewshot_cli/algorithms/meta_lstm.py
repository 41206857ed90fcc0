"""The LSTM meta-learner: a learned, coordinate-wise update rule.

Ravi & Larochelle (2017), "Optimization as a Model for Few-Shot Learning", ICLR.
The cell-state update of an LSTM, ``c_t = f_t * c_{t-1} + i_t * c~_t``, is gradient
descent when the cell state ``c_t`` holds the learner's parameters, ``c~_t = -grad_t``,
``f_t = 1`` and ``i_t = alpha``. The meta-learner learns both gates (paper, eq. 2-3):

    i_t = sigmoid(W_I . [h_t, theta_{t-1}, i_{t-1}] + b_I)    a per-coordinate learning rate
    f_t = sigmoid(W_F . [h_t, theta_{t-1}, f_{t-1}] + b_F)    a per-coordinate shrinkage
    theta_t = f_t * theta_{t-1} - i_t * grad_t

It is applied to every coordinate of the learner independently, with one set of weights
shared by all of them (paper, sec. 3.3), in two layers: a standard LSTM (hidden size
``hidden``, 20 in the paper) reads the preprocessed loss and gradient of the coordinate
and gives ``h_t``; the cell above computes the gates. The loss and gradient are
preprocessed as in Andrychowicz et al. (2016), "Learning to learn by gradient descent by
gradient descent", appendix A (:func:`preprocess`).

- ``c_0`` is the learner's initial parameters (``self.model``'s), meta-learned with the
  meta-learner; the engine's ``params()`` hands them to :meth:`Algorithm.adapt`.
- The learner's gradient and loss are inputs computed at detached parameters: no second
  derivatives (paper, sec. 3.2, "we ignore [these] gradients"). The meta-gradient flows
  through the cell recursion and the gates only.
- ``inner_steps`` (T) updates, update ``t`` on the ``t``-th batch of ``inner_batch``
  support examples taken in turn (null: the whole support set), so T updates are
  ``T * inner_batch / support size`` epochs. The reference code's 1-shot setting, 12
  epochs of batch 5 on 5 examples, is ``inner_steps: 12, inner_batch: 5``; its 5-shot
  one, 8 epochs of batch 25 on 25 examples, is ``inner_steps: 8, inner_batch: 25``.
- Gate biases start in ``forget_bias_init`` and ``input_bias_init`` (large forget, small
  input: close to plain gradient descent with a small step), every other meta-learner
  weight in U(-0.01, 0.01), as the reference code does.
- Meta-gradients are clipped to norm ``grad_clip`` (0.25 in the reference configs).
- On the ``compiled`` path the update of every coordinate (:func:`meta_learner_update`) is
  compiled as a graph of one update, and the fused path runs around it, in training and
  evaluation alike (:func:`compiled_update`). On the fused path itself, evaluation (no
  graph) lays the first layer's gates out in contiguous blocks
  (:meth:`CoordinateLSTM.gate_major_cell`).
- ``inner_grad_clip`` (off by default, not in the paper) clips each element of the
  learner's gradient to [-c, c] before it is preprocessed and applied. Classification
  losses have bounded gradients; a regression loss does not, and a learned input gate
  near 1 on a large gradient sends the learner's weights to infinity (it is on in
  ``configs/sine-meta-lstm.yaml``, whose comment says what happened without it).
- Batch norm in the learner (paper, sec. 3.4): in meta-training it normalises with each
  batch's own statistics. At meta-test (validation, ``fewshot eval``) the query set is
  normalised with running averages of the statistics of the episode's support batches,
  collected during its updates (from 0 and 1, at the parameters each update starts from,
  ``bn_momentum`` per update) and erased between episodes, as the reference code does
  (``learner.reset()``, then the learner in 'evaluate' mode for the test set);
  ``eval_batch_norm: batch`` uses the query batch's own statistics instead.

Two choices where the reference code (github.com/twitter-research/meta-learning-lstm)
differs from the paper's equations: the gates read the previous gate *values*
``i_{t-1}, f_{t-1}`` as the paper writes (the code feeds their pre-sigmoid values), and
the gradient is that of the mean support loss (the code divides it once more by the batch
size).

Metrics, per inner step: ``inner_loss`` (support loss before the update), ``input_gate``
and ``forget_gate`` (means over all coordinates); in ``fewshot eval`` also (validation,
which reads only the query curve, leaves them out), per layer ``L`` of the learner,
``input_gate/L``, ``forget_gate/L`` (means over its coordinates) and ``input_gate_sd/L``,
``forget_gate_sd/L`` (their spread, the standard deviation over the coordinates). After
adaptation: ``inner_loss_after`` (logged iterations), ``accuracy`` (classification) and
``meta_grad_norm`` (before clipping).

``fewshot eval`` also scores plain SGD from the same learned initial parameters, at the
best of ``sgd_reference_lrs`` on validation tasks (:meth:`MetaLSTM.references`).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch
from torch import nn

from ..config import MetaLSTMConfig
from ..errors import first_line, raise_stop
from ..tasks.base import TaskBatch, TaskShape, TaskSource
from .base import Algorithm, Evaluation
from .batching import Context, Support, Vectorize, support_batch
from .params import FlatLayout, Metrics, Params, detached
from .settings import Settings

#: Every meta-learner weight but the gate biases starts in U(-INIT_SCALE, INIT_SCALE)
#: (reference code, model/lstm/meta-learner-lstm.lua).
INIT_SCALE = 0.01
#: What one evaluation pass's LSTM tensors may take (:meth:`MetaLSTM.eval_tasks_at_once`).
EVAL_STATE_BYTES = 256 * 2**20
#: Seed of the validation tasks the SGD reference's learning rate is chosen on.
REFERENCE_SEED = 20170302


def preprocess(x: torch.Tensor, p: float = 10.0, dim: int = -1) -> torch.Tensor:
    """Andrychowicz et al. (2016), appendix A: ``x -> (log|x| / p, sign x)`` where
    ``|x| >= e^-p``, else ``(-1, e^p x)``; the pair is stacked along a new dimension
    ``dim`` (``[..., 2]`` by default). Both branches give ``(-1, sign x)`` at the
    boundary."""
    small = math.exp(-p)
    big = x.abs() >= small
    log = torch.log(x.abs().clamp_min(small)) / p
    first = torch.where(big, log, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([first, second], dim=dim)


class CoordinateLSTM(nn.Module):
    """A standard LSTM cell (gates in ``torch.nn.LSTMCell``'s order i, f, g, o; one
    bias), applied to every coordinate with the same weights. Its input is ``[shared, x]``:
    ``shared [..., k]`` the same for every coordinate (the preprocessed loss), ``x [...,
    n, inputs - k]`` each coordinate's own (the preprocessed gradient).

    Speed: the shared inputs' product is computed once and folded into the bias, so the
    per-coordinate product reads ``[x, h]`` only (``inputs - k + hidden`` columns, no
    broadcast copy of the loss into every coordinate); the bias added and one sigmoid
    taken over all four gate blocks in place on the product's output (a sigmoid on a
    contiguous tensor is an order of magnitude faster than on a strided slice; in place,
    no two more tensors of the gates' size are allocated and written), the cell input by
    the identity ``tanh(x) = 2 sigmoid(2x) - 1``."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(4 * hidden, inputs + hidden))
        self.bias = nn.Parameter(torch.empty(4 * hidden))
        nn.init.uniform_(self.weight, -INIT_SCALE, INIT_SCALE)
        nn.init.uniform_(self.bias, -INIT_SCALE, INIT_SCALE)

    def forward(self, shared: torch.Tensor, x: torch.Tensor, h: torch.Tensor,
                c: torch.Tensor, gate_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``h, c`` after one step. ``gate_major`` (fused evaluation, no graph): see
        :meth:`gate_major_cell`."""
        hidden = h.shape[-1]
        k = shared.shape[-1]
        scale = torch.ones_like(self.bias)
        scale[2 * hidden:3 * hidden] = 2.0
        weight = self.weight * scale.unsqueeze(-1)
        bias = shared @ weight[:, :k].T + self.bias * scale  # [..., 4 hidden]
        if gate_major and not torch.is_grad_enabled():
            return self.gate_major_cell(x, h, c, weight[:, k:], bias)
        z = torch.cat([x, h], dim=-1) @ weight[:, k:].T
        i, f, g, o = z.add_(bias.unsqueeze(-2)).sigmoid_().chunk(4, dim=-1)
        c = f * c + i * (2 * g - 1)
        return o * torch.tanh(c), c

    @staticmethod
    def gate_major_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                        weight: torch.Tensor, bias: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step without a graph, its gates laid out gate-major: each task's products,
        one per gate, written into contiguous blocks ``[tasks, 4, n, hidden]`` (the bias a
        last input of 1, so no pass adds it), so the cell's elementwise operators read
        contiguous memory (on a strided slice of ``[..., n, 4 hidden]`` they run several
        times slower), and the cell computed in place. Eager evaluation on the fused path
        only: a compiler fuses the cell into one kernel that runs slower on this layout, and
        ``vmap`` cannot write a product into a given tensor."""
        lead, (n, hidden) = h.shape[:-2], h.shape[-2:]
        one = x.new_ones(()).expand(*lead, n, 1)
        xh = torch.cat([x, h, one], dim=-1).reshape(-1, n, x.shape[-1] + hidden + 1)
        w = torch.cat([weight.expand(*lead, *weight.shape), bias.unsqueeze(-1)], dim=-1)
        w = w.reshape(-1, 4, hidden, xh.shape[-1]).transpose(-1, -2)  # [tasks, 4, k, hidden]
        z = x.new_empty(xh.shape[0], 4, n, hidden)
        for t in range(xh.shape[0]):
            torch.bmm(xh[t].expand(4, *xh.shape[1:]), w[t], out=z[t])
        i, f, g, o = (gate.view(c.shape) for gate in z.sigmoid_().unbind(1))
        c = torch.addcmul((f * c).sub_(i), i, g, value=2)
        return torch.tanh(c).mul_(o), c


class MetaLearnerCell(nn.Module):
    """The gates of the paper's meta-learner cell, from ``[h_t, theta_{t-1}, gate_{t-1}]``
    of every coordinate (``h [..., n, hidden]``, the others ``[..., n]``): weights
    ``[hidden + 2]`` and a scalar bias per gate."""

    def __init__(self, hidden: int, forget_bias: tuple[float, float],
                 input_bias: tuple[float, float]) -> None:
        super().__init__()
        self.weight_forget = nn.Parameter(torch.empty(hidden + 2))
        self.weight_input = nn.Parameter(torch.empty(hidden + 2))
        self.bias_forget = nn.Parameter(torch.empty(()))
        self.bias_input = nn.Parameter(torch.empty(()))
        nn.init.uniform_(self.weight_forget, -INIT_SCALE, INIT_SCALE)
        nn.init.uniform_(self.weight_input, -INIT_SCALE, INIT_SCALE)
        nn.init.uniform_(self.bias_forget, *forget_bias)
        nn.init.uniform_(self.bias_input, *input_bias)

    def forward(self, h: torch.Tensor, theta: torch.Tensor, f_prev: torch.Tensor,
                i_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The forget and input gates ``[..., n]``. Eagerly, both gates' products with ``h``
        are one ``[hidden, 2]`` product: one pass over ``h`` forward and one write of its
        gradient backward, where a matrix-vector product per gate takes two of each (the
        training step's gates take a third to 40% less time). A compiler fuses the
        matrix-vector products into its kernel and runs slower with the one product, so
        compiled the gates take one each."""
        hidden = h.shape[-1]
        wf, wi = self.weight_forget, self.weight_input
        if torch.compiler.is_compiling():
            hf, hi = h @ wf[:hidden], h @ wi[:hidden]
        else:
            hf, hi = (h @ torch.stack([wf[:hidden], wi[:hidden]], dim=-1)).unbind(-1)
        f = hf + theta * wf[hidden] + f_prev * wf[hidden + 1] + self.bias_forget
        i = hi + theta * wi[hidden] + i_prev * wi[hidden + 1] + self.bias_input
        return torch.sigmoid(f), torch.sigmoid(i)


def meta_learner_update(lstm: CoordinateLSTM, cell: MetaLearnerCell, p: float,
                        loss: torch.Tensor, g: torch.Tensor, theta: torch.Tensor,
                        h: torch.Tensor, c: torch.Tensor, f_prev: torch.Tensor,
                        i_prev: torch.Tensor, gate_major: bool = False
                        ) -> tuple[torch.Tensor, ...]:
    """One update of every coordinate from the learner's loss and gradient: the new
    coordinates ``f * theta - i * g``, the LSTM's ``h`` and ``c``, and the gates ``f, i``
    (``gate_major``: :meth:`CoordinateLSTM.gate_major_cell`)."""
    h, c = lstm(preprocess(loss, p), preprocess(g, p), h, c, gate_major)
    f, i = cell(h, theta, f_prev, i_prev)
    return f * theta - i * g, h, c, f, i


def compiled_update(algo: MetaLSTM) -> Any:
    """:func:`meta_learner_update` compiled (the ``compiled`` path): the coordinate LSTM's
    elementwise work fused, forward and backward, in a graph of one update (its own, small
    compilation; one per batch shape and for training and evaluation). Where it cannot be
    compiled (no C++ compiler...), the eager function, with a warning, from then on."""
    if algo.__dict__.get("_eager_update"):
        return meta_learner_update

    def run(*args: Any) -> tuple[torch.Tensor, ...]:
        from torch._dynamo.exc import BackendCompilerFailed, Unsupported

        try:
            return _compiled_update()(*args)
        except (BackendCompilerFailed, Unsupported) as e:
            raise_stop(e)  # a stop signal that arrived while it compiled
            algo.__dict__["_eager_update"] = True
            warnings.warn(f"train.vectorize: compiled: the meta-learner's update could not be "
                          f"compiled ({first_line(e)}); running it eagerly", RuntimeWarning,
                          stacklevel=2)
            return meta_learner_update(*args)

    return run


@functools.cache
def _compiled_update() -> Any:
    return torch.compile(meta_learner_update, fullgraph=True, dynamic=False)


class MetaLSTM(Algorithm):
    """The LSTM meta-learner of Ravi & Larochelle (2017); see the module docstring."""

    kind = "meta_lstm"
    paths = ("vmap", "loop", "fused", "compiled")
    # compiled: the fused path with the meta-learner's update compiled (a graph of one update,
    # compiled in seconds), training and evaluation alike
    compiled_inner = "fused"
    cfg: MetaLSTMConfig

    @classmethod
    def learns_step_sizes(cls, cfg: MetaLSTMConfig) -> bool:  # type: ignore[override]
        return True

    def __init__(self, model: nn.Module, cfg: MetaLSTMConfig, task: TaskSource,
                 settings: Settings | None = None) -> None:
        super().__init__(model, cfg, task, settings)
        self.task_shape = TaskShape(task.problem, tuple(task.input_shape), task.output_dim)
        self.lstm = CoordinateLSTM(4, cfg.hidden)
        self.cell = MetaLearnerCell(cfg.hidden, cfg.forget_bias_init, cfg.input_bias_init)
        self.layout = FlatLayout(model)
        # the learner's layers (modules owning parameters) -> their slices of the flat vector
        self.layers: dict[str, list[tuple[int, int]]] = {}
        start = 0
        for name, size in zip(self.layout.names, self.layout.sizes):
            self.layers.setdefault(name.rpartition(".")[0] or name, []).append(
                (start, start + size))
            start += size

    # -- the learner's parameters as one vector of coordinates -----------------------------
    def flat(self, params: Params, ctx: Context) -> torch.Tensor:
        """``[n]`` (``[B, n]`` fused): the coordinates the meta-learner updates."""
        return self.layout.flat(params, ctx.fused)

    def unflat(self, theta: torch.Tensor) -> Params:
        return self.layout.unflat(theta)

    def meta_learner_parameters(self) -> int:
        """How many weights the meta-learner has besides the learner's initial parameters."""
        return sum(p.numel() for m in (self.lstm, self.cell) for p in m.parameters())

    # -- one task's adaptation ----------------------------------------------------------------
    def init_state(self, params: Params, support: Support, ctx: Context) -> Any:
        """Zero LSTM hidden and cell states ``[..., n, hidden]`` and previous gates; at
        meta-test with running batch norm also its running statistics ``[..., 4, 2, C]``
        (means 0, variances 1: erased for each episode)."""
        theta = self.flat(params, ctx).detach()
        state = theta.new_zeros(*theta.shape, self.cfg.hidden)
        gate = theta.new_zeros(theta.shape)
        running = None
        if self.running_norm(ctx):
            lead = theta.shape[:-1]
            channels = self.model.norms()[0].channels
            running = theta.new_zeros(*lead, len(self.model.norms()), 2, channels)
            running[..., 1, :] = 1.0
        # four tensors, not two each given twice: a compiled update would see the aliases
        # as a graph of its own for the first update
        return state, state.clone(), gate, gate.clone(), running

    def running_norm(self, ctx: Context) -> bool:
        """Whether the query set is normalised with the support batches' running statistics
        (meta-test, ``eval_batch_norm: running``, a learner with batch norm)."""
        norms = getattr(self.model, "norms", None)
        return (not ctx.training and self.cfg.eval_batch_norm == "running"
                and norms is not None and bool(norms()))

    def learner_gradient(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                         ctx: Context) -> tuple[Params, torch.Tensor]:
        """The support gradient and loss at ``params``, as constants (no second order)."""
        return self.task_gradient(detached(params), x, y, False, ctx)

    def support_statistics(self, params: Params, x: torch.Tensor, ctx: Context
                           ) -> torch.Tensor:
        """The batch statistics ``[..., 4, 2, C]`` of a support batch at ``params``."""
        if ctx.fused:
            return self.model.forward_tasks(params, x, return_stats=True)[1]
        return torch.func.functional_call(self.model, params, (x,),
                                          {"return_stats": True})[1]

    def update_running(self, running: torch.Tensor, params: Params, x: torch.Tensor,
                       new: Params, ctx: Context) -> torch.Tensor:
        """The running statistics after support batch ``x`` at ``params`` (``bn_momentum``,
        torch7's convention), also put into the updated parameters ``new``."""
        m = self.cfg.bn_momentum
        running = (1 - m) * running + m * self.support_statistics(detached(params), x, ctx)
        new.update(self.running_params(running))
        return running

    def running_params(self, running: torch.Tensor) -> Params:
        """Running statistics by the names batch norm reads them under."""
        norms = {id(m) for m in self.model.norms()}
        names = [n for n, m in self.model.named_modules() if id(m) in norms]
        out: Params = {}
        for j, name in enumerate(names):
            out[f"{name}.running_mean"] = running[..., j, 0, :]
            out[f"{name}.running_var"] = running[..., j, 1, :]
        return out

    def inner_step(self, params: Params, state: Any, support: Support, step: int,
                   ctx: Context) -> tuple[Params, Any, Metrics]:
        h, c, f_prev, i_prev, running = state
        params = {k: params[k] for k in self.layout.names}  # without the running statistics
        x, y = support_batch(support, step, self.cfg.inner_batch, ctx.fused)
        grads, loss = self.learner_gradient(params, x, y, ctx)
        g = self.flat(grads, ctx)
        if self.cfg.inner_grad_clip is not None:  # regression: unbounded gradients
            g = g.clamp(-self.cfg.inner_grad_clip, self.cfg.inner_grad_clip)
        theta = self.flat(params, ctx)
        if ctx.compiled:
            update: Any = compiled_update(self)
        else:  # eager; in fused evaluation the gates gate-major
            update = functools.partial(meta_learner_update,
                                       gate_major=ctx.fused and not ctx.training)
        theta, h, c, f, i = update(self.lstm, self.cell, self.cfg.preprocess_p, loss, g, theta,
                                   h, c, f_prev, i_prev)
        new = self.unflat(theta)
        if running is not None:
            running = self.update_running(running, params, x, new, ctx)
        metrics = {"inner_loss": loss, "input_gate": i.detach().mean(-1),
                   "forget_gate": f.detach().mean(-1)}
        if ctx.diagnostics:
            metrics.update(self.gate_statistics(i.detach(), f.detach()))
        return new, (h, c, f, i, running), metrics

    def gate_statistics(self, i: torch.Tensor, f: torch.Tensor) -> Metrics:
        """Per learner layer: the mean and the standard deviation of each gate over the
        layer's coordinates."""
        out: Metrics = {}
        for layer, spans in self.layers.items():
            for name, gate in (("input_gate", i), ("forget_gate", f)):
                values = torch.cat([gate[..., a:b] for a, b in spans], dim=-1)
                out[f"{name}/{layer}"] = values.mean(-1)
                out[f"{name}_sd/{layer}"] = values.std(-1, correction=0)
        return out

    # -- the meta-update ------------------------------------------------------------------------
    def meta_grad_clip(self) -> float:
        """``grad_clip``: the norm over all meta-parameters (the learner's initial parameters
        included) the reference code clips the meta-gradient to; its norm is logged either
        way."""
        return math.inf if self.cfg.grad_clip is None else self.cfg.grad_clip

    # -- evaluation: no graph through the meta-learner ----------------------------------------
    def eval_tasks_at_once(self) -> int:
        """As many tasks as keep one step's LSTM tensors (about eight ``[tasks, coordinates,
        hidden]`` floats: h, c and the four gate blocks among them) within
        :data:`EVAL_STATE_BYTES`: a conv4 learner's ~112,000 coordinates take a few tasks at
        a time, a sinusoid MLP's hundreds. Larger passes only move more memory per step."""
        per_task = 8 * self.layout.size * self.cfg.hidden * 4
        return max(1, EVAL_STATE_BYTES // per_task)

    def evaluate_tasks(self, batch: TaskBatch, steps: int, vectorize: Vectorize,
                       query_chunks: int = 1, probe: torch.Tensor | None = None, *,
                       diagnostics: bool = True) -> Evaluation:
        with torch.no_grad():  # the learner's gradients are taken all the same
            return super().evaluate_tasks(batch, steps, vectorize, query_chunks, probe,
                                          diagnostics=diagnostics)

    def adapt_one(self, batch: TaskBatch, index: int, steps: int) -> Params:
        with torch.no_grad():
            return super().adapt_one(batch, index, steps)

    def references(self, source: TaskSource, steps: int, vectorize: Vectorize, chunk: int
                   ) -> list[tuple[Algorithm, dict[str, Any]]]:
        """Plain SGD from the meta-learned initial parameters, on the same support batches,
        at the best of ``sgd_reference_lrs``: the lowest mean query loss (classification:
        the highest mean accuracy) after ``steps`` updates on ``sgd_reference_tasks``
        validation tasks (training tasks where the source has no validation split); a
        learning rate under which any task diverges is never chosen."""
        lrs = list(self.cfg.sgd_reference_lrs)
        if not lrs:
            return []
        split = "val" if "val" in getattr(source, "splits", ("val",)) else "train"
        weight = next(self.model.parameters())
        gen = torch.Generator().manual_seed(REFERENCE_SEED)
        batches, left = [], self.cfg.sgd_reference_tasks
        while left > 0:
            n = min(left, chunk)
            batches.append(source.sample(n, gen, split).to(weight.device, weight.dtype))
            left -= n
        if vectorize not in self.available_paths:
            vectorize = self.available_paths[0]
        scores: dict[float, float] = {}
        for lr in lrs:
            ref = SGDReference(self, lr)
            final = torch.cat([ref.adaptation_curve(b, steps, vectorize)[:, -1].cpu()
                               for b in batches]).double()
            if not bool(torch.isfinite(final[:, 0]).all()):
                scores[lr] = math.nan
            else:
                scores[lr] = final[:, 1 if self.classification else 0].mean().item()
        usable = {lr: s for lr, s in scores.items() if math.isfinite(s)}
        if not usable:
            return []
        best = (max if self.classification else min)(usable, key=usable.__getitem__)
        statistic = "accuracy" if self.classification else "loss"
        return [(SGDReference(self, best), {
            "name": f"SGD from the learned init, lr {best:g}",
            "algorithm": "sgd",
            "reference": {
                "rule": "plain SGD from the meta-learned initial parameters, on the same "
                        "support batches as the meta-LSTM",
                "lr": best, "selected_by": f"mean query {statistic} after {steps} steps",
                "selected_on": f"{self.cfg.sgd_reference_tasks} {split} tasks "
                               f"(seed {REFERENCE_SEED})",
                "tried": [{"lr": lr, statistic: None if math.isnan(s) else s}
                          for lr, s in scores.items()],
            },
        })]


class SGDReference(Algorithm):
    """Plain SGD at a fixed learning rate from a meta-LSTM's learned initial parameters
    (the same network, shared), each step on the support batch the meta-LSTM would use.
    For evaluation only; not a registered algorithm."""

    kind = "sgd_reference"
    paths = ("vmap", "loop", "fused")

    def __init__(self, learner: MetaLSTM, lr: float) -> None:
        super().__init__(learner.model, learner.cfg, learner.task_shape, learner.settings)
        self.inner_lr = lr
        self.inner_batch = learner.cfg.inner_batch
        self.__dict__["learner"] = learner  # not a submodule: it shares the network

    def init_state(self, params: Params, support: Support, ctx: Context) -> Any:
        """The meta-LSTM's running batch norm statistics at meta-test (None otherwise), so
        the reference is scored under the same protocol."""
        return self.learner.init_state(params, support, ctx)[4]

    def inner_step(self, params: Params, state: Any, support: Support, step: int,
                   ctx: Context) -> tuple[Params, Any, Metrics]:
        learner: MetaLSTM = self.learner
        params = {k: params[k] for k in learner.layout.names}
        x, y = support_batch(support, step, self.inner_batch, ctx.fused)
        new, loss = self.sgd_step(params, x, y, self.inner_lr, False, ctx)
        if state is not None:
            state = learner.update_running(state, params, x, new, ctx)
        return new, state, {"inner_loss": loss}
