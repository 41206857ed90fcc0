"""Seconds per conv4 MAML meta-iteration for each way of mapping a meta-batch over tasks.

Paths:

* ``loop``     -- ``map_tasks(vectorize="loop")``: one task at a time.
* ``loop-cl``  -- the same with channels-last inputs.
* ``vmap``     -- ``map_tasks(vectorize="vmap")``: ``torch.func.vmap`` over tasks.
* ``fused``    -- ``Conv4.forward_tasks``: every task's network in one grouped
  convolution per layer (task b's filters are group b), native batch norm:
  ``algo.meta_loss(batch, "fused", progress)``.

One meta-iteration is forward + backward + an Adam step on random data of the
requested shape (Omniglot 1x28x28 by default; no dataset needed). All paths
run in one process and alternate (the order rotates every round), so a
change in machine load hits every path alike; each row reports the median
and spread over ``--iterations`` rounds, process CPU time, the CPU time other
processes took meanwhile (``others``: busy cores besides this process, from
``/proc/stat``; anything above ~0.1 means the numbers are contended) and, from
one subprocess per path, the peak resident memory above the set-up baseline.

    python benchmarks/conv4_speed.py --strided              # MAML's Omniglot conv4
    python benchmarks/conv4_speed.py --strided --queries 15 --threads 1 --malloc no-mmap
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from common import add_threads_option, busy_seconds, others_busy_cores, rotated, set_threads, sync

from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.algorithms.maml import MAML
from fewshot_cli.config import MAMLConfig
from fewshot_cli.models import Conv4
from fewshot_cli.tasks.base import TaskBatch, TaskShape

PATHS = ("loop", "loop-cl", "vmap", "fused")


def random_batch(args: argparse.Namespace, dtype: torch.dtype, device: str) -> TaskBatch:
    """Random images of the requested shape; support index ``k*N + j`` has label ``j``."""
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.channels, args.image_size, args.image_size)

    def part(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(args.meta_batch, args.ways * per_class, *shape, generator=gen)
        y = torch.arange(args.ways).repeat(per_class).expand(args.meta_batch, -1).contiguous()
        return x, y

    (sx, sy), (qx, qy) = part(args.shots), part(args.queries)
    return TaskBatch(sx, sy, qx, qy).to(device, dtype)


def channels_last(batch: TaskBatch) -> TaskBatch:
    """The same batch with every task's images ``[n, C, H, W]`` in channels-last order."""
    def cl(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)

    return TaskBatch(cl(batch.support_x), batch.support_y, cl(batch.query_x), batch.query_y)


def set_malloc(mode: str, argv: list[str]) -> None:
    """Choose how host memory is allocated (the process re-executes itself where needed).

    By default glibc maps each block over 32 MiB afresh and unmaps it when
    freed, so every meta-iteration page-faults its large activations back in.
    ``no-mmap``: glibc serves every block from its heap and never trims it;
    ``hugetlb``: glibc's blocks are backed by transparent huge pages;
    ``tcmalloc``: preload gperftools' tcmalloc (Debian: libtcmalloc-minimal4).
    """
    if mode == "no-mmap":
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
            raise SystemExit("mallopt failed (is this glibc?)")
        return
    if mode == "default" or os.environ.get("CONV4_SPEED_MALLOC") == mode:
        return
    env = dict(os.environ, CONV4_SPEED_MALLOC=mode)
    if mode == "hugetlb":
        tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
        env["GLIBC_TUNABLES"] = ":".join([*tunables, "glibc.malloc.hugetlb=1"])
    else:
        lib = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
        if lib is None:
            raise SystemExit("tcmalloc not found (Debian/Ubuntu: apt-get install "
                             "libtcmalloc-minimal4)")
        env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), lib]))
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], env)


class Bench:
    """A model, its meta-optimiser, one meta-batch, and a timed meta-iteration per path."""

    def __init__(self, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        dtype = getattr(torch, args.dtype)
        model = Conv4((args.channels, args.image_size, args.image_size), args.ways,
                      filters=args.filters, strided=args.strided)
        cfg = MAMLConfig(loss="cross_entropy", inner_lr=0.4, inner_steps=args.steps,
                         first_order=args.first_order, meta_optimizer="adam", meta_lr=1e-3)
        shape = (args.channels, args.image_size, args.image_size)
        self.algo = MAML(model, cfg, TaskShape("classification", shape, args.ways))
        self.algo.to(args.device, dtype)
        self.optimizer = self.algo.configure_optimizer()  # Adam, lr 1e-3
        self.batch = random_batch(args, dtype, args.device)
        self.batch_cl = channels_last(self.batch)
        self.device = args.device
        progress = TrainingProgress(1, 1)
        self.objective: dict[str, Callable[[], torch.Tensor]] = {
            "loop": lambda: self.algo.meta_loss(self.batch, "loop", progress)[0],
            "loop-cl": lambda: self.algo.meta_loss(self.batch_cl, "loop", progress)[0],
            "vmap": lambda: self.algo.meta_loss(self.batch, "vmap", progress)[0],
            "fused": lambda: self.algo.meta_loss(self.batch, "fused", progress)[0],
        }

    def step(self, path: str) -> dict[str, float]:
        """One meta-iteration; wall, CPU and system seconds, faults, others' busy cores."""
        sync(self.device)
        r0, b0 = resource.getrusage(resource.RUSAGE_SELF), busy_seconds()
        c0, t0 = time.process_time(), time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective[path]().backward()
        self.optimizer.step()
        sync(self.device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        r1, b1 = resource.getrusage(resource.RUSAGE_SELF), busy_seconds()
        return {"wall": wall, "cpu": cpu, "sys": r1.ru_stime - r0.ru_stime,
                "faults": r1.ru_minflt - r0.ru_minflt,
                "others": others_busy_cores(b0, b1, cpu, wall)}


def peak_memory(args: argparse.Namespace, path: str) -> dict[str, float]:
    """Peak memory of ``path`` alone, measured in a fresh subprocess."""
    argv = [sys.executable, os.path.abspath(__file__), *args.argv, "--peak-only", path]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_mb() -> tuple[float, float]:
    """Current and peak resident memory of this process in MiB.

    Read from ``/proc/self/status`` (``ru_maxrss`` would be no good: Linux
    carries the parent's high-water mark into a child across fork and exec).
    """
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def run_peak_only(args: argparse.Namespace) -> None:
    """Subprocess body: warm-up plus two iterations of one path; print peak memory as JSON."""
    bench = Bench(args)
    baseline, _ = memory_mb()
    cuda = args.device.startswith("cuda")
    if cuda:
        cuda_baseline = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current resident size
    except OSError:
        pass
    for _ in range(3):
        bench.step(args.peak_only)
    out = {"baseline_rss_mb": baseline, "peak_rss_mb": memory_mb()[1]}
    if cuda:
        out.update(baseline_cuda_mb=cuda_baseline,
                   peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(out))


def summarise(times: list[dict[str, float]]) -> dict[str, float]:
    walls = sorted(t["wall"] for t in times)
    q = statistics.quantiles(walls, n=4) if len(walls) > 1 else [walls[0]] * 3
    return {
        "median_s": statistics.median(walls), "min_s": walls[0], "max_s": walls[-1],
        "iqr_s": q[2] - q[0], "cpu_s": statistics.median(t["cpu"] for t in times),
        "sys_s": statistics.median(t["sys"] for t in times),
        "faults": statistics.median(t["faults"] for t in times),
        "others": statistics.fmean(t["others"] for t in times),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=1, help="query images per class")
    p.add_argument("--steps", type=int, default=1, help="inner steps")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--strided", action="store_true",
                   help="stride-2 convs, no pooling (MAML's Omniglot conv4)")
    p.add_argument("--iterations", type=int, default=10, help="timed rounds per path")
    p.add_argument("--paths", default="loop,vmap,fused",
                   help=f"comma-separated, from {', '.join(PATHS)}")
    add_threads_option(p)
    p.add_argument("--interop-threads", type=int, default=None)
    p.add_argument("--malloc", choices=["default", "no-mmap", "hugetlb", "tcmalloc"],
                   default="default", help="host allocator set-up (see set_malloc)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown paths {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    set_malloc(args.malloc, args.argv)
    set_threads(args.threads)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)
    if args.peak_only:
        run_peak_only(args)
        return

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, threads {torch.get_num_threads()}, "
          f"interop {torch.get_num_interop_threads()}, malloc {args.malloc}, {args.dtype}")
    print(f"conv4 {'strided' if args.strided else 'max-pool'} {args.filters} filters, "
          f"{args.channels}x{args.image_size}x{args.image_size}, {args.ways}-way "
          f"{args.shots}-shot {args.queries} queries/class, meta-batch {args.meta_batch}, "
          f"{args.steps} inner step(s), {'first' if args.first_order else 'second'} order")
    bench = Bench(args)
    warm: dict[str, float] = {}
    for path in args.paths:  # first calls build kernels and caches
        warm[path] = bench.step(path)["wall"]
    times: dict[str, list[dict[str, float]]] = {p: [] for p in args.paths}
    for i in range(args.iterations):
        for path in rotated(args.paths, i):
            times[path].append(bench.step(path))

    results = {p: {**summarise(t), "warmup_s": warm[p]} for p, t in times.items()}
    if not args.no_memory:
        for path in args.paths:
            results[path].update(peak_memory(args, path))
    base = results.get("loop", {}).get("median_s")
    print(f"{'path':8} {'median s':>9} {'min':>7} {'max':>7} {'IQR':>7} {'cpu s':>7} "
          f"{'sys s':>6} {'faults':>7} {'others':>6} {'warmup':>7} {'x loop':>6} "
          f"{'peak MB':>8} {'+MB':>6}")
    for path, r in results.items():
        memory = "cuda" if "peak_cuda_mb" in r else "rss"  # the device's memory where there
        peak = r.get(f"peak_{memory}_mb", float("nan"))
        extra = peak - r.get(f"baseline_{memory}_mb", float("nan"))
        speed = base / r["median_s"] if base else float("nan")
        print(f"{path:8} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} "
              f"{r['iqr_s']:7.3f} {r['cpu_s']:7.3f} {r['sys_s']:6.3f} {r['faults']:7.0f} "
              f"{r['others']:6.2f} {r['warmup_s']:7.2f} {speed:6.2f} {peak:8.0f} {extra:6.0f}")
        if "error" in r:
            print(f"  peak-memory subprocess failed: {r['error']}")
    if args.json:
        with open(args.json, "w") as f:
            settings = {k: v for k, v in vars(args).items() if k not in ("peak_only", "argv")}
            json.dump({"args": settings,
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
