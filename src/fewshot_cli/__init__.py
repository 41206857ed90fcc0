"""fewshot: a command-line experiment runner for optimization-based few-shot meta-learning.

The Python API is :func:`load`: a meta-learned model to ``adapt`` to your own few examples
(:mod:`fewshot_cli.meta_model`). Importing the package loads nothing heavy; ``load`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .meta_model import MetaModel

__version__ = "0.1.0"


def load(path: str | Path, device: str | None = None, checkpoint: str | None = None
         ) -> MetaModel:
    """A meta-learned model from a run directory or a ``fewshot export`` file, on ``device``
    (default CUDA when available), without the training data; ``checkpoint``: ``best`` or
    ``last`` of a run (default its ``eval.checkpoint``). See
    :func:`fewshot_cli.meta_model.load`."""
    from .meta_model import load as _load

    return _load(path, device=device, checkpoint=checkpoint)


__all__ = ["__version__", "load"]
