"""Second-order MAML: the project's batching paths against peer implementations, one process.

Run under a Python that has learn2learn 0.2.0 and higher 0.2.1 besides the project (the
throwaway venv of ``shared/peers/setup_venv.sh``, with ``pip install -e <checkout> --no-deps``
and ``pip install typer pyyaml rich pydantic``), from the checkout:

    /tmp/peers-venv/bin/python benchmarks/peers.py --setting sine --threads 1
    /tmp/peers-venv/bin/python benchmarks/peers.py --setting conv4s --k-query 1 --threads 1
    /tmp/peers-venv/bin/python benchmarks/peers.py --setting conv4s --k-query 15 --threads 1

Implementations (``--impls``; each owns its own copy of the same initial weights and its
own Adam):

* ``loop``: plain PyTorch, task by task, ``torch.autograd.grad(create_graph=True)``;
* ``l2l``: learn2learn ``MAML(model, lr).clone()`` + ``adapt()``;
* ``higher``: higher ``innerloop_ctx`` with a differentiable SGD;
* ``func``: a short ``torch.func`` reference, ``vmap`` over tasks of ``grad`` (batch norm
  from primitive ops, as ``F.batch_norm`` differentiates wrongly there at second order);
* ``proj_vmap``, ``proj_loop``, ``proj_fused`` (and, not by default, ``proj_compiled``,
  whose first call compiles): the project, exactly the trainer's
  meta-iteration: ``meta_update(algo, batch.to(device, dtype), path, progress, optimizer)`` on
  a :class:`TaskBatch` (zero_grad, inner loop, outer loss, backward, Adam step), with
  ``progress.logged`` False as on all iterations but the logged ones.

Every timed iteration draws one meta-batch and gives it to every implementation, in an
order rotated each iteration; the timed region is zero_grad + meta-gradient + Adam step.
A full ``gc.collect()`` runs before every timed call unless ``--no-gc`` (training never
forces one; after one, every implementation's next step is slower by a roughly fixed
~1.5 ms, which is most of a compiled sinusoid step).
Before timing, every implementation's meta-gradient is compared with the plain loop's in
float32 and float64 (``--check64``) on the same weights and data. Prints a markdown table of
medians and the speed of the project's fastest path against the fastest peer (the
``func`` reference is reported apart: it is not a library), plus the machine's load.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from common import add_threads_option, busy_seconds, rotated
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # xs, ys, xq, yq
Step = Callable[[Batch], None]  # one timed meta-iteration, Adam step included
PEERS = ("loop", "l2l", "higher")
PROJECT = ("proj_vmap", "proj_loop", "proj_fused", "proj_compiled")


# -- networks and data -------------------------------------------------------------------------
class SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def peer_model(setting: str, ways: int) -> nn.Sequential:
    """The peers' network, layer for layer the project's (MLP 1-40-40-1, Conv4)."""
    if setting == "sine":
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                             nn.Linear(40, 1))
    strided = setting == "conv4s"
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else 64, 64, 3, stride=2 if strided else 1, padding=1),
                   nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU()]
        if not strided:
            layers.append(nn.MaxPool2d(2))
    layers += [SpatialMean() if strided else nn.Flatten(), nn.Linear(64, ways)]
    return nn.Sequential(*layers)


def functional(setting: str, p: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:func:`peer_model`'s forward with parameters ``p`` (in ``parameters()`` order)."""
    if setting == "sine":
        x = F.relu(F.linear(x, p[0], p[1]))
        return F.linear(F.relu(F.linear(x, p[2], p[3])), p[4], p[5])
    strided = setting == "conv4s"
    for i in range(4):
        w, b, g, beta = p[4 * i:4 * i + 4]
        x = F.conv2d(x, w, b, stride=2 if strided else 1, padding=1)
        x = F.relu(F.batch_norm(x, None, None, g, beta, training=True))
        x = x if strided else F.max_pool2d(x, 2)
    return F.linear(x.mean(dim=(2, 3)) if strided else x.flatten(1), p[16], p[17])


def draw(args: argparse.Namespace, gen: torch.Generator, dtype: torch.dtype) -> Batch:
    """One meta-batch: sinusoids (amplitude 0.1-5, phase 0-pi, x in -5..5) or random images
    with labels ``0..ways-1``, each class ``k`` times in a row."""
    b = args.meta_batch

    def uniform(*shape: int, lo: float, hi: float) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype).uniform_(lo, hi, generator=gen)

    if args.setting == "sine":
        amp, phase = uniform(b, 1, 1, lo=0.1, hi=5.0), uniform(b, 1, 1, lo=0.0, hi=math.pi)
        xs = uniform(b, args.k_support, 1, lo=-5.0, hi=5.0)
        xq = uniform(b, args.k_query, 1, lo=-5.0, hi=5.0)
        return xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase)

    def part(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(b, args.ways * k, 1, 28, 28, generator=gen, dtype=dtype)
        return x, torch.arange(args.ways).repeat_interleave(k).expand(b, -1).contiguous()

    return (*part(args.k_support), *part(args.k_query))


def loss_fn(args: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.mse_loss if args.setting == "sine" else F.cross_entropy


# -- implementations: make(model, args, optimizer_for) -> step --------------------------------
OptimizerFor = Callable[[Any], torch.optim.Optimizer]  # parameters -> meta-optimizer


def make_loop(model: nn.Module, args: argparse.Namespace, optimizer_for: OptimizerFor,
              second_order: bool = True) -> Step:
    lossf, optimizer = loss_fn(args), optimizer_for(model.parameters())

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        xs, ys, xq, yq = batch
        init, total = list(model.parameters()), 0.0
        for t in range(xs.shape[0]):
            fast = init
            for _ in range(args.inner_steps):
                loss = lossf(functional(args.setting, fast, xs[t]), ys[t])
                grads = torch.autograd.grad(loss, fast, create_graph=second_order)
                fast = [w - args.inner_lr * g for w, g in zip(fast, grads)]
            total = total + lossf(functional(args.setting, fast, xq[t]), yq[t])
        (total / xs.shape[0]).backward()
        optimizer.step()
    return step


def make_l2l(model: nn.Module, args: argparse.Namespace, optimizer_for: OptimizerFor) -> Step:
    import learn2learn

    maml, lossf = learn2learn.algorithms.MAML(model, lr=args.inner_lr), loss_fn(args)
    optimizer = optimizer_for(model.parameters())

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        xs, ys, xq, yq = batch
        total = 0.0
        for t in range(xs.shape[0]):
            learner = maml.clone()
            for _ in range(args.inner_steps):
                learner.adapt(lossf(learner(xs[t]), ys[t]))
            total = total + lossf(learner(xq[t]), yq[t])
        (total / xs.shape[0]).backward()
        optimizer.step()
    return step


def make_higher(model: nn.Module, args: argparse.Namespace, optimizer_for: OptimizerFor
                ) -> Step:
    import higher

    inner, lossf = torch.optim.SGD(model.parameters(), lr=args.inner_lr), loss_fn(args)
    optimizer = optimizer_for(model.parameters())

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        xs, ys, xq, yq = batch
        total = 0.0
        for t in range(xs.shape[0]):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fm, opt):
                for _ in range(args.inner_steps):
                    opt.step(lossf(fm(xs[t]), ys[t]))
                total = total + lossf(fm(xq[t]), yq[t])
        (total / xs.shape[0]).backward()
        optimizer.step()
    return step


class PrimitiveBatchNorm(nn.Module):
    """Training-mode batch norm from primitive ops (exact under ``vmap(grad)``)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), correction=0, keepdim=True)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[:, None, None]


def make_func(model: nn.Module, args: argparse.Namespace, optimizer_for: OptimizerFor) -> Step:
    from torch.func import functional_call, grad, vmap

    arch = nn.Sequential(*(PrimitiveBatchNorm(m) if isinstance(m, nn.BatchNorm2d) else m
                           for m in model))  # shares model's parameters
    lossf, optimizer = loss_fn(args), optimizer_for(model.parameters())

    def task_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
                  ) -> torch.Tensor:
        return lossf(functional_call(arch, p, (x,)), y)

    def one(p: dict[str, torch.Tensor], xs: torch.Tensor, ys: torch.Tensor,
            xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        for _ in range(args.inner_steps):
            g = grad(task_loss)(p, xs, ys)
            p = {k: v - args.inner_lr * g[k] for k, v in p.items()}
        return task_loss(p, xq, yq)

    per_task = vmap(one, in_dims=(None, 0, 0, 0, 0))

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        per_task(dict(arch.named_parameters()), *batch).mean().backward()
        optimizer.step()
    return step


def make_project(model: nn.Module, args: argparse.Namespace, optimizer_for: OptimizerFor,
                 path: str) -> Step:
    """The project's MAML on its own network, which takes over ``model``'s parameter objects
    (same initial weights as the peers; the gradient check reads them), driven as the
    trainer drives one meta-iteration. ``optimizer_for`` is called on the algorithm's
    parameters (the trainer's is ``algo.configure_optimizer()``: Adam, ``meta_lr``)."""
    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.algorithms.maml import MAML
    from fewshot_cli.config import MAMLConfig
    from fewshot_cli.engine.meta_update import meta_update
    from fewshot_cli.models import MLP, Conv4
    from fewshot_cli.tasks.base import TaskBatch, TaskShape

    if args.setting == "sine":
        net: nn.Module = MLP(1, 1, [40, 40], "relu")
        shape, loss = TaskShape("regression", (1,), 1), "mse"
    else:
        net = Conv4((1, 28, 28), args.ways, filters=64, strided=args.setting == "conv4s")
        shape, loss = TaskShape("classification", (1, 28, 28), args.ways), "cross_entropy"
    names = [n for n, _ in net.named_parameters()]
    theirs = list(model.parameters())
    if [p.shape for p in net.parameters()] != [p.shape for p in theirs]:
        raise SystemExit("the project's network differs from the peers'")
    for name, p in zip(names, theirs):
        owner, _, attr = name.rpartition(".")
        setattr(net.get_submodule(owner), attr, p)
    cfg = MAMLConfig(loss=loss, inner_lr=args.inner_lr, inner_steps=args.inner_steps,
                     meta_lr=args.meta_lr, meta_batch=args.meta_batch)
    algo = MAML(net, cfg, shape)
    if path not in algo.available_paths:
        raise SystemExit(f"proj_{path}: not among this network's paths {algo.available_paths}")
    opt = optimizer_for(algo.parameters())
    dtype = next(net.parameters()).dtype
    iteration = [0]

    def step(batch: Batch) -> None:
        iteration[0] += 1
        progress = TrainingProgress(iteration[0], 10**9, logged=False)
        meta_update(algo, TaskBatch(*batch).to("cpu", dtype), path, progress,  # type: ignore[arg-type]
                    opt)
    return step


MAKERS: dict[str, Callable[..., Step]] = {
    "loop": make_loop, "l2l": make_l2l, "higher": make_higher, "func": make_func,
    **{f"proj_{p}": functools.partial(make_project, path=p)
       for p in ("vmap", "loop", "fused", "compiled")},
}


# -- the gradient check and the timing ------------------------------------------------------
def meta_gradient(name: str, base: nn.Module, args: argparse.Namespace, batch: Batch,
                  dtype: torch.dtype, second_order: bool = True) -> list[torch.Tensor]:
    """``name``'s meta-gradient on a copy of ``base``, through its own step with a
    learning rate 0 meta-optimizer (the step leaves the gradients in ``.grad``)."""
    model = copy.deepcopy(base).to(dtype)

    def frozen(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.0)

    if name == "loop":
        make_loop(model, args, frozen, second_order)(batch)
    else:
        MAKERS[name](model, args, frozen)(batch)
    return [p.grad.detach().clone() for p in model.parameters()]


def grad_check(base: nn.Module, args: argparse.Namespace, impls: list[str],
               dtype: torch.dtype, tol: float) -> dict[str, Any]:
    batch = draw(args, torch.Generator().manual_seed(args.seed + 1), dtype)
    ref = meta_gradient("loop", base, args, batch, dtype)
    scale = max(g.abs().max().item() for g in ref)

    def diff(grads: list[torch.Tensor]) -> float:
        return max((a - b).abs().max().item() for a, b in zip(grads, ref)) / scale

    first = diff(meta_gradient("loop", base, args, batch, dtype, second_order=False))
    out: dict[str, Any] = {"first_order_rel_diff": first, "tol": tol}
    for name in impls:
        d = diff(meta_gradient(name, base, args, batch, dtype))
        out[name] = {"rel_diff": d, "agrees": d < tol}
    return out


def adam(args: argparse.Namespace) -> OptimizerFor:
    return lambda params: torch.optim.Adam(params, lr=args.meta_lr)


def time_all(base: nn.Module, args: argparse.Namespace, impls: list[str]
             ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Milliseconds per meta-iteration of each implementation, and the machine's load."""
    steps: dict[str, Step] = {}
    for name in impls:
        steps[name] = MAKERS[name](copy.deepcopy(base), args, adam(args))
    gen, times = torch.Generator().manual_seed(args.seed), {n: [] for n in impls}
    busy0 = own0 = wall0 = 0.0
    if args.order == "blocks":
        return _time_blocks(steps, args, gen, times)
    for it in range(args.warmup + args.iters):
        if it == args.warmup:
            busy0, own0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
        batch = draw(args, gen, torch.float32)
        for name in rotated(impls, it):
            if args.gc:
                gc.collect()
            t0 = time.perf_counter()
            steps[name](batch)
            ms = (time.perf_counter() - t0) * 1e3
            if it >= args.warmup:
                times[name].append(ms)
        print(f"iteration {it}{' (warm-up)' if it < args.warmup else ''}", file=sys.stderr,
              flush=True)
    wall, own = time.perf_counter() - wall0, time.process_time() - own0
    load = {"this_process_cores": own / wall,
            "other_busy_cores": (busy_seconds() - busy0 - own) / wall,
            "loadavg_1min_end": os.getloadavg()[0]}
    return times, load


def _time_blocks(steps: dict[str, Step], args: argparse.Namespace, gen: torch.Generator,
                 times: dict[str, list[float]]
                 ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``--order blocks``: each implementation's iterations one after another (warm-up, then
    the timed ones) on the same meta-batches, still in this one process."""
    batches = [draw(args, gen, torch.float32) for _ in range(16)]
    busy0, own0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
    for name, step in steps.items():
        for it in range(args.warmup + args.iters):
            if args.gc:
                gc.collect()
            t0 = time.perf_counter()
            step(batches[it % len(batches)])
            if it >= args.warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
        print(f"{name} done", file=sys.stderr, flush=True)
    wall, own = time.perf_counter() - wall0, time.process_time() - own0
    return times, {"this_process_cores": own / wall,
                   "other_busy_cores": (busy_seconds() - busy0 - own) / wall,
                   "loadavg_1min_end": os.getloadavg()[0]}


def table(times: dict[str, list[float]], load: dict[str, float], args: argparse.Namespace,
          checks: dict[str, dict[str, Any]]) -> str:
    med = {n: statistics.median(v) for n, v in times.items()}

    def q(v: list[float], i: int) -> float:
        return statistics.quantiles(v, n=10, method="inclusive")[i] if len(v) > 1 else v[0]

    peers = [n for n in PEERS if n in med]
    fastest = min(peers, key=med.__getitem__) if peers else None
    rows = ["| implementation | median ms | p10 | p90 | speed vs fastest peer | "
            "float64 grad check (rel. diff) |", "|---|---:|---:|---:|---:|---|"]
    for n, m in med.items():
        speed = f"{med[fastest] / m:.2f}x" if fastest else "-"
        c = checks.get("float64", {}).get(n) or checks.get("float32", {}).get(n)
        check = "-" if c is None else f"{'ok' if c['agrees'] else 'DIFFERS'} ({c['rel_diff']:.1e})"
        rows.append(f"| {n} | {m:.1f} | {q(times[n], 0):.1f} | {q(times[n], 8):.1f} | "
                    f"{speed} | {check} |")
    proj = [n for n in PROJECT if n in med]
    lines = [f"{args.setting}, {args.inner_steps} inner step(s), meta-batch {args.meta_batch}, "
             f"k_support {args.k_support}, k_query {args.k_query}"
             f"{'' if args.setting == 'sine' else f' per class, {args.ways}-way'}, "
             f"threads {torch.get_num_threads()}, {args.iters} timed iterations, "
             f"torch {torch.__version__}", "", *rows, ""]
    if proj and fastest:
        best = min(proj, key=med.__getitem__)
        lines.append(f"project best path: {best} {med[best]:.1f} ms = "
                     f"{med[fastest] / med[best]:.2f}x the fastest peer ({fastest} "
                     f"{med[fastest]:.1f} ms)" + "".join(
                         f"; {med[p] / med[best]:.2f}x {p}" for p in ("loop", "l2l", "func")
                         if p in med and p != fastest))
    lines.append(f"load while timing: this process {load['this_process_cores']:.2f} cores, "
                 f"other processes {load['other_busy_cores']:.2f} busy cores, 1-min loadavg "
                 f"{load['loadavg_1min_end']:.2f} (of {os.cpu_count()} cores)")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=["sine", "conv4", "conv4s"], default="sine")
    p.add_argument("--impls", default="loop,l2l,higher,func,proj_vmap,proj_loop,proj_fused",
                   help=f"comma-separated, from {', '.join(MAKERS)}")
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--meta-batch", type=int, help="default 25 (sine) / 32 (conv4)")
    p.add_argument("--inner-lr", type=float, help="default 0.01 (sine) / 0.4 (conv4)")
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--k-support", type=int, help="per class; default 10 (sine) / 1 (conv4)")
    p.add_argument("--k-query", type=int, help="per class; default 10 (sine) / 15 (conv4)")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--iters", type=int, help="timed iterations; default 200 (sine) / 12")
    p.add_argument("--warmup", type=int, default=3)
    add_threads_option(p, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check64", dest="check64", action="store_false",
                   help="skip the float64 gradient check (float32 is always run)")
    p.add_argument("--json", help="also write medians, samples, checks and load here")
    p.add_argument("--order", choices=["alternate", "blocks"], default="alternate",
                   help="alternate: every implementation once per iteration, order rotated "
                        "(default); blocks: each implementation's iterations in a row")
    p.add_argument("--no-gc", dest="gc", action="store_false",
                   help="do not run a full gc.collect() before every timed call (training "
                        "never does; after one, a ~1 ms sinusoid step costs ~1.4 ms more)")
    args = p.parse_args(argv)
    sine = args.setting == "sine"
    for key, s, c in [("meta_batch", 25, 32), ("inner_lr", 0.01, 0.4), ("k_support", 10, 1),
                      ("k_query", 10, 15), ("iters", 200, 12)]:
        if getattr(args, key) is None:
            setattr(args, key, s if sine else c)
    args.impls = [s for s in args.impls.split(",") if s]
    if unknown := set(args.impls) - set(MAKERS):
        p.error(f"unknown implementations {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="gym")
    torch.manual_seed(args.seed)
    base = peer_model(args.setting, args.ways)
    impls = list(args.impls)
    if "proj_fused" in impls:  # only where the project's network has forward_tasks
        from fewshot_cli.models import MLP, Conv4
        net = MLP(1, 1, [40]) if args.setting == "sine" else Conv4((1, 28, 28), 5)
        if not hasattr(net, "forward_tasks"):
            impls.remove("proj_fused")
    checks = {"float32": grad_check(base, args, impls, torch.float32, 1e-4)}
    if args.check64:
        checks["float64"] = grad_check(base, args, impls, torch.float64, 1e-10)
    times, load = time_all(base, args, impls)
    print(table(times, load, args, checks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "load": load,
                       "checks": checks, "ms": times,
                       "median_ms": {n: statistics.median(v) for n, v in times.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
