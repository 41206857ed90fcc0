"""Choosing torch's intra-op thread count, like the batching path: by measurement.

Few-shot models are small: a meta-update is thousands of tiny kernels, and
two spinning OpenMP threads collapse (many times slower) as soon as another
process is busy on the same cores. So a run uses one thread unless more
threads make a meta-update clearly faster (by ``MIN_GAIN``) when measured on
a real meta-batch. The measurement is cached like the batching path's, but a
cached choice of more than one thread is timed again at the start of every run:
it was right for the machine's load then, and a busier machine now would
turn it into the collapse it is meant to avoid (a choice of one thread cannot
collapse, so it is reused). The choice is recorded in ``meta.json`` and reused
by ``--resume`` (which needs the same count to stay bit-identical).

``--threads N`` (or ``train.threads: N``) skips the measurement.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import torch

from ..algorithms import Vectorize
from ..files import cache_root
from . import allocator, vectorize
from .setup import Experiment

#: More threads must make a meta-update at least this much faster to be chosen.
MIN_GAIN = 1.3
#: The thread count torch would use on its own (before any set_num_threads).
DEFAULT_THREADS = torch.get_num_threads()


def apply(n: int) -> None:
    """Use ``n`` intra-op threads from now on (and keep freed memory for reuse:
    :mod:`.allocator`)."""
    allocator.keep_freed_memory()
    if n != torch.get_num_threads():
        torch.set_num_threads(n)


def _time(exp: Experiment, batch: Any, path: Vectorize, threads: int) -> float:
    """Seconds of one meta-update with ``threads`` threads, on a throwaway copy."""
    apply(threads)
    return vectorize.time_step(copy.deepcopy(exp.algo), batch, path, exp.device, budget_s=0.4)


def choose(exp: Experiment, path: Vectorize, requested: int | None, key: str,
           announce: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any]]:
    """The thread count for this run and how it was decided; applies it.

    ``key`` identifies the measurement for the cache (the batching path's key).
    On a GPU the count only drives host-side work: one thread, not measured. A cached
    measurement that chose more than one thread is timed again now (module docstring).
    """
    if requested is not None:
        apply(requested)
        return requested, {"threads": requested, "requested": requested}
    candidates = sorted({1, DEFAULT_THREADS})
    if exp.device.type != "cpu" or len(candidates) == 1:
        apply(1)
        return 1, {"threads": 1, "requested": "auto", "source": "only choice"}
    file = cache_root() / "threads.json"
    full_key = json.dumps([key, path, candidates])
    cache = vectorize.read_cache(file)
    entry = cache.get(full_key)
    if _valid(entry, candidates) and _best(entry, candidates) == 1:
        source = "cached measurement"
    else:
        source = ("measured" if not _valid(entry, candidates) else
                  "measured again (the cached choice was more than one thread)")
        if announce is not None:
            announce(f"timing a meta-update with {' and '.join(map(str, candidates))} threads")
        entry = _measure(exp, path, candidates)
        cache[full_key] = entry
        vectorize.write_cache(file, cache)
    chosen = _best(entry, candidates)
    apply(chosen)
    return chosen, {"threads": chosen, "requested": "auto", "source": source,
                    "seconds_per_step": {k: round(v, 6) for k, v in entry.items()}}


def _valid(entry: Any, candidates: list[int]) -> bool:
    return isinstance(entry, dict) and set(entry) == {str(c) for c in candidates} and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        for v in entry.values())


def _best(entry: dict[str, float], candidates: list[int]) -> int:
    """The fastest count, if it beats one thread by ``MIN_GAIN``; else one."""
    best = min(candidates, key=lambda c: entry[str(c)])
    return best if entry["1"] / entry[str(best)] >= MIN_GAIN else 1


def _measure(exp: Experiment, path: Vectorize, candidates: list[int]) -> dict[str, float]:
    """Seconds per meta-update with each count, on a fixed batch (RNG state put back)."""
    rng = torch.get_rng_state()
    gen = torch.Generator().manual_seed(54321)
    batch = exp.source.sample(exp.cfg.algorithm.meta_batch, gen, "train").to(
        exp.device, exp.dtype)
    try:
        return {str(c): _time(exp, batch, path, c) for c in candidates}
    finally:
        torch.set_rng_state(rng)


def for_run(meta: dict[str, Any]) -> int:
    """Apply the thread count a run recorded (``eval`` and ``plot``); 1 when none was."""
    record = meta.get("vectorize") if isinstance(meta.get("vectorize"), dict) else {}
    choice = record.get("threads") if isinstance(record.get("threads"), dict) else {}
    n = choice.get("threads")
    n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1024 else 1
    apply(n)
    return n
