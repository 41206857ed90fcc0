"""What a trained network expects of its inputs, from a task config alone (no data on disk):
the task's shape (:class:`~.base.TaskShape`) and, for image tasks, how each image is
prepared (:class:`~.image_cache.Preprocess`).

The task builders take their preprocessing from :func:`preprocess_of` too, so a model
loaded for prediction prepares a user's images exactly as its training data was prepared.
"""

from __future__ import annotations

from typing import Any

from .base import TaskShape
from .image_cache import Preprocess


def preprocess_of(cfg: Any) -> Preprocess | None:
    """How ``cfg``'s task turns each image file into ``uint8 [C, H, W]``; None for tasks
    without images (sinusoids).

    - Omniglot: 1-bit (thresholded at 128, not dithered), LANCZOS resize to ``image_size``
      (nearest-neighbour in effect: Pillow resizes 1-bit images so), inverted (strokes 1);
    - mini-ImageNet: RGB, LANCZOS resize, no cropping;
    - image folders: ``L`` (``channels: 1``) or RGB, LANCZOS resize, no cropping.
    """
    if cfg.kind == "omniglot":
        return Preprocess(image_size=cfg.image_size, mode="1", invert=True, resample="lanczos")
    if cfg.kind == "miniimagenet":
        return Preprocess(image_size=cfg.image_size, mode="RGB", resample="lanczos")
    if cfg.kind == "image_folder":
        return Preprocess(image_size=cfg.image_size, mode="L" if cfg.channels == 1 else "RGB",
                          resample="lanczos")
    return None


def task_shape(cfg: Any) -> TaskShape:
    """The problem, one example's shape, the network's output width and (DAML) the width
    of one support observation of ``cfg``'s tasks, as the task source would report them."""
    prep = preprocess_of(cfg)
    if prep is not None:
        return TaskShape("classification", (prep.channels, prep.image_size, prep.image_size),
                         int(cfg.ways))
    if cfg.kind == "sinusoid":
        from .sinusoid import observation_dim

        return TaskShape("regression", (1,), 1, observation_dim=observation_dim(cfg))
    raise ValueError(f"no task shape for task.kind {cfg.kind!r}")
