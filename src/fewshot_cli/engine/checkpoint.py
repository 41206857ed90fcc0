"""The checkpoint format: what ``last.pt`` and ``best.pt`` hold, written
atomically and read back safely.

Format 2 (a plain dict; only tensors and plain Python data, so it loads with
``torch.load(weights_only=True)`` and never runs code):

- ``format``, ``iteration``, ``config`` (the resolved config it was trained
  with, as a dict), ``algorithm`` (the algorithm's ``state_dict``);
- ``last`` only: ``optimizer``, ``scheduler`` (or None), ``rng`` (the task
  generator, torch, CUDA, Python and NumPy states) and ``trainer`` (elapsed
  training time, best validation loss, the open log window, the batching path);
- ``best`` only: ``val_loss``.

Format 1 (the first release: no config, no trainer state) is still read for
``eval`` and ``plot``; it cannot be resumed.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RunDirError
from ..files import atomic_write

FORMAT = 2


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (an earlier file survives any failure).

    The checkpoint is serialised in memory first, so that a failing disk (full, read-only,
    gone) surfaces as the ``OSError`` of writing bytes, with its cause, rather than as
    ``torch.save``'s ``RuntimeError`` from inside its zip writer."""
    write(path, {"format": FORMAT, **state}, "checkpoint")


def write(path: Path, data: Any, what: str) -> None:
    """``torch.save(data)`` to ``path`` atomically, serialised in memory first (see
    :func:`save`); a failing disk is one :class:`RunDirError` line (``what``: the file's
    kind)."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    try:
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as e:
        raise RunDirError(f"{path}: cannot write {what} ({e.strerror or e}); "
                          f"the previous {what} is kept") from None


def load_weights(module: torch.nn.Module, weights: dict[str, Any], path: Any,
                 against: str = "the run's config.yaml") -> None:
    """``module.load_state_dict(weights)``; weights of another shape or name are one
    :class:`ConfigError` line: ``path`` does not match ``against``."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0][:200]
        raise ConfigError(f"{path}: does not match {against} ({msg})") from None


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; one clear error for anything else."""
    if not path.is_file():
        raise RunDirError(f"{path}: no checkpoint yet (has training written one?)")
    state = safe_load(path, map_location, "checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("algorithm"), dict):
        raise RunDirError(f"{path}: not a fewshot checkpoint (no algorithm state dict)")
    fmt = state.get("format")
    if fmt not in (1, FORMAT):
        raise RunDirError(f"{path}: checkpoint format {fmt!r} is not one this version reads "
                          f"(1 or {FORMAT})")
    if not isinstance(state.get("iteration", 0), int):
        raise RunDirError(f"{path}: not a fewshot checkpoint (iteration is not a number)")
    if fmt == FORMAT and not isinstance(state.get("config"), dict):
        raise RunDirError(f"{path}: not a fewshot checkpoint (no config)")
    return state


def safe_load(path: Path, map_location: str | torch.device, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code; any
    failure is one :class:`RunDirError` line (``what``: the kind of file expected)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False; never pass that advice on.
        if "GLOBAL" in str(e):
            raise RunDirError(
                f"{path}: refused: the file holds pickled Python code or objects, not only "
                f"tensors and plain data, so it is not a fewshot {what}; it was not loaded"
            ) from None
        raise RunDirError(f"{path}: corrupt or unreadable {what} (not a torch {what} file)"
                          ) from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch.load raise
        reason = (f"truncated, or not a complete torch {what} file"
                  if isinstance(e, (RuntimeError, EOFError, zipfile.BadZipFile)) or
                  (isinstance(e, OSError) and path.is_file()) else _first_line(e))
        raise RunDirError(f"{path}: corrupt or unreadable {what} ({reason})") from None
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# ----------------------------------------------------------------------------- RNG state
def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run uses: its task generator, torch, CUDA, Python, NumPy."""
    np_state = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Put back what :func:`rng_state` saved."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))


# ----------------------------------------------------------------------------- config check
#: Config keys that may differ between a checkpoint and the run's config.yaml:
#: where the data lives, how long and how to train or evaluate, the device.
FREE_KEYS = ("name", "device", "train.", "eval.", "task.root", "task.download", "task.cache_dir",
             "task.images_on_device",
             # how the meta-LSTM's learner normalises at meta-test: not what was trained
             "algorithm.eval_batch_norm", "algorithm.bn_momentum")


def config_differences(trained: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: checkpoint value -> config value`` for every key outside :data:`FREE_KEYS`
    that the run's config changed since the checkpoint was written."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(a.keys() | b.keys()):
                walk(a.get(k), b.get(k), f"{prefix}{k}.")
            return
        key = prefix[:-1]
        if a != b and not any(key == f or key.startswith(f) for f in FREE_KEYS if f):
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} in config.yaml")

    walk(trained, current, "")
    return out


def check_config(cfg: Any, state: dict[str, Any], path: Any) -> None:
    """ConfigError naming the keys where config.yaml no longer matches the checkpoint."""
    trained = state.get("config")
    if not isinstance(trained, dict):
        return  # format 1: no config stored
    diffs = config_differences(trained, cfg.to_dict())
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ConfigError(f"{path}: the run's config.yaml was changed after training: "
                          f"{diffs[0]}{more}; restore config.yaml")
