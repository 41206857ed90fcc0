"""Peak memory and time per second-order MAML meta-iteration against the number of inner
steps, with and without ``algorithm.checkpoint_inner_steps`` (and, with ``--autocast
off,bf16``, under ``train.autocast: bf16`` too).

One meta-iteration is the engine's ``meta_update``: the inner loops, the outer loss, its backward
pass and an Adam step, on random data shaped like mini-ImageNet 5-way 1-shot (3x84x84
images, 15 queries per class, meta-batch 4, conv4 with 32 filters; no dataset needed).

Memory:

* CUDA: ``torch.cuda.max_memory_allocated`` over the timed iterations (after one warm-up
  iteration), every setting in this one process. ``peak`` is that maximum; ``step`` is
  the peak above what was allocated just before (network, optimiser state, batch), i.e.
  what one meta-iteration adds.
* CPU: every setting runs in a fresh subprocess. After the warm-up it hands freed heap
  memory back (``malloc_trim``), resets the kernel's peak resident memory (``5`` to
  ``/proc/self/clear_refs``) and reads the resident memory; after the iterations it reads
  the peak (``VmHWM`` in ``/proc/self/status``; where the reset is refused, ``getrusage``
  ``ru_maxrss``, the warm-up's peak included). ``peak`` is that peak, Python and torch
  included; ``step`` is the peak above the resident memory before. Resident memory moves
  by a few MiB on its own: use images of 42 pixels or more.

Time: the median of ``--repeats`` iterations (CUDA synchronised).

    python benchmarks/inner_memory.py                       # CUDA when available
    python benchmarks/inner_memory.py --autocast off,bf16   # also under bf16 autocast
    python benchmarks/inner_memory.py --device cpu --size 42 --meta-batch 2 --steps 1,2,3,5
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from common import add_threads_option, sync

from fewshot_cli.algorithms import Settings, TrainingProgress
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import MAMLConfig
from fewshot_cli.engine.meta_update import meta_update
from fewshot_cli.models import Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

MIB = 2**20


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.add_argument("--steps", default="1,2,3,5,10", help="inner step counts")
    p.add_argument("--autocast", default="off", help="off, bf16 or off,bf16")
    p.add_argument("--path", default="fused", choices=["fused", "loop", "vmap"],
                   help="batching path (vmap: without checkpointing only)")
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    add_threads_option(p, default=1, help="CPU threads")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args()


def status_bytes(key: str) -> int:
    """``VmRSS`` (resident memory now) or ``VmHWM`` (its peak) of this process."""
    with open("/proc/self/status") as f:
        return 1024 * int(next(x for x in f if x.startswith(key + ":")).split()[1])


def reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak resident memory (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(args: argparse.Namespace, device: torch.device, steps: int, checkpoint: bool,
            autocast: str) -> dict[str, Any]:
    """Peak memory (bytes) and median seconds of one setting's meta-iterations."""
    torch.manual_seed(0)
    shape = (3, args.size, args.size)
    cfg = MAMLConfig(loss="cross_entropy", inner_lr=0.01, inner_steps=steps,
                     meta_batch=args.meta_batch, checkpoint_inner_steps=checkpoint)
    settings = Settings(autocast=torch.bfloat16 if autocast == "bf16" else None)
    algo = MAML(Conv4(shape, args.ways, filters=args.filters), cfg,
                TaskShape("classification", shape, args.ways), settings).to(device)
    gen = torch.Generator().manual_seed(1)

    def images(k: int) -> torch.Tensor:
        return torch.randn(args.meta_batch, args.ways * k, *shape, generator=gen)

    def labels(k: int) -> torch.Tensor:
        return torch.arange(args.ways).repeat(k).expand(args.meta_batch, -1).contiguous()

    batch = TaskBatch(images(args.shots), labels(args.shots), images(args.queries),
                      labels(args.queries)).to(device, torch.float32)
    optimizer = algo.configure_optimizer()
    cuda = device.type == "cuda"

    def iteration() -> float:
        sync(device)
        start = time.perf_counter()
        meta_update(algo, batch, args.path, TrainingProgress(1, 1), optimizer)
        sync(device)
        return time.perf_counter() - start

    iteration()  # warm-up (also creates Adam's state and torch's lazily built kernels)
    hwm = False
    if cuda:
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:  # hand freed heap memory back, so that resident memory is what is in use
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
        hwm = reset_peak_rss()
        before = status_bytes("VmRSS")
    times = [iteration() for _ in range(args.repeats)]
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = (status_bytes("VmHWM") if hwm
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"peak": peak, "step": peak - before, "seconds": statistics.median(times)}


def run_child(args: argparse.Namespace, steps: int, checkpoint: bool, autocast: str
              ) -> dict[str, Any]:
    """:func:`measure` in a fresh process (CPU: its peak resident memory is this setting's)."""
    argv = [a for a in sys.argv[1:]]
    spec = json.dumps({"steps": steps, "checkpoint": checkpoint, "autocast": autocast})
    out = subprocess.run([sys.executable, __file__, *argv, "--device", "cpu", "--child", spec],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(args, device, spec["steps"], spec["checkpoint"],
                                 spec["autocast"])))
        return
    steps = [int(s) for s in args.steps.split(",")]
    casts = args.autocast.split(",")
    modes = [False] if args.path == "vmap" else [False, True]
    what = (f"{torch.cuda.get_device_name(device)}, torch.cuda.max_memory_allocated"
            if device.type == "cuda" else
            f"CPU ({args.threads} thread(s)), peak resident memory (VmHWM after a reset) of "
            "one subprocess per setting")
    print(f"# Second-order MAML meta-iteration, conv4 {args.filters} filters, "
          f"{args.ways}-way {args.shots}-shot, {args.queries} queries, 3x{args.size}x{args.size},"
          f" meta-batch {args.meta_batch}, path {args.path}, torch {torch.__version__}")
    print(f"# memory: {what}; time: median of {args.repeats} iterations after a warm-up\n")
    print("| inner steps | checkpoint_inner_steps | autocast | peak MiB | step MiB "
          "| ms / iteration | step MiB vs off | time vs off |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    rows: dict[tuple[int, bool, str], dict[str, Any]] = {}
    start = time.perf_counter()
    for cast in casts:
        for n in steps:
            for ck in modes:
                r = (measure(args, device, n, ck, cast) if device.type == "cuda"
                     else run_child(args, n, ck, cast))
                rows[n, ck, cast] = r
                base = rows[n, False, cast]
                ratio = (f"{r['step'] / base['step']:.2f}x" if base["step"] > 0 else "-",
                         f"{r['seconds'] / base['seconds']:.2f}x")
                print(f"| {n} | {'on' if ck else 'off'} | {cast} | {r['peak'] / MIB:.0f} | "
                      f"{r['step'] / MIB:.0f} | {1000 * r['seconds']:.1f} | "
                      f"{ratio[0] if ck else ''} | {ratio[1] if ck else ''} |", flush=True)
    print()
    for cast in casts:
        for ck in modes:
            if len(steps) > 1:
                lo, hi = rows[steps[0], ck, cast], rows[steps[-1], ck, cast]
                slope = (hi["step"] - lo["step"]) / MIB / (steps[-1] - steps[0])
                print(f"- checkpoint_inner_steps {'on' if ck else 'off'}, autocast {cast}: "
                      f"step memory grows {slope:.1f} MiB per inner step "
                      f"({steps[0]} to {steps[-1]} steps)")
    print(f"\n({time.perf_counter() - start:.1f} s in all)")


if __name__ == "__main__":
    main()
