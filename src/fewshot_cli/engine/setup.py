"""Building the pieces of a run from its config: device, tasks, network, algorithm."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import algorithms, models, tasks
from ..algorithms import Algorithm, Settings
from ..config import DEVICE_PATTERN, Config
from ..errors import ConfigError
from ..tasks import TaskSource
from .distributed import Sync

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: ``train.autocast`` -> the dtype of meta-training's forward passes (None: no autocast).
AUTOCAST: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16}


def resolve_device(spec: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable device is an error."""
    if not DEVICE_PATTERN.fullmatch(spec):
        raise ConfigError(f"device: expected auto, cpu, cuda, cuda:N or mps, found {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {spec} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {spec} requested but MPS is not available here")
    return device


@dataclass
class Experiment:
    """Everything built from one config; ``sync`` is the run's process group (the one in
    the algorithm's settings)."""

    cfg: Config
    device: torch.device
    dtype: torch.dtype
    source: TaskSource
    algo: Algorithm
    sync: Sync = field(default_factory=Sync)


def images_on_device(cfg: Config, source: TaskSource, device: torch.device) -> bool:
    """Whether ``task.images_on_device`` puts the source's images on ``device``: ``on``, or
    ``auto`` on a CUDA device with at least four times their size in memory; never on a
    CPU or for a source without images."""
    setting = getattr(cfg.task, "images_on_device", "off")
    if device.type == "cpu" or setting == "off" or not hasattr(source, "place"):
        return False
    if setting == "on":
        return True
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return 4 * getattr(source, "image_bytes", 0) <= total


def settings(cfg: Config, source: TaskSource, sync: Sync) -> Settings:
    """How the algorithm runs: ``train.autocast``, ``train.query_batch`` (``per_class``: one
    query per class in each batch), ``train.cuda_graphs`` and the process group."""
    return Settings(
        autocast=AUTOCAST[getattr(cfg.train, "autocast", "off")],
        query_batch=source.output_dim if cfg.train.query_batch == "per_class" else None,
        cuda_graphs=cfg.train.cuda_graphs,
        group=sync)


def build_experiment(cfg: Config, device: torch.device | None = None,
                     sync: Sync | None = None) -> Experiment:
    """Build tasks, network (initialised from ``cfg.seed``) and algorithm on ``device``,
    in the process group ``sync`` (one process by default)."""
    device = device or resolve_device(cfg.device)
    dtype = DTYPES[cfg.train.dtype]
    if (getattr(cfg.algorithm, "checkpoint_inner_steps", False)
            and cfg.train.vectorize in ("vmap", "compiled")):
        raise ConfigError("algorithm.checkpoint_inner_steps: needs train.vectorize loop, fused "
                          "or auto (vmap cannot recompute an inner step), found "
                          f"{cfg.train.vectorize}")
    source = tasks.build(cfg.task)
    if images_on_device(cfg, source, device):
        source.place(device)  # type: ignore[attr-defined]
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, source)
    sync = sync or Sync()
    algo = algorithms.build(cfg, model, source, settings(cfg, source, sync))
    return Experiment(cfg, device, dtype, source, algo.to(device=device, dtype=dtype), sync)
