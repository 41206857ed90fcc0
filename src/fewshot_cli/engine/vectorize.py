"""Choosing how a meta-batch runs over its tasks.

``vmap`` maps the per-task function with ``torch.func.vmap``, ``loop`` calls
it task by task, and ``fused`` (networks with ``forward_tasks``, e.g. conv4)
runs all tasks' parameters at once as grouped convolutions. Which is fastest
depends on the network, the batch shape, the device and even the memory
allocator (``vmap`` wins by far for the sinusoid MLP; for conv4 on CPU vmap or
fused win with one query per class, the loop can win with 15), so ``auto``
times one meta-training step each way on a real meta-batch and remembers the
answer in a small cache keyed by everything that could change it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

from ..algorithms import VECTORIZE_MODES, Vectorize
from ..errors import ConfigError
from ..files import atomic_write_text, cache_root
from .setup import Experiment


def _key(exp: Experiment) -> str:
    c = exp.cfg
    shots = getattr(c.task, "shots", None)
    queries = getattr(c.task, "queries", None)
    ways = getattr(c.task, "ways", None)
    parts: list[Any] = [
        torch.__version__, str(exp.device), torch.get_num_threads(), str(exp.dtype),
        c.model.model_dump(mode="json"), list(exp.source.input_shape), exp.source.output_dim,
        c.algorithm.kind, c.algorithm.meta_batch, c.algorithm.inner_steps,
        c.algorithm.first_order, ways, shots, queries, os.environ.get("LD_PRELOAD", ""),
    ]
    if exp.device.type == "cuda":
        parts.append(torch.cuda.get_device_name(exp.device))
    return json.dumps(parts, sort_keys=True)


def _time_step(exp: Experiment, batch, mode: Vectorize, budget_s: float = 0.3) -> float:
    """Seconds of one meta-training step (forward + backward), best of a few."""
    def step() -> float:
        if exp.device.type == "cuda":
            torch.cuda.synchronize(exp.device)
        t = time.perf_counter()
        loss, _ = exp.algo.outer_loss(batch, mode)
        loss.backward()
        if exp.device.type == "cuda":
            torch.cuda.synchronize(exp.device)
        return time.perf_counter() - t

    step()  # warm-up
    times = [step()]
    while sum(times) < budget_s and len(times) < 20:
        times.append(step())
    return min(times)


def measure(exp: Experiment) -> dict[str, float]:
    """Seconds per meta-training step for each mode (``inf`` where a mode fails)."""
    gen = torch.Generator().manual_seed(12345)
    batch = exp.source.sample(exp.cfg.algorithm.meta_batch, gen, "train").to(exp.device,
                                                                               exp.dtype)
    timings: dict[str, float] = {}
    modes = ("vmap", "loop", "fused") if exp.algo.can_fuse else ("vmap", "loop")
    for mode in modes:
        try:
            timings[mode] = _time_step(exp, batch, mode)
        except (RuntimeError, torch.cuda.OutOfMemoryError):
            timings[mode] = float("inf")
        finally:
            exp.algo.zero_grad(set_to_none=True)
    return timings


def choose(exp: Experiment, requested: str) -> tuple[Vectorize, dict[str, Any]]:
    """The mode to use and how it was decided (for meta.json)."""
    if requested in VECTORIZE_MODES:
        if requested == "fused" and not exp.algo.can_fuse:
            raise ConfigError(
                f"train.vectorize: fused needs a network with forward_tasks (conv4), found "
                f"{exp.cfg.model.kind}"
            )
        return requested, {"requested": requested}  # type: ignore[return-value]
    path = cache_root() / "vectorize.json"
    key = _key(exp)
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        timings = cache[key]
        source = "cached measurement"
    else:
        timings = measure(exp)
        source = "measured"
        cache[key] = timings
        try:
            atomic_write_text(path, json.dumps(cache, indent=1))
        except OSError:
            pass  # an unwritable cache only costs a re-measurement next time
    mode: Vectorize = min(timings, key=timings.get)  # type: ignore[assignment]
    return mode, {"requested": "auto", "source": source,
                  "seconds_per_step": {k: round(v, 6) for k, v in timings.items()}}
