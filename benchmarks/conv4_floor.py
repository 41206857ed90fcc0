"""The arithmetic floor of a conv4 MAML meta-iteration on this CPU.

Counts the floating-point operations of one second-order meta-iteration (forward, backward
and the backward of the inner gradient; ``torch.utils.flop_counter``, which counts
convolutions, their backward and matrix products) on the loop path, and measures what one
thread of this machine reaches on the dominant operations:

* a large square ``sgemm`` (the most a core does with fp32: an upper bound for any
  convolution), and
* the convolutions of the meta-iteration itself, run as one big batch (all tasks' images
  through shared filters: the best case of the same shapes, with no per-task split).

The floor is FLOPs / rate. A meta-iteration cannot be faster than its FLOPs at the GEMM
rate unless it does less arithmetic (lower precision, a cheaper algorithm), so the
printed "most speed-up possible" is the fastest peer's time over that floor.

    python benchmarks/conv4_floor.py --threads 1 --peer-ms 394.7 --peer-ms-15 1090
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv4_speed import Bench, parse  # noqa: E402


def count_flops(args: argparse.Namespace) -> tuple[int, dict[str, int]]:
    """FLOPs of one meta-iteration of ``conv4_speed``'s set-up ``args``, loop path."""
    bench = Bench(args)
    with FlopCounterMode(display=False) as counter:
        bench.objective["loop"]().backward()
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def rate(fn, flops: float, repeat: int = 5) -> float:
    """GFLOP/s of ``fn`` (best of ``repeat`` after a warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def gemm_rate(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return rate(lambda: a @ b, 2 * n**3)


def batched_conv_rate(args: argparse.Namespace) -> float:
    """Forward + backward of the network's four convolutions over all tasks' images at
    once, shared filters: the same shapes at their most efficient batching."""
    images = args.meta_batch * args.ways * (args.shots + args.queries)
    stride = 2 if args.strided else 1
    convs = [torch.nn.Conv2d(args.channels if i == 0 else args.filters, args.filters, 3,
                             stride=stride, padding=1) for i in range(4)]
    x0 = torch.randn(images, args.channels, args.image_size, args.image_size)

    def run() -> None:
        h = x0
        for c in convs:
            h = F.relu(c(h))
        h.sum().backward()

    with FlopCounterMode(display=False) as counter:
        run()
    return rate(run, counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer-ms", type=float, default=None,
                    help="the fastest peer's ms per meta-iteration, 1 query per class")
    ap.add_argument("--peer-ms-15", type=float, default=None, help="the same, 15 queries")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gemm = gemm_rate()
    print(f"torch {torch.__version__}, {args.threads} thread(s); sgemm 2048^3: {gemm:.1f} GFLOP/s")
    for queries, peer in ((1, args.peer_ms), (15, args.peer_ms_15)):
        setup = parse(["--strided", "--queries", str(queries)])
        total, by_op = count_flops(setup)
        conv = batched_conv_rate(setup)
        floor_gemm, floor_conv = total / gemm / 1e6, total / conv / 1e6
        top = ", ".join(f"{k.split('.')[-1]} {v / 1e9:.2f}"
                        for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:4])
        print(f"{queries} query/class: {total / 1e9:.2f} GFLOP per meta-iteration ({top}); "
              f"batched conv fwd+bwd {conv:.1f} GFLOP/s; floor {floor_gemm:.0f} ms at the "
              f"sgemm rate, {floor_conv:.0f} ms at the batched-conv rate")
        if peer:
            print(f"  fastest peer {peer:.0f} ms: most speed-up possible {peer / floor_gemm:.2f}x "
                  f"(sgemm rate), {peer / floor_conv:.2f}x (batched-conv rate)")


if __name__ == "__main__":
    main()
