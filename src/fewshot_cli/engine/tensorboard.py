"""TensorBoard event files beside ``metrics.jsonl`` (``train.tensorboard: true``).

``metrics.jsonl`` stays the record; this mirrors each of its rows: a scalar as
itself, a per-step list as ``name/0``, ``name/1``, ... Needs the optional
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


class TensorBoardLog:
    """Writes ``metrics.jsonl`` rows as TensorBoard scalars under ``folder``.

    ``purge_step`` (on resume) drops events a killed run wrote past its checkpoint.
    """

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

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
