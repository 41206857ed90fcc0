"""Task distributions. ``build(cfg.task)`` returns a :class:`TaskSource`.

Adding a task is one module with a ``build(cfg)`` function and one line in
``_BUILDERS``. Modules are imported lazily so that a sinusoid run never pays
for image-loading imports.
"""

from __future__ import annotations

import importlib

from .base import Split, TaskBatch, TaskSource

_BUILDERS: dict[str, str] = {
    "sinusoid": "sinusoid",
    "omniglot": "omniglot",
    "miniimagenet": "miniimagenet",
    "image_folder": "image_folder",
}


def build(cfg) -> TaskSource:  # noqa: ANN001 - any task config section
    """Build the task source named by ``cfg.kind``."""
    module = importlib.import_module(f"{__name__}.{_BUILDERS[cfg.kind]}")
    return module.build(cfg)


__all__ = ["Split", "TaskBatch", "TaskSource", "build"]
