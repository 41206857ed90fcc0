"""The exported model file of ``fewshot export``: one meta-learned model, loadable without
its run directory or training data (``fewshot_cli.load``).

A plain dict saved with ``torch.save`` (tensors and plain data only, read back with
``weights_only=True``, as the run directory's checkpoints are):

- ``kind``: ``"fewshot-model"``; ``format``: :data:`FORMAT` (a file of a higher format is
  refused with one line: it was written by a newer fewshot);
- ``config``: the resolved config the model was trained with (a dict);
- ``algorithm``: the algorithm's ``state_dict`` (the network and every meta-learned tensor);
- ``task``: the task shape (``problem``, ``input_shape``, ``output_dim``,
  ``observation_dim``); ``preprocess``: how an image is prepared (``image_size``, ``mode``,
  ``invert``, ``resample``), or None for tasks without images;
- ``origin``: the run, checkpoint and iteration it came from, and the fewshot version.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .engine import checkpoint
from .errors import RunDirError
from .tasks.base import TaskShape
from .tasks.image_cache import Preprocess

KIND = "fewshot-model"
FORMAT = 1


def save(path: Path, config: dict[str, Any], weights: dict[str, torch.Tensor],
         shape: TaskShape, prep: Preprocess | None, origin: dict[str, Any]) -> None:
    """Write an exported model to ``path`` atomically (the weights moved to the CPU)."""

    state = {"kind": KIND, "format": FORMAT, "config": config,
             "algorithm": {k: v.detach().cpu() for k, v in weights.items()},
             "task": {**asdict(shape), "input_shape": list(shape.input_shape)},
             "preprocess": None if prep is None else asdict(prep), "origin": origin}
    checkpoint.write(path, state, "model file")


def load(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], TaskShape,
                              Preprocess | None, dict[str, Any]]:
    """Read an exported model: its config (a dict), weights, task shape, preprocessing and
    origin; one :class:`RunDirError` line for anything that is not such a file."""
    data = checkpoint.safe_load(path, "cpu", "model file")
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise RunDirError(f"{path}: not a fewshot model file (fewshot export RUN FILE writes "
                          "one) nor a run directory")
    fmt = data.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise RunDirError(f"{path}: not a fewshot model file (its format is {fmt!r})")
    if fmt > FORMAT:
        raise RunDirError(f"{path}: written by a newer fewshot (model file format {fmt}; this "
                          f"version reads format {FORMAT} and older): upgrade fewshot to load it")
    try:
        task = data["task"]
        shape = TaskShape(task["problem"], tuple(int(n) for n in task["input_shape"]),
                          int(task["output_dim"]), task.get("observation_dim"))
        prep = None if data["preprocess"] is None else Preprocess(**data["preprocess"])
        config, weights = data["config"], data["algorithm"]
        if not isinstance(config, dict) or not isinstance(weights, dict):
            raise TypeError("config or weights")
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path}: damaged fewshot model file ({type(e).__name__}: {e})"
                          ) from None
    return config, weights, shape, prep, dict(data.get("origin") or {})
