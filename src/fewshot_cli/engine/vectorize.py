"""Choosing how a meta-batch runs over its tasks.

``vmap`` maps the per-task function with ``torch.func.vmap``, ``loop`` calls
it task by task, and ``fused`` (networks with ``forward_tasks``, e.g. conv4)
runs all tasks' parameters at once as grouped convolutions. Only the paths
the algorithm declares (``Algorithm.paths``) are considered. Which is fastest
depends on the network, the batch shape, the device and even the memory
allocator (``vmap`` wins by far for the sinusoid MLP; for conv4 on CPU vmap or
fused win with one query per class, the loop can win with 15), so ``auto``
times one meta-training step each way on a real meta-batch and remembers the
answer in a small cache keyed by everything that could change it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path as PathLike
from typing import Any

import torch

from ..algorithms import PATHS, Algorithm, Path, Progress
from ..errors import ConfigError, FewshotError
from ..files import atomic_write_text, cache_root
from .setup import Experiment


def cache_key(exp: Experiment) -> str:
    """Everything that could change which path is fastest."""
    c = exp.cfg
    parts: list[Any] = [
        torch.__version__, str(exp.device), torch.get_num_threads(), str(exp.dtype),
        c.model.model_dump(mode="json"), c.algorithm.model_dump(mode="json"),
        list(exp.source.input_shape), exp.source.output_dim,
        getattr(c.task, "ways", None), c.task.shots, c.task.queries,
        os.environ.get("LD_PRELOAD", ""),
    ]
    if exp.device.type == "cuda":
        parts.append(torch.cuda.get_device_name(exp.device))
    return json.dumps(parts, sort_keys=True)


def time_step(algo: Algorithm, batch, path: Path, device: torch.device,
              budget_s: float = 0.3) -> float:
    """Seconds of one meta-update (``meta_step``), best of a few, on a throwaway copy."""
    optimizer = algo.configure_optimizer()

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        algo.meta_step(batch, path, Progress(1, 1), optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    step()  # warm-up
    times = [step()]
    while sum(times) < budget_s and len(times) < 20:
        times.append(step())
    return min(times)


def measure(exp: Experiment) -> dict[str, float | None]:
    """Seconds per meta-update along each path the algorithm supports.

    Runs on a copy of the algorithm, with the global RNG state put back, so the
    run itself starts exactly as it would without the measurement. A path that
    raises is an error (a bug must not pass for a slow path); one that runs out
    of GPU memory is recorded as ``None`` (unavailable).
    """
    gen = torch.Generator().manual_seed(12345)
    batch = exp.source.sample(exp.cfg.algorithm.meta_batch, gen, "train").to(exp.device,
                                                                               exp.dtype)
    timings: dict[str, float | None] = {}
    rng = torch.get_rng_state()
    try:
        for path in exp.algo.available_paths:
            probe = copy.deepcopy(exp.algo)
            try:
                timings[path] = time_step(probe, batch, path, exp.device)
            except torch.cuda.OutOfMemoryError:
                timings[path] = None
            except RuntimeError as e:
                msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise FewshotError(
                    f"train.vectorize: auto: the {path} path failed while being timed ({msg}); "
                    f"choose another with --set train.vectorize=PATH") from None
            finally:
                del probe
    finally:
        torch.set_rng_state(rng)
    if all(v is None for v in timings.values()):
        raise FewshotError("train.vectorize: auto: every batching path ran out of GPU memory; "
                           "reduce algorithm.meta_batch")
    return timings


def read_cache(file: PathLike) -> dict[str, Any]:
    """A JSON measurement cache; {} when missing, unreadable or not an object."""
    try:
        cache = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_cache(file: PathLike, cache: dict[str, Any]) -> None:
    """Write a measurement cache; an unwritable one only costs a re-measurement."""
    try:
        atomic_write_text(file, json.dumps(cache, indent=1))
    except OSError:
        pass


def _cached(cache: Any, key: str, paths: tuple[str, ...]) -> dict[str, float | None] | None:
    entry = cache.get(key) if isinstance(cache, dict) else None
    if (isinstance(entry, dict) and set(entry) == set(paths)
            and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and math.isfinite(v) and v > 0) for v in entry.values())):
        return entry
    return None


def choose(exp: Experiment, requested: str) -> tuple[Path, dict[str, Any]]:
    """The batching path to use and how it was decided (recorded in meta.json)."""
    paths = exp.algo.available_paths
    if requested in PATHS:
        if requested not in paths:
            raise ConfigError(
                f"train.vectorize: {requested} is not available for algorithm "
                f"{exp.cfg.algorithm.kind} with a {exp.cfg.model.kind} network; "
                f"expected one of {', '.join(paths)} or auto")
        return requested, {"requested": requested, "mode": requested}  # type: ignore[return-value]
    if len(paths) == 1:
        return paths[0], {"requested": "auto", "mode": paths[0], "source": "only path"}
    file = cache_root() / "vectorize.json"
    key = cache_key(exp)
    cache = read_cache(file)
    timings = _cached(cache, key, paths)
    source = "cached measurement"
    if timings is None:
        timings = measure(exp)
        source = "measured"
        cache[key] = timings
        write_cache(file, cache)
    mode: Path = min((p for p in timings if timings[p] is not None),  # type: ignore[assignment]
                     key=lambda p: timings[p])
    return mode, {"requested": "auto", "mode": mode, "source": source,
                  "seconds_per_step": {k: None if v is None else round(v, 6)
                                       for k, v in timings.items()}}
