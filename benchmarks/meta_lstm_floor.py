"""The floor of one LSTM meta-learner training episode on this CPU, against its time.

One episode is one task's meta-update: T coordinate-wise LSTM updates of the learner's
~112,000 parameters and the backward pass through all of them (Ravi & Larochelle 2017).
Two counts bound it from below:

* **arithmetic**: its floating-point operations (``torch.utils.flop_counter``: the matrix
  products of the LSTM over all coordinates and the learner's convolutions, forward and
  backward) at the rate one thread reaches on a large square ``sgemm``;
* **memory**: the bytes that must cross memory: per update and coordinate the state the
  recursion carries (the LSTM's hidden and cell state, the learner's parameter, both gates
  and the gradient: ``2 * hidden + 4`` floats), read and written in the forward pass
  (2x) and read, with the gradients of the outputs, and written as gradients of the inputs
  in the backward pass (3x): ``5 * T * n * (2 * hidden + 4) * 4`` bytes, at the bandwidth
  one thread measures copying a tensor far larger than the caches.

The floor is the larger of the two times. The script also counts the bytes every
operator of the current implementation reads and writes (views excluded: what an unfused,
operator-by-operator execution must move), which bounds what that execution can reach
without fusing operators, and times the first LSTM layer's matrix products alone at the
shapes they have (a product with 22 inputs per coordinate, the gradient's preprocessed
pair and the hidden state, runs far below the square ``sgemm`` rate the arithmetic floor
assumes). Random images of the config's shape (no data set needed).

    python benchmarks/meta_lstm_floor.py --threads 1 [--config omniglot-5w1s-meta-lstm]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import common
from meta_lstm_eval import batch_of, build

#: Operators that move no data (views and metadata).
VIEWS = {"view", "_unsafe_view", "reshape", "expand", "t", "transpose", "permute", "slice",
         "select", "unsqueeze", "squeeze", "detach", "alias", "as_strided", "split",
         "split_with_sizes", "chunk", "unbind", "lift_fresh", "_to_copy_view", "unflatten",
         "flatten", "narrow"}


def traffic(fn: Any) -> int:
    """Bytes read and written by every non-view operator ``fn()`` dispatches."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__.rstrip("_") not in VIEWS:
                for t in tree_leaves((args, kwargs, out)):
                    if isinstance(t, torch.Tensor):
                        Count.total += t.numel() * t.element_size()
            return out

    with Count():
        fn()
    return Count.total


def best(fn: Any, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def products_at_their_shapes(n: int, k: int, m: int, repeat: int) -> dict[str, float]:
    """Seconds of the first LSTM layer's three matrix products of one update (forward,
    and the two of its backward pass) at the shapes they have: coordinates first (the
    layout of ``CoordinateLSTM``: ``[n, k] @ [k, m]``, ``[m, n] @ [n, k]``,
    ``[n, m] @ [m, k]``) and, for comparison, coordinates last (the transposes)."""
    import torch

    x, w, dz = torch.randn(n, k), torch.randn(k, m), torch.randn(n, m)
    xt, wt, dzt = x.T.contiguous(), w.T.contiguous(), dz.T.contiguous()
    return {
        "coordinates first": best(lambda: (x @ w, dz.T @ x, dz @ w.T), repeat),
        "coordinates last": best(lambda: (wt @ xt, dzt @ xt.T, wt.T @ dzt), repeat),
    }


def activations_at_their_shapes(n: int, hidden: int, repeat: int) -> float:
    """Seconds of one update's transcendental functions in the forward pass at their shapes,
    into preallocated outputs: the sigmoid of the four gate blocks ``[n, 4 hidden]``, the
    tanh of the cell ``[n, hidden]``, and the sigmoids of the meta-learner cell's two gates
    ``[n]`` (work the FLOP count does not see: it counts products only)."""
    import torch

    z, c, g = torch.randn(n, 4 * hidden), torch.randn(n, hidden), torch.randn(2, n)
    oz, oc, og = torch.empty_like(z), torch.empty_like(c), torch.empty_like(g)
    return best(lambda: (torch.sigmoid(z, out=oz), torch.tanh(c, out=oc),
                         torch.sigmoid(g, out=og)), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="omniglot-5w1s-meta-lstm")
    # eager paths only: the counts run under a dispatch mode, which torch.compile refuses
    # (meta_lstm_eval.py times the compiled episode)
    parser.add_argument("--path", default="fused", choices=["fused", "vmap", "loop"])
    parser.add_argument("--repeat", type=int, default=5)
    common.add_threads_option(parser, default=1)
    common.add_write_results_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fewshot_cli.algorithms import TrainingProgress
    from fewshot_cli.engine.meta_update import meta_update

    cfg, shape, algo = build(args.config)
    opt = algo.configure_optimizer()
    gen = torch.Generator().manual_seed(0)
    batch = batch_of(1, shape.input_shape, cfg.task.ways, cfg.task.shots, cfg.task.queries, gen)
    steps, hidden = cfg.algorithm.inner_steps, cfg.algorithm.hidden
    n = sum(p.numel() for p in algo.model.parameters())

    def episode() -> None:
        meta_update(algo, batch, args.path, TrainingProgress(2, 10, False), opt)

    episode()
    with FlopCounterMode(display=False) as counter:
        episode()
    flops = counter.get_total_flops()
    moved = traffic(episode)
    essential = 5 * steps * n * (2 * hidden + 4) * 4

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = 2 * 2048**3 / best(lambda: a @ b, args.repeat) / 1e9
    big, dst = torch.randn(64 * 2**20), torch.empty(64 * 2**20)  # 256 MB each
    bandwidth = 2 * big.numel() * 4 / best(lambda: dst.copy_(big), args.repeat) / 1e9
    # per coordinate: the preprocessed gradient (2) and h; the loss is in the bias
    shaped = products_at_their_shapes(n, 2 + hidden, 4 * hidden, args.repeat)
    activations = activations_at_their_shapes(n, hidden, args.repeat)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        episode()
        times.append(time.perf_counter() - start)
    took = statistics.median(times)

    t_flops, t_bytes = flops / gemm / 1e9, essential / bandwidth / 1e9
    floor = max(t_flops, t_bytes)
    lines = [
        f"Command: `{common.command_line(__file__)}`; {time.strftime('%Y-%m-%d')}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); `{args.config}`, "
        f"{args.path} path, T = {steps} updates, {n:,} learner coordinates, hidden {hidden}.",
        "",
        "| quantity | value |",
        "| --- | ---: |",
        f"| FLOPs of one episode (forward and backward) | {flops / 1e9:.2f} G |",
        f"| sgemm rate, one 2048² product | {gemm:.1f} GFLOP/s |",
        f"| arithmetic floor | {t_flops:.3f} s |",
        f"| bytes the recursion must move (5 T n (2h + 4) 4) | {essential / 1e9:.2f} GB |",
        f"| memory bandwidth, 256 MB copy (read + write) | {bandwidth:.1f} GB/s |",
        f"| memory floor | {t_bytes:.3f} s |",
        f"| **floor** (the larger) | **{floor:.3f} s** |",
        f"| bytes the operators read and write now (unfused) | {moved / 1e9:.2f} GB |",
        f"| those bytes at the bandwidth | {moved / bandwidth / 1e9:.3f} s |",
        f"| **one episode now** (median of {args.repeat}) | **{took:.3f} s** "
        f"({took / floor:.1f}x the floor) |",
    ]
    product_flops = 3 * 2 * n * (2 + hidden) * 4 * hidden
    for layout, seconds in shaped.items():
        lines.append(f"| the first LSTM layer's three products per update at their own "
                     f"shapes, {layout}, times T | {steps * seconds:.3f} s "
                     f"({product_flops / seconds / 1e9:.1f} GFLOP/s) |")
    first = shaped["coordinates first"]
    lines.append(f"| the gates' sigmoid and tanh per update at their shapes (forward only), "
                 f"times T | {steps * activations:.3f} s |")
    lines.append(f"| **those products and activations together**, times T: what these shapes "
                 f"cost before any other operator | **{steps * (first + activations):.3f} s** "
                 f"({steps * (first + activations) / floor:.1f}x the floor) |")
    common.publish("\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
