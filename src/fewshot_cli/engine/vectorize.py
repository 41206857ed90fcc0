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

``compiled`` (algorithms that declare it, and can run ``vmap``: it compiles that
path's whole meta-gradient, see :mod:`.compiled`; or the algorithm's own pieces,
``compiled_inner``) costs a compilation first, of several seconds to minutes. ``auto``
therefore times it only where the run is long enough to repay one (the fastest eager path
would train :data:`MIN_COMPILE_S`, or :data:`MIN_INNER_COMPILE_S` for an algorithm that
compiles its own small pieces, counting the run's real budget: ``train.max_seconds``
where set, else ``train.iterations``), times the first call (the compilation) apart from
the steady steps, and charges the run :data:`COMPILES_PER_RUN` such compilations: spread
over its iterations, or taken out of its time budget (:func:`_effective`). A compilation
that fails there leaves ``compiled`` unavailable.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..algorithms import VECTORIZE, Algorithm, TrainingProgress, Vectorize
from ..errors import ConfigError, FewshotError
from ..files import atomic_write_text, cache_root
from .compiled import CompileError
from .meta_update import meta_update
from .setup import Experiment

#: ``compiled`` is timed only for a run whose fastest eager path would train this long
#: (its iterations, or its ``train.max_seconds`` where that is shorter): a run pays for
#: :data:`COMPILES_PER_RUN` compilations, of tens of seconds to minutes each on a small CPU
#: (benchmarks/RESULTS.md), so timing one for a shorter run would cost its user more than
#: it could save.
MIN_COMPILE_S = 1200.0
#: The same for an algorithm that compiles its own pieces (``compiled_inner``): the LSTM
#: meta-learner's one-update graph compiles in 10-20 s where its whole meta-gradient took
#: 2-4 minutes (benchmarks/RESULTS.md, "LSTM meta-learner").
MIN_INNER_COMPILE_S = 300.0
#: Compilations a run pays for: the timed one, the other thread count's (``threads``
#: times both) and the meta-updates with logged metrics (another graph).
COMPILES_PER_RUN = 3
#: Cache-entry key of the compiled path's first-call seconds.
COMPILE_KEY = "_compile_s"


def cache_key(exp: Experiment) -> str:
    """Everything that could change which path is fastest."""
    c = exp.cfg
    parts: list[Any] = [
        torch.__version__, str(exp.device), torch.get_num_threads(), str(exp.dtype),
        c.model.model_dump(mode="json"), c.algorithm.model_dump(mode="json"),
        list(exp.source.input_shape), exp.source.output_dim,
        getattr(c.task, "ways", None), c.task.shots, c.task.queries,
        os.environ.get("LD_PRELOAD", ""), os.environ.get("FEWSHOT_MALLOC", ""),
    ]
    if exp.device.type == "cuda":
        parts.append(torch.cuda.get_device_name(exp.device))
    return json.dumps(parts, sort_keys=True)


def available(algo: Algorithm) -> tuple[Vectorize, ...]:
    """The paths ``algo`` can run: its available paths, ``compiled`` only along with the path
    it compiles (:meth:`~Algorithm.eager_path` of ``compiled``)."""
    paths = algo.available_paths
    return tuple(p for p in paths if p != "compiled" or algo.eager_path("compiled")[0] in paths)


def time_step(algo: Algorithm, batch, path: Vectorize, device: torch.device,
              budget_s: float = 0.3) -> float:
    """Seconds of one meta-update (:func:`.meta_update`), best of a few, on a throwaway copy."""
    return time_steps(algo, batch, path, device, budget_s)[1]


def time_steps(algo: Algorithm, batch, path: Vectorize, device: torch.device,
               budget_s: float = 0.3) -> tuple[float, float]:
    """Seconds of the first meta-update (a compilation, on the ``compiled`` path) and of
    one after it, best of a few, on a throwaway copy."""
    optimizer = algo.configure_optimizer()

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        meta_update(algo, batch, path, TrainingProgress(1, 1), optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    first = step()  # warm-up
    times = [step()]
    while sum(times) < budget_s and len(times) < 20:
        times.append(step())
    return first, min(times)


def measure_paths(exp: Experiment) -> tuple[dict[str, float | None], float | None]:
    """Seconds per meta-update along each path the algorithm supports, and the
    compilation's seconds (the ``compiled`` path's first call; None where not timed).
    ``compiled`` is timed last, and only where the run is long enough (module docstring).

    Runs on a copy of the algorithm, with the global RNG state put back, so the
    run itself starts exactly as it would without the measurement. A path that
    raises is an error (a bug must not pass for a slow path); one that runs out
    of GPU memory is recorded as ``None`` (unavailable).
    """
    gen = torch.Generator().manual_seed(12345)
    batch = exp.source.sample(exp.cfg.algorithm.meta_batch, gen, "train").to(exp.device,
                                                                               exp.dtype)
    timings: dict[str, float | None] = {}
    compile_s: float | None = None
    paths = available(exp.algo)
    rng = torch.get_rng_state()
    try:
        for path in sorted(paths, key=lambda p: p == "compiled"):  # compiled last
            if path == "compiled" and not _worth_compiling(exp, timings):
                continue
            probe = copy.deepcopy(exp.algo)
            try:
                first, timings[path] = time_steps(probe, batch, path, exp.device)
                if path == "compiled":
                    compile_s = first
            except torch.cuda.OutOfMemoryError:
                timings[path] = None
            except CompileError:
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
    return timings, compile_s


def run_seconds(exp: Experiment, seconds_per_step: float) -> float:
    """How long the run would train at ``seconds_per_step``: its ``train.iterations``, cut
    at ``train.max_seconds`` where that is set (the run's real budget)."""
    total = seconds_per_step * exp.cfg.train.iterations
    limit = exp.cfg.train.max_seconds
    return total if limit is None else min(total, limit)


def _worth_compiling(exp: Experiment, eager: dict[str, float | None]) -> bool:
    """Whether the fastest eager path would train for :func:`min_compile_s` or more."""
    best = min((v for v in eager.values() if v is not None), default=None)
    return best is None or run_seconds(exp, best) >= min_compile_s(exp)


def min_compile_s(exp: Experiment) -> float:
    """How long a run must train for ``compiled`` to be timed (:data:`MIN_COMPILE_S`, or
    :data:`MIN_INNER_COMPILE_S` where the algorithm compiles its own pieces)."""
    return MIN_INNER_COMPILE_S if exp.algo.compiled_inner else MIN_COMPILE_S


def _effective(exp: Experiment, timings: dict[str, float | None], compile_s: float | None
               ) -> dict[str, float]:
    """Seconds per meta-update with the compilations charged to the run: spread over its
    iterations, or, under ``train.max_seconds``, as the time they take from its budget
    (the compiled path then runs fewer iterations in the same time)."""
    compiling = COMPILES_PER_RUN * (compile_s or 0.0)
    out = {}
    for p, v in timings.items():
        if v is None:
            continue
        if p == "compiled" and compiling:
            limit = exp.cfg.train.max_seconds
            if limit is not None and v * exp.cfg.train.iterations + compiling > limit:
                v = math.inf if compiling >= limit else v * limit / (limit - compiling)
            else:
                v += compiling / exp.cfg.train.iterations
        out[p] = v
    return out


def read_cache(file: Path) -> dict[str, Any]:
    """A JSON measurement cache; {} when missing, unreadable or not an object."""
    try:
        cache = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_cache(file: Path, cache: dict[str, Any]) -> None:
    """Write a measurement cache; an unwritable one only costs a re-measurement."""
    try:
        atomic_write_text(file, json.dumps(cache, indent=1))
    except OSError:
        pass


def _seconds(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _cached(cache: Any, key: str, paths: tuple[str, ...]) -> dict[str, float | None] | None:
    """The cached timings of ``paths`` (``compiled`` may be missing: it was not timed),
    with the compilation's seconds under :data:`COMPILE_KEY` where it was."""
    entry = cache.get(key) if isinstance(cache, dict) else None
    if not isinstance(entry, dict):
        return None
    timed = {k: v for k, v in entry.items() if k != COMPILE_KEY}
    if (set(timed) in (set(paths), set(paths) - {"compiled"})
            and all(v is None or _seconds(v) for v in timed.values())
            and (entry.get(COMPILE_KEY) is None or _seconds(entry[COMPILE_KEY]))):
        return entry
    return None


def recorded(meta: dict[str, Any]) -> str | None:
    """The path a run's meta.json records (``vectorize.path``; older run directories call
    it ``vectorize.mode``), or None."""
    record = meta.get("vectorize")
    if not isinstance(record, dict):
        return None
    value = record.get("path", record.get("mode"))
    return value if value in VECTORIZE else None


def choose(exp: Experiment, requested: str, announce: Callable[[str], None] | None = None
           ) -> tuple[Vectorize, dict[str, Any]]:
    """The batching path to use and how it was decided (meta.json's ``vectorize``: the
    ``path`` chosen for the ``requested`` ``train.vectorize``)."""
    paths = available(exp.algo)
    if requested in VECTORIZE:
        if requested not in paths:
            raise ConfigError(
                f"train.vectorize: {requested} is not available for algorithm "
                f"{exp.cfg.algorithm.kind} with a {exp.cfg.model.kind} network; "
                f"expected one of {', '.join(paths)} or auto")
        return requested, {"requested": requested, "path": requested}  # type: ignore[return-value]
    if len(paths) == 1:
        return paths[0], {"requested": "auto", "path": paths[0], "source": "only path"}
    file = cache_root() / "vectorize.json"
    key = cache_key(exp)
    cache = read_cache(file)
    entry = _cached(cache, key, paths)
    if (entry is not None and "compiled" in paths and "compiled" not in entry
            and _worth_compiling(exp, entry)):
        entry = None  # compiled was not timed for a shorter run; this one may repay it
    source = "cached measurement"
    if entry is None:
        if announce is not None:
            least = min_compile_s(exp) / 60
            compiled = (f"; compiled only for a run of {least:g} minutes or more, after a "
                        "compilation" if "compiled" in paths else "")
            announce(f"timing one meta-update along each batching path "
                     f"({', '.join(paths)}{compiled})")
        timings, compile_s = measure_paths(exp)
        source = "measured"
        cache[key] = {**timings, COMPILE_KEY: compile_s} if "compiled" in timings else timings
        write_cache(file, cache)
    else:
        compile_s = entry.get(COMPILE_KEY)
        timings = {k: v for k, v in entry.items() if k != COMPILE_KEY}
    effective = _effective(exp, timings, compile_s)
    path: Vectorize = min(effective, key=lambda p: effective[p])  # type: ignore[assignment]
    info = {"requested": "auto", "path": path, "source": source,
            "seconds_per_step": {k: None if v is None else round(v, 6)
                                 for k, v in timings.items()}}
    if compile_s is not None:
        info["compile_seconds"] = round(compile_s, 3)
    return path, info
