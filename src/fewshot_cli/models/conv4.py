"""The four-block convolutional network of few-shot classification
(Vinyals et al. 2016; Finn et al. 2017, sec. 5.2).

Each block is 3x3 conv (F filters) -> batch norm on the current batch's
statistics -> ReLU -> 2x2 max-pool. ``strided=True`` gives the variant of
the MAML reference code for Omniglot: stride-2 convolutions, no pooling, and
a spatial mean before the linear head.

Besides the ordinary ``forward``, :meth:`Conv4.forward_tasks` runs B copies of
the network with B different parameter sets in one pass (task b's filters
become group b of a grouped convolution), for meta-learning without
``torch.func.vmap``. Both come in two halves, the body (:meth:`Conv4.features`,
:meth:`Conv4.features_tasks`) and the linear head (:meth:`Conv4.apply_head`,
:meth:`Conv4.apply_head_tasks`), for algorithms that adapt the head alone.

For MAML++ (Antoniou, Edwards & Storkey 2019), :meth:`Conv4.per_step_norm` gives
every batch norm layer one set of weights and biases and/or of running statistics per
inner step; :meth:`Conv4.norm_step` hands step s's set to ``functional_call`` (a batch
norm layer given running statistics normalises with them instead of the batch's), and
``return_stats`` reports the batch statistics the running ones are updated from. Until
``per_step_norm`` is called the network is a plain conv4 (no per-step sets).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .stacking import stacked


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


def running_stat_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                      weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-channel batch norm of ``x [N, C, H, W]`` with given statistics ``mean``, ``var``
    ``[C]`` (``F.batch_norm(..., training=False)``, from primitive ops)."""
    scale = weight * torch.rsqrt(var + eps)
    return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def batch_statistics(x: torch.Tensor) -> torch.Tensor:
    """``[2, C]``: the per-channel mean and unbiased variance of ``x [N, C, H, W]``, detached
    (what ``F.batch_norm`` folds into running statistics)."""
    x = x.detach()
    return torch.stack([x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), correction=1)])


class BatchStatNorm(nn.Module):
    """Batch norm that always normalises with the current batch's statistics.

    Written from primitive tensor ops rather than ``F.batch_norm``: under
    ``torch.func.vmap(grad(...))`` the fused kernel's batching rule treats the
    saved mean and variance as constants, which silently gives a wrong
    second-order meta-gradient. Primitive ops differentiate exactly at any order.

    ``running_mean`` and ``running_var`` are empty (None) buffers: given through
    ``functional_call``, they replace the batch's statistics. :meth:`per_step` adds
    per-step sets (MAML++).
    """

    def __init__(self, channels: int, eps: float = 1e-5, scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.channels = channels
        if scale:
            self.weight = nn.Parameter(torch.ones(channels))
        else:  # no learned scale: a constant 1 (the reference MAML's batch norm)
            self.register_buffer("weight", torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", None)
        self.register_buffer("running_var", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("per-step batch norm weights: pass a step's weight and bias "
                               "(Conv4.norm_step) to functional_call")
        if (self.running_mean is None and torch._C._functorch.peek_interpreter_stack() is None
                and x.numel() > x.shape[1]):
            # no torch.func transform: the native kernel, exact at any order under autograd
            # and a few nodes where the primitive ops make dozens (loop path: -10..15%); it
            # refuses one value per channel, which the formula maps to 0 (as a batch would)
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True,
                                eps=self.eps)
        if self.running_mean is None:
            return batch_stat_norm(x, self.weight, self.bias, self.eps)
        return running_stat_norm(x, self.running_mean, self.running_var, self.weight,
                                 self.bias, self.eps)

    def per_step(self, steps: int, weights: bool, statistics: bool) -> list[str]:
        """Make ``steps`` sets: of weights and biases (parameters ``step_weight``,
        ``step_bias`` ``[steps, C]``, each row starting at the current values; ``weight``
        and ``bias`` then become empty and must be given) and/or of running statistics
        (buffers ``step_mean``, ``step_var``, starting at 0 and 1). Returns the names of the
        new parameters."""
        if weights and not isinstance(self.weight, nn.Parameter):
            raise ValueError("per-step batch norm weights need a batch norm scale (model."
                             "batch_norm_scale: true)")
        if weights:
            self.step_weight = nn.Parameter(self.weight.detach().expand(steps, -1).clone())
            self.step_bias = nn.Parameter(self.bias.detach().expand(steps, -1).clone())
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if statistics:
            like = self.step_weight if weights else self.weight
            self.register_buffer("step_mean", like.new_zeros(steps, self.channels))
            self.register_buffer("step_var", like.new_ones(steps, self.channels))
        return ["step_weight", "step_bias"] if weights else []

    def step_tensors(self, step: int) -> dict[str, torch.Tensor]:
        """Set ``step``'s tensors by the names ``forward`` reads them under."""
        out: dict[str, torch.Tensor] = {}
        if hasattr(self, "step_weight"):
            out.update(weight=self.step_weight[step], bias=self.step_bias[step])
        if hasattr(self, "step_mean"):
            out.update(running_mean=self.step_mean[step], running_var=self.step_var[step])
        return out


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, strided: bool, batch_norm: bool,
                 scale: bool = True) -> None:
        super().__init__()
        self.strided = strided
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2 if strided else 1, padding=1)
        self.norm = BatchStatNorm(c_out, scale=scale) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor, stats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The block's output; ``stats``, when given, receives the batch statistics of the
        convolution's output (:func:`batch_statistics`)."""
        x = self.conv(x)
        if stats is not None:
            stats.append(batch_statistics(x))
        x = F.relu(self.norm(x))
        return x if self.strided else F.max_pool2d(x, 2)


class Conv4(nn.Module):
    """Conv4 classifier for ``input_shape = (C, H, W)`` and ``ways`` classes."""

    def __init__(self, input_shape: tuple[int, int, int], ways: int, filters: int = 64,
                 strided: bool = False, batch_norm: bool = True,
                 batch_norm_scale: bool = True) -> None:
        super().__init__()
        c, h, w = input_shape
        self.strided = strided
        self.blocks = nn.ModuleList(
            ConvBlock(c if i == 0 else filters, filters, strided, batch_norm, batch_norm_scale)
            for i in range(4)
        )
        for _ in range(4):
            h, w = ((h + 1) // 2, (w + 1) // 2) if strided else (h // 2, w // 2)
        if min(h, w) < 1:
            raise ValueError(f"image size {input_shape[1:]} is too small for conv4")
        features = filters if strided else filters * h * w
        self.head = nn.Linear(features, ways)

    def reference_init(self) -> None:
        """The reference MAML's initialisation (cbfinn/maml, maml.py
        ``construct_conv_weights``): Xavier-uniform convolution weights, zero biases, and a
        head drawn from N(0, 1) after strided blocks (its Omniglot network) or Xavier-uniform
        after max-pooled ones (its mini-ImageNet network); batch norm starts at scale 1,
        offset 0 either way."""
        with torch.no_grad():
            for block in self.blocks:
                nn.init.xavier_uniform_(block.conv.weight)
                nn.init.zeros_(block.conv.bias)
            if self.strided:
                nn.init.normal_(self.head.weight, 0.0, 1.0)
            else:
                nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    #: The parameters of the linear head; every other parameter belongs to the body.
    head_names: tuple[str, ...] = ("head.weight", "head.bias")

    def features(self, x: torch.Tensor, return_hidden: bool = False,
                 stats: list[torch.Tensor] | None = None):
        """The body's output, the head's input ``[N, F]``: the last block's feature map
        averaged over space (strided) or flattened; with ``return_hidden`` also the four
        block outputs. ``forward(x) == apply_head(features(x))``. ``stats``, when given,
        receives each block's batch statistics (:meth:`forward`'s ``return_stats``)."""
        hidden = []
        for block in self.blocks:
            x = block(x, stats)
            hidden.append(x)
        x = x.mean(dim=(2, 3)) if self.strided else x.flatten(1)
        return (x, hidden) if return_hidden else x

    def apply_head(self, features: torch.Tensor) -> torch.Tensor:
        """The linear head on body features ``[N, F]``."""
        return self.head(features)

    def forward(self, x: torch.Tensor, return_hidden: bool = False,
                return_stats: bool = False):
        """Logits ``[N, ways]``; with ``return_hidden`` also the four block outputs, with
        ``return_stats`` also ``[4, 2, F]``: each block's batch mean and unbiased variance
        before its batch norm (detached; what per-step running statistics learn from)."""
        stats: list[torch.Tensor] | None = [] if return_stats else None
        features, hidden = self.features(x, return_hidden=True, stats=stats)
        out = self.apply_head(features)
        if stats is not None:
            return (out, hidden, torch.stack(stats)) if return_hidden else (out, torch.stack(stats))
        return (out, hidden) if return_hidden else out

    # -- per-step batch norm (MAML++) ------------------------------------------------------
    def norms(self) -> list[BatchStatNorm]:
        """The four batch norm layers (none without batch norm)."""
        return [b.norm for b in self.blocks if isinstance(b.norm, BatchStatNorm)]

    def per_step_norm(self, steps: int, weights: bool, statistics: bool) -> list[str]:
        """Give every batch norm layer ``steps`` sets of weights and biases (``weights``)
        and/or of running statistics (``statistics``), MAML++'s BNWB and BNRS (Antoniou et
        al. 2019); see :meth:`BatchStatNorm.per_step`. Returns the names of the new
        parameters (the per-step sets, which ``forward`` reads only through
        :meth:`norm_step`)."""
        if len(self.norms()) != len(self.blocks):
            raise ValueError("per-step batch norm needs a conv4 with batch_norm: true")
        return [f"blocks.{i}.norm.{n}" for i, norm in enumerate(self.norms())
                for n in norm.per_step(steps, weights, statistics)]

    def norm_step(self, step: int) -> dict[str, torch.Tensor]:
        """Step ``step``'s batch norm sets, by the names ``functional_call`` takes them under
        (``blocks.i.norm.weight``, ``.bias``, ``.running_mean``, ``.running_var``); empty
        without :meth:`per_step_norm`."""
        return {f"blocks.{i}.norm.{k}": v for i, norm in enumerate(self.norms())
                for k, v in norm.step_tensors(step).items()}

    @torch.no_grad()
    def update_step_statistics(self, stats: torch.Tensor, keep: torch.Tensor) -> None:
        """Per-step running statistics <- ``keep * running + (1 - keep) * stats``, with
        ``stats [steps, 4, 2, F]`` (means and variances, as :meth:`forward` reports them)
        and ``keep [steps]``."""
        k = keep.to(stats.dtype).view(-1, 1)
        for i, norm in enumerate(self.norms()):
            norm.step_mean.mul_(k).add_((1 - k) * stats[:, i, 0])
            norm.step_var.mul_(k).add_((1 - k) * stats[:, i, 1])

    def forward_tasks(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                      return_hidden: bool = False, return_stats: bool = False):
        """Outputs of B networks at once: task b's parameters on task b's inputs.

        ``params`` maps every name of ``named_parameters()`` to a ``[B, *shape]``
        stack of per-task values (a tensor of the plain ``shape`` is shared by all
        tasks); ``x`` is ``[B, n, C, H, W]``. Returns ``[B, n, ways]`` (and with
        ``return_hidden`` the four block outputs as ``[B, n, F, H', W']``, with
        ``return_stats`` the batch statistics ``[B, 4, 2, F]``), equal to stacking
        ``functional_call(self, params_b, (x_b,))`` over b. Batch norm running statistics
        in ``params`` (``blocks.i.norm.running_mean``, ``.running_var``) are used as in
        :class:`BatchStatNorm`.

        The tasks are laid side by side in the channel dimension,
        ``[n, B*C, H, W]``: each convolution is one grouped convolution with
        ``groups=B``, and per-channel batch statistics of that layout are exactly
        per-task statistics. Batch norm uses the native ``F.batch_norm`` kernel,
        which differentiates exactly at any order under plain autograd and
        ``torch.func.grad`` but not under ``torch.func.vmap`` (see
        :class:`BatchStatNorm`): do not vmap this method.

        On a CPU, tasks run in groups whose first block output takes at most
        :attr:`task_group_bytes` (results concatenated; the same values).
        """
        b = x.shape[0]
        group = self._task_group(x)
        if group < b:
            parts = [self.forward_tasks({k: v if v.shape == self._shape(k) else v[s:s + group]
                                         for k, v in params.items()},
                                        x[s:s + group], return_hidden, return_stats)
                     for s in range(0, b, group)]
            if not (return_hidden or return_stats):
                return torch.cat(parts)
            return tuple(torch.cat(p) if isinstance(p[0], torch.Tensor)
                         else [torch.cat(h) for h in zip(*p)] for p in zip(*parts))
        stats: list[torch.Tensor] | None = [] if return_stats else None
        if not return_hidden:
            out = self.apply_head_tasks(params, self.features_tasks(params, x, stats=stats))
            return out if stats is None else (out, torch.stack(stats, dim=1))
        features, hidden = self.features_tasks(params, x, return_hidden=True, stats=stats)
        out = self.apply_head_tasks(params, features)
        return (out, hidden) if stats is None else (out, hidden, torch.stack(stats, dim=1))

    #: The most bytes the first block's output of one group of tasks takes in
    #: :meth:`forward_tasks`. glibc maps every block over 32 MiB afresh and unmaps it when
    #: freed, so the activations of all tasks at once would page-fault back in on every
    #: pass; groups below that size avoid it (one query per class is one group). CPU only:
    #: on a GPU the groups would only multiply the kernel launches. Measurements:
    #: benchmarks/RESULTS.md.
    task_group_bytes: int = 8 * 2**20

    def _task_group(self, x: torch.Tensor) -> int:
        """Tasks per group for inputs ``x [B, n, C, H, W]`` (see :attr:`task_group_bytes`)."""
        if x.dim() != 5:
            return x.shape[0] if x.dim() else 1  # features_tasks reports the shape
        if x.device.type != "cpu":
            return x.shape[0]  # a GPU pays per launch, not per page fault: one group
        conv = self.blocks[0].conv
        h, w = ((s - 1) // conv.stride[0] + 1 for s in x.shape[3:])
        per_task = x.shape[1] * conv.out_channels * h * w * x.element_size()
        return max(1, self.task_group_bytes // max(per_task, 1))

    def _shape(self, name: str) -> torch.Size:
        """The per-task shape of tensor ``name`` of ``params`` (a batch norm layer's weight,
        bias and running statistics are ``[F]``, given or not)."""
        module, _, attr = name.rpartition(".")
        norm = self.get_submodule(module)
        if isinstance(norm, BatchStatNorm) and attr in ("weight", "bias", "running_mean",
                                                         "running_var"):
            return torch.Size([norm.channels])
        return self.get_parameter(name).shape

    def _stacked(self, params: Mapping[str, torch.Tensor], name: str, b: int) -> torch.Tensor:
        """``params[name]`` as a ``[B, *shape]`` stack (:func:`.stacking.stacked`); a batch
        norm without a learned scale reads its constant one."""
        if name not in params and name.endswith(".norm.weight"):
            constant = self.get_submodule(name.rpartition(".")[0]).weight
            if not isinstance(constant, nn.Parameter):
                return constant.expand(b, -1)
        return stacked(params, name, self._shape(name), b)

    def features_tasks(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                       return_hidden: bool = False, stats: list[torch.Tensor] | None = None):
        """:meth:`features` of B networks at once (see :meth:`forward_tasks`): ``[B, n, F]``
        (and with ``return_hidden`` the four block outputs); the head's parameters are
        not read. ``stats``, when given, receives each block's batch statistics
        ``[B, 2, F]``."""
        if x.dim() != 5:
            raise ValueError(f"forward_tasks expects inputs [B, n, C, H, W], got {tuple(x.shape)}")
        b, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, b * x.shape[2], *x.shape[3:])
        hidden = []
        for i, block in enumerate(self.blocks):
            w = self._stacked(params, f"blocks.{i}.conv.weight", b)
            bias = self._stacked(params, f"blocks.{i}.conv.bias", b)
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1),
                         stride=block.conv.stride, padding=block.conv.padding, groups=b)
            if stats is not None:
                stats.append(batch_statistics(h).view(2, b, -1).transpose(0, 1))
            if isinstance(block.norm, BatchStatNorm):
                given = f"blocks.{i}.norm.running_mean" in params
                mean, var = ((self._stacked(params, f"blocks.{i}.norm.running_{k}", b).reshape(-1)
                              for k in ("mean", "var")) if given else (None, None))
                h = F.batch_norm(h, mean, var,
                                 self._stacked(params, f"blocks.{i}.norm.weight", b).reshape(-1),
                                 self._stacked(params, f"blocks.{i}.norm.bias", b).reshape(-1),
                                 training=not given, momentum=0.0, eps=block.norm.eps)
            h = F.relu(h)
            if not self.strided:
                h = F.max_pool2d(h, 2)
            if return_hidden:
                hidden.append(h.view(n, b, -1, *h.shape[2:]).transpose(0, 1))
        features = (h.mean(dim=(2, 3)) if self.strided else h).reshape(n, b, -1).transpose(0, 1)
        return (features, hidden) if return_hidden else features

    def apply_head_tasks(self, params: Mapping[str, torch.Tensor], features: torch.Tensor
                         ) -> torch.Tensor:
        """:meth:`apply_head` of B networks at once: ``[B, n, F]`` features to
        ``[B, n, ways]``, task b's head on task b's features."""
        b = features.shape[0]
        weight = self._stacked(params, "head.weight", b)
        bias = self._stacked(params, "head.bias", b)
        return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))
