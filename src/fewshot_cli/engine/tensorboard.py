"""TensorBoard event files beside ``metrics.jsonl`` (``train.tensorboard: true``).

``metrics.jsonl`` stays the record; this mirrors each of its rows: a scalar as
itself, a per-step list as ``name/0``, ``name/1``, ... A new run also declares its
resolved config as hyper-parameters (the HParams view), with validation's and
``fewshot eval``'s results as their metrics (:data:`HPARAM_METRICS`; ``fewshot eval``
writes the ``eval/...`` scalars, :func:`log_evaluation`). Needs the optional
``tensorboard`` package (``pip install "fewshot-cli[tensorboard]"``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def require_tensorboard() -> None:
    """ConfigError unless the tensorboard package can be imported."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard: true needs the tensorboard package; install it "
                          "with: pip install \"fewshot-cli[tensorboard]\"") from None


#: The scalars the HParams view shows beside each run's hyper-parameters: the last
#: validation, and ``fewshot eval``'s query loss and accuracy after the most inner steps
#: (its first protocol).
HPARAM_METRICS = ("val_loss", "val_accuracy", "eval/loss", "eval/accuracy")


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved config as ``section.key -> value``, as the HParams view takes them:
    numbers, booleans and strings as they are, anything else (lists, None) as its text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class TensorBoardLog:
    """Writes ``metrics.jsonl`` rows as TensorBoard scalars under ``folder``.

    ``config`` (a new run's resolved config) is declared as its hyper-parameters;
    ``purge_step`` (on resume) drops events a killed run wrote past its checkpoint.
    """

    def __init__(self, folder: Path, purge_step: int | None = None,
                 config: dict[str, Any] | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)
        if config is not None:
            self._declare(config)

    def _declare(self, config: dict[str, Any]) -> None:
        """The HParams view's session for this run: its hyper-parameters and metric tags,
        in the run's own event files (so the metrics are its scalars)."""
        from torch.utils.tensorboard.summary import hparams

        summaries = hparams(hyperparameters(config), dict.fromkeys(HPARAM_METRICS, 0.0))
        writer = self.writer._get_file_writer()
        for summary in summaries:
            writer.add_summary(summary)

    def log(self, row: dict[str, Any]) -> None:
        step = row["iteration"]
        for key, value in row.items():
            if key == "iteration":
                continue
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    tag = f"{key}/{i}" if isinstance(value, list) else key
                    self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def log_evaluation(folder: Path, results: list[dict[str, Any]], step: int) -> None:
    """``fewshot eval``'s results as ``eval/...`` scalars at ``step`` (the checkpoint's
    iteration) in a run's TensorBoard folder: for every protocol ``eval/<K>shot/loss``
    (and ``accuracy``) after each inner step count, and ``eval/loss``, ``eval/accuracy``
    after the most steps of the first protocol (:data:`HPARAM_METRICS`)."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for i, result in enumerate(results):
            shots = result.get("settings", {}).get("shots")
            per_step = result.get("per_step") or []
            for row in per_step:
                for metric in ("loss", "accuracy"):
                    value = (row.get(metric) or {}).get("mean")
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        writer.add_scalar(f"eval/{shots}shot/{metric}/step{row['step']}",
                                          value, step)
                        if i == 0 and row is per_step[-1]:
                            writer.add_scalar(f"eval/{metric}", value, step)
    finally:
        writer.close()
