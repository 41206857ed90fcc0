"""The Python API: a meta-learned model, adapted to a user's own few examples.

    import fewshot_cli
    model = fewshot_cli.load("runs/omniglot-5w1s-maml-<stamp>")   # or an exported file
    adapted = model.adapt(["a.png", "b.png", ...], ["alpha", "beta", ...])
    adapted.predict(["query.png"])          # -> ["beta"]
    adapted.predict_proba(["query.png"])    # -> tensor [1, N], columns in adapted.classes

:func:`load` rebuilds the network and the algorithm from the run's config alone (the task's
shape and image preprocessing come from the config, :mod:`.tasks.shapes`), so the training
data need not be on disk. :meth:`MetaModel.adapt` runs the algorithm's own test-time
adaptation, the one ``fewshot eval`` scores (:meth:`Algorithm.adapt_one`), for the run's
test-time number of steps; :meth:`AdaptedModel.predict` is the adapted network's forward
pass, all inputs in one batch (a batch-norm network normalises them together, as
``fewshot eval`` does with ``query_batch: all``).

DAML adapts from a demonstration that carries no target labels:
:meth:`DemonstrationModel.adapt` takes the demonstration's inputs and, where the run's learned
loss reads them (``algorithm.observation``), its observations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import __version__, algorithms, exported, models
from .algorithms import Algorithm
from .config import Config, validate
from .errors import ConfigError, DataError, InputError, RunDirError
from .rundir import RunDir
from .tasks.base import TaskBatch, TaskShape
from .tasks.image_cache import ConversionError, Preprocess, decode_image, prepare_image
from .tasks.shapes import preprocess_of, task_shape

#: What may stand for images: file paths or opened PIL images.
ImageLike = str | Path | Image.Image


class AdaptedModel:
    """A model adapted to one support set. ``classes``: the support set's labels in the
    order of :meth:`predict_proba`'s columns (None for regression)."""

    def __init__(self, owner: MetaModel, params: dict[str, torch.Tensor],
                 classes: list[Any] | None, steps: int) -> None:
        self._owner, self._params = owner, params
        self.classes = classes
        self.steps = steps

    def __call__(self, x: Any) -> torch.Tensor:
        """The adapted network's raw output for ``x`` (logits, or values), on the CPU."""
        inputs = self._owner.inputs(x)
        return self._owner.algorithm.predict(self._params, inputs).float().cpu()

    def predict(self, x: Any) -> list[Any] | torch.Tensor:
        """Classification: the predicted label of each input (a list, labels as given to
        ``adapt``); regression: the predicted values, a tensor ``[n, outputs]``."""
        out = self(x)
        if self.classes is None:
            return out
        return [self.classes[i] for i in out.argmax(-1).tolist()]

    def predict_proba(self, x: Any) -> torch.Tensor:
        """Class probabilities ``[n, N]`` (softmax of the logits), columns in
        :attr:`classes`' order. Classification only."""
        if self.classes is None:
            raise InputError("predict_proba: this model does regression; use predict")
        return self(x).softmax(-1)


class MetaModel:
    """A meta-learned model (:func:`load`): the network's meta-learned initialisation and
    whatever the algorithm meta-learned with it (step sizes, a learned loss, an LSTM
    optimiser), ready to adapt to a new task."""

    def __init__(self, cfg: Config, algorithm: Algorithm, shape: TaskShape,
                 preprocess: Preprocess | None, device: torch.device, origin: dict[str, Any]
                 ) -> None:
        self.config = cfg
        self.algorithm = algorithm
        self.shape = shape
        self.preprocess = preprocess
        self.device = device
        self.dtype = next(algorithm.parameters()).dtype
        #: Where the model came from: run directory or file, checkpoint, iteration.
        self.origin = origin

    # -- what the model is ----------------------------------------------------------
    @property
    def kind(self) -> str:
        """The algorithm (``algorithm.kind``)."""
        return self.config.algorithm.kind

    @property
    def problem(self) -> str:
        """``classification`` or ``regression``."""
        return self.shape.problem

    @property
    def ways(self) -> int | None:
        """The number of classes of a task (the trained head's N); None for regression."""
        return self.shape.output_dim if self.problem == "classification" else None

    @property
    def steps(self) -> int:
        """The test-time number of inner steps (the run's ``eval.steps``, else
        ``algorithm.eval_inner_steps``): what ``fewshot eval`` adapts for."""
        return self.config.eval.steps or self.config.algorithm.eval_inner_steps

    def __repr__(self) -> str:
        what = f"{self.ways}-way" if self.ways else "regression"
        return (f"<fewshot MetaModel {self.kind} {self.config.task.kind} {what}, inputs "
                f"{list(self.shape.input_shape)}, {self.steps} steps, on {self.device}>")

    # -- inputs -----------------------------------------------------------------------
    def transform(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images (paths or PIL images) as the network's inputs ``[n, C, H, W]`` in
        ``[0, 1]``, prepared exactly as the run's training images were (mode, inversion,
        size, resampling: :attr:`preprocess`)."""
        if self.preprocess is None:
            raise InputError(f"transform: this model's tasks ({self.config.task.kind}) have "
                             "no images")
        items = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
        if not items:
            raise InputError("transform: no images given")
        arrays = [self._prepare(item) for item in items]
        return torch.from_numpy(np.stack(arrays)).float().div_(255.0)

    def _prepare(self, item: ImageLike) -> np.ndarray:
        prep = self.preprocess
        assert prep is not None
        if isinstance(item, Image.Image):
            try:
                return prepare_image(item, prep)
            except ConversionError as e:
                raise InputError(f"image {item!r}: {e}") from None
        if not Path(item).is_file():
            raise DataError(f"{item}: expected an image file, found no such file")
        return decode_image(str(item), prep)

    def inputs(self, x: Any) -> torch.Tensor:
        """``x`` as a batch of inputs ``[n, *input_shape]`` on the model's device and dtype:
        images (paths, PIL) through :meth:`transform`, arrays and tensors as they are
        (``uint8`` images scaled to ``[0, 1]``), a single example or a flat list of scalars
        (one-input regression) given a batch dimension."""
        if isinstance(x, (str, Path, Image.Image)) or (
                isinstance(x, (list, tuple)) and x and isinstance(x[0], (str, Path, Image.Image))):
            t = self.transform(x)
        else:
            t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
            if t.dtype == torch.uint8:
                t = t.float() / 255.0
        shape = tuple(self.shape.input_shape)
        if tuple(t.shape) == shape:
            t = t.unsqueeze(0)
        elif shape == (1,) and t.dim() == 1:
            t = t.unsqueeze(-1)
        if tuple(t.shape[1:]) != shape or t.shape[0] == 0:
            raise InputError(f"inputs: expected a batch of shape [n, {', '.join(map(str, shape))}]"
                             f" (n >= 1), found {list(t.shape)}")
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise InputError(f"inputs: expected numbers, found {t.dtype}")
        return t.to(self.device, self.dtype)

    def _labels(self, y: Any, n: int) -> tuple[torch.Tensor, list[Any]]:
        """Class indices of the support labels ``y`` (any values; N distinct ones) and the
        classes in index order (sorted where they can be)."""
        values = y.tolist() if isinstance(y, (torch.Tensor, np.ndarray)) else list(y)
        if len(values) != n:
            raise InputError(f"support: {n} inputs but {len(values)} labels")
        seen = list(dict.fromkeys(values))
        try:
            classes = sorted(seen)
        except TypeError:
            classes = seen
        if len(classes) != self.ways:
            raise InputError(f"support: {len(classes)} classes given, but this model was "
                             f"meta-trained on {self.ways}-way tasks: give examples of "
                             f"exactly {self.ways} classes")
        index = {c: i for i, c in enumerate(classes)}
        return torch.tensor([index[v] for v in values], dtype=torch.int64), classes

    def export(self, path: str | Path) -> None:
        """Write this model to one file that :func:`load` reads without the run directory
        (:mod:`.exported`)."""
        exported.save(Path(path), self.config.to_dict(), self.algorithm.state_dict(),
                      self.shape, self.preprocess, self.origin)

    # -- adaptation ---------------------------------------------------------------------
    def adapt(self, support_x: Any, support_y: Any, steps: int | None = None) -> AdaptedModel:
        """Adapt to a support set: inputs (images, an array or a tensor) and their labels
        (classification: any N distinct values, N the trained ways) or targets
        (regression). ``steps``: inner steps (default :attr:`steps`).

        Classification support examples are put in ``fewshot eval``'s order (the first
        example of each class, then the second, ...), which algorithms that adapt on
        batches of the support set (Reptile, the meta-LSTM's ``inner_batch``) rely on."""
        x = self.inputs(support_x)
        if self.problem == "classification":
            y, classes = self._labels(support_y, x.shape[0])
            order = _interleaved(y)
            x, y = x[order], y[order]
        else:
            classes = None
            y = self._targets(support_y, x.shape[0])
        return self._adapt(x, y.to(self.device), classes, steps)

    def _targets(self, y: Any, n: int, width: int | None = None) -> torch.Tensor:
        """``y`` as ``[n, width]`` values (default width: the network's outputs)."""
        width = self.shape.output_dim if width is None else width
        t = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y, dtype=float))
        t = t.reshape(n, -1) if t.numel() == n * width else t
        if tuple(t.shape) != (n, width):
            raise InputError(f"support: expected {n} targets of {width} value(s), found "
                             f"shape {list(t.shape)}")
        return t.to(self.device, self.dtype)

    def _adapt(self, x: torch.Tensor, y: torch.Tensor, classes: list[Any] | None,
               steps: int | None) -> AdaptedModel:
        steps = self.steps if steps is None else int(steps)
        if steps < 0:
            raise InputError(f"steps: expected an integer >= 0, found {steps}")
        empty_x, empty_y = x[:0].unsqueeze(0), y[:0].unsqueeze(0)
        batch = TaskBatch(x.unsqueeze(0), y.unsqueeze(0), empty_x, empty_y)
        with torch.no_grad():  # inner gradients are still taken (algorithms.params)
            params = self.algorithm.adapt_one(batch, 0, steps)
        return AdaptedModel(self, params, classes, steps)


class DemonstrationModel(MetaModel):
    """A DAML model: it adapts from a demonstration (inputs, and observations where its
    learned loss reads them), never from target labels (Yu et al. 2018)."""

    def adapt(self, demonstration: Any, observation: Any = None,  # type: ignore[override]
              steps: int | None = None) -> AdaptedModel:
        """Adapt to a demonstration: its inputs and, when the run's learned loss reads them
        (``algorithm.observation: true``), its observations (regression: values; one per
        input). Predictions are the target domain's (labels or values)."""
        x = self.inputs(demonstration)
        reads = self.algorithm.observation_dim > 0
        classes = None
        if reads and observation is None:
            raise InputError("adapt: this model's learned loss reads the demonstration's "
                             "observations (algorithm.observation: true); pass observation=")
        if not reads and observation is not None:
            raise InputError("adapt: this model's learned loss reads the demonstration's "
                             "inputs only; leave observation out")
        if self.problem == "classification":
            if observation is None:
                y = torch.zeros(x.shape[0], dtype=torch.int64)
            else:
                y, classes = self._labels(observation, x.shape[0])
            y = y.to(self.device)
        elif observation is None:  # what the task gives: observations of no features
            y = torch.zeros(x.shape[0], 0, device=self.device, dtype=self.dtype)
        else:
            y = self._targets(observation, x.shape[0], self.algorithm.observation_dim)
        adapted = self._adapt(x, y, classes, steps)
        if self.problem == "classification" and adapted.classes is None:
            adapted.classes = list(range(self.shape.output_dim))
        return adapted


def _interleaved(y: torch.Tensor) -> torch.Tensor:
    """The order putting examples shot-major: each class's first example, then each
    class's second, ... (``fewshot eval``'s support layout, position ``p * N + j``)."""
    rank = torch.zeros_like(y)
    counts: dict[int, int] = {}
    for i, c in enumerate(y.tolist()):
        rank[i] = counts.get(c, 0)
        counts[c] = rank[i].item() + 1
    key = rank * (int(y.max()) + 1) + y
    return torch.argsort(key, stable=True)


def load(path: str | Path, device: str | None = None, checkpoint: str | None = None
         ) -> MetaModel:
    """A meta-learned model from a run directory (its ``checkpoint``, ``best`` or
    ``last``; default the run's ``eval.checkpoint``) or a file of ``fewshot export``, on
    ``device`` (``cpu``, ``cuda``, ``cuda:N``; default CUDA when available). The training
    data is not needed. Errors are :class:`fewshot_cli.errors.FewshotError` with one line."""
    from .engine import checkpoint as ckpt
    from .engine.setup import resolve_device

    source = Path(path).expanduser()
    if source.is_dir():
        run = RunDir.open(source)
        cfg = run.read_config()
        which = checkpoint or cfg.eval.checkpoint
        if which not in ("best", "last"):
            raise InputError(f"checkpoint: expected best or last, found {which!r}")
        fallback = run.best_fallback() if which == "best" else None
        if fallback is not None and checkpoint is not None:
            raise RunDirError(f"{run.checkpoint_path('best')} does not exist (the run has no "
                              f"validation split, or has not validated yet); it has "
                              f"{fallback}: ask for the last checkpoint")
        file = run.resolve_checkpoint(which)
        state = ckpt.load(file, map_location="cpu")
        ckpt.check_config(cfg, state, file)
        shape, prep, weights = task_shape(cfg.task), preprocess_of(cfg.task), state["algorithm"]
        origin = {"run": str(run.path), "checkpoint": file.name,
                  "iteration": state.get("iteration"), "fewshot": __version__}
    elif source.is_file():
        data, weights, shape, prep, origin = exported.load(source)
        try:
            cfg = validate(data, str(source))
        except ConfigError as e:
            raise RunDirError(f"{source}: its config: {e}") from None
        origin = {**origin, "file": str(source)}
    else:
        raise RunDirError(f"{source}: expected a run directory or a model file of fewshot "
                          "export, found no such path")
    dev = resolve_device(device or "auto")
    return build(cfg, shape, prep, weights, dev, origin)


def build(cfg: Config, shape: TaskShape, prep: Preprocess | None,
          weights: dict[str, torch.Tensor], device: torch.device, origin: dict[str, Any]
          ) -> MetaModel:
    """The model of ``cfg`` for tasks of ``shape``, holding ``weights``, on ``device``."""
    from .engine.setup import DTYPES

    torch_state = torch.random.get_rng_state()
    try:  # building initialises weights at random; the caller's random state is kept
        net = models.build(cfg.model, shape)
        algo = algorithms.build(cfg, net, shape)
    finally:
        torch.random.set_rng_state(torch_state)
    from .engine.checkpoint import load_weights

    load_weights(algo, weights, origin.get("file") or origin.get("run"), "its config")
    algo = algo.to(device=device, dtype=DTYPES[cfg.train.dtype])
    cls = DemonstrationModel if cfg.algorithm.kind == "daml" else MetaModel
    return cls(cfg, algo, shape, prep, device, origin)
