"""The config schema: the top-level :class:`Config` and its sections.

A config file is YAML with top-level keys ``name``, ``seed``, ``device`` and the sections
``task``, ``model``, ``algorithm``, ``train`` and ``eval``. Every key has a default. The
``algorithm`` section's kinds are in :mod:`.algorithm`. Reading a file, ``--set`` overrides
and the error lines are in :mod:`.loading`, :mod:`.overrides` and :mod:`.messages`, which
import this module and never the other way round.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from .algorithm import ALGORITHM_SECTIONS, AlgorithmConfig, MAMLConfig
from .base import PosFloat, PosInt, Range, Section, Seed, check_range
from .quoting import quote

#: Device names ``device`` and ``--device`` accept (``fewshot_cli.engine.setup`` checks
#: that the device exists).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")


# --------------------------------------------------------------------------- tasks
Problem = Literal["regression", "classification"]


class Demonstration(Section):
    """A demonstration from another domain in place of the labelled support set (DAML,
    Yu et al. 2018): ``task.shots`` inputs, each shown only through the observation
    ``scale * y + shift + N(0, noise_std^2)`` of the task's curve (``observe: true``) or
    not at all (``observe: false``: the inputs alone, where they lie telling the task).
    The support set then never holds target values."""

    x_range: Range | None = None
    x_ranges: list[Range] | None = None
    observe: bool = True
    scale: float = 0.5
    shift: float = 1.0
    noise_std: Annotated[float, Field(ge=0)] = 0.05

    @field_validator("x_range")
    @classmethod
    def _ordered(cls, v: Range | None) -> Range | None:
        return v if v is None else check_range(v, "x_range")

    @field_validator("x_ranges")
    @classmethod
    def _each_ordered(cls, v: list[Range] | None) -> list[Range] | None:
        for r in v or []:
            check_range(r, "each of x_ranges")
        return v

    @model_validator(mode="after")
    def _one_range(self) -> Demonstration:
        if self.x_range is not None and self.x_ranges is not None:
            raise ValueError("give x_range (one interval) or x_ranges (one per phase), not both")
        return self


class SinusoidTask(Section):
    """Sinusoid regression (Finn et al. 2017, sec. 5.1): y = A sin(x - phase) + noise."""

    problem: ClassVar[Problem] = "regression"
    kind: Literal["sinusoid"] = "sinusoid"
    amplitude: Range = (0.1, 5.0)
    phase: Range = (0.0, math.pi)
    phase_choices: list[float] | None = None
    x_range: Range = (-5.0, 5.0)
    shots: PosInt = 10
    queries: PosInt = 10
    noise_std: Annotated[float, Field(ge=0)] = 0.0
    demonstration: Demonstration | None = None

    @model_validator(mode="after")
    def _ranges_per_phase(self) -> SinusoidTask:
        demo = self.demonstration
        if demo is not None and demo.x_ranges is not None and (
                not self.phase_choices or len(demo.x_ranges) != len(self.phase_choices)):
            raise ValueError("demonstration.x_ranges needs one interval per entry of "
                             f"phase_choices ({len(self.phase_choices or [])}), found "
                             f"{len(demo.x_ranges)}")
        return self

    @field_validator("amplitude", "phase", "x_range")
    @classmethod
    def _ordered(cls, v: Range, info: Any) -> Range:
        return check_range(v, info.field_name)

    @field_validator("phase_choices")
    @classmethod
    def _nonempty(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not v:
            raise ValueError("phase_choices must list at least one phase, or be null")
        return v


class ImageTask(Section):
    """Common keys of N-way K-shot image classification tasks."""

    problem: ClassVar[Problem] = "classification"
    ways: Annotated[int, Field(ge=2)] = 5
    shots: PosInt = 1
    queries: PosInt = 1
    image_size: Annotated[int, Field(ge=4)] = 28
    cache_dir: str | None = None
    #: Keep the decoded images on the run's GPU and build each sampled task there, so only
    #: the drawn indices cross from the CPU (the same tasks either way). ``auto``: on a GPU
    #: whose memory is at least four times the images'; never on a CPU.
    images_on_device: Literal["auto", "on", "off"] = "auto"

    @field_validator("images_on_device", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class OmniglotTask(ImageTask):
    """Omniglot (Lake et al. 2015) characters as classes."""

    kind: Literal["omniglot"] = "omniglot"
    root: str = "data/omniglot"
    download: bool = False
    split: Literal["maml", "background", "vinyals"] = "maml"
    train_classes: PosInt = 1200
    val_classes: PosInt = 100
    rotations: bool | Literal["per_task"] = True
    split_seed: Seed = 1

    @model_validator(mode="after")
    def _class_counts(self) -> OmniglotTask:
        # Omniglot has 1623 characters, 964 of them in images_background.
        if self.split == "maml" and not self.val_classes < self.train_classes < 1623:
            raise ValueError(
                "expected val_classes < train_classes < 1623 (Omniglot's characters), "
                f"found val_classes {self.val_classes} and train_classes {self.train_classes}"
            )
        if self.split == "background" and self.val_classes >= 964:
            raise ValueError(
                "expected val_classes < 964 (the characters of images_background), "
                f"found {self.val_classes}"
            )
        return self


class MiniImagenetTask(ImageTask):
    """mini-ImageNet with the Ravi & Larochelle (2017) class split."""

    kind: Literal["miniimagenet"] = "miniimagenet"
    root: str = "data/miniimagenet"
    image_size: Annotated[int, Field(ge=4)] = 84
    queries: PosInt = 15


class ImageFolderTask(ImageTask):
    """A user's own images: ``root/<split>/<class>/*.{png,jpg,jpeg}``."""

    kind: Literal["image_folder"] = "image_folder"
    root: str = "data/images"
    image_size: Annotated[int, Field(ge=4)] = 84
    channels: Literal[1, 3] = 3


TaskConfig = Annotated[
    Union[SinusoidTask, OmniglotTask, MiniImagenetTask, ImageFolderTask],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- models
class MLPModel(Section):
    """Fully connected network: input -> hidden... -> output."""

    kind: Literal["mlp"] = "mlp"
    hidden: list[PosInt] = [40, 40]
    activation: Literal["relu", "tanh"] = "relu"


class Conv4Model(Section):
    """Four conv blocks + linear head (Finn et al. 2017; Vinyals et al. 2016)."""

    kind: Literal["conv4"] = "conv4"
    filters: PosInt = 64
    strided: bool = False
    batch_norm: bool = True
    #: ``torch``: torch's default initialisation; ``reference``: the reference MAML's
    #: (cbfinn/maml, maml.py ``construct_conv_weights``): Xavier-uniform convolutions, zero
    #: biases, the head N(0, 1) after strided blocks (Omniglot) or Xavier-uniform after
    #: max-pooled ones (mini-ImageNet).
    init: Literal["torch", "reference"] = "torch"
    #: false: batch norm has no learned scale (a constant 1), as the reference MAML's
    #: (``tf.contrib.layers.batch_norm``'s default ``scale=False``, utils.py ``normalize``).
    batch_norm_scale: bool = True

    UNSTATED: ClassVar[dict[str, Any]] = {"init": "torch", "batch_norm_scale": True}


ModelConfig = Annotated[Union[MLPModel, Conv4Model], Field(discriminator="kind")]


# --------------------------------------------------------------------------- train, eval
class TrainConfig(Section):
    """Outer loop, logging, validation and checkpoint cadence."""

    iterations: PosInt = 70000
    log_every: PosInt = 100
    val_every: PosInt = 1000
    val_tasks: PosInt = 100
    checkpoint_every: PosInt = 1000
    vectorize: Literal["auto", "vmap", "loop", "fused", "compiled"] = "auto"
    max_seconds: PosFloat | None = None
    dtype: Literal["float32", "float64"] = "float32"
    #: ``bf16``: meta-training's forward passes (inner loop and outer loss) under
    #: ``torch.autocast`` to bfloat16; parameters, optimiser and evaluation stay ``dtype``.
    autocast: Literal["off", "bf16"] = "off"

    @field_validator("autocast", mode="before")
    @classmethod
    def _autocast(cls, v: Any, info: Any) -> Any:
        v = "off" if v is False else v  # YAML reads a bare off as false
        if v == "bf16" and info.data.get("dtype") == "float64":
            raise ValueError("bf16 autocast needs train.dtype: float32, found float64")
        return v

    #: Classification: how meta-training passes a task's queries through the network,
    #: ``all`` in one batch or ``per_class`` in batches of one image per class (batch norm
    #: then normalises each such batch, as at test with ``eval.query_batch: per_class``).
    query_batch: Literal["all", "per_class"] = "all"
    #: The ``compiled`` path on a CUDA device: replay the compiled meta-gradient as CUDA
    #: graphs (``torch.compile(mode="reduce-overhead")``); nothing elsewhere.
    cuda_graphs: bool = False
    keep_checkpoints: Annotated[int, Field(ge=0)] = 0
    tensorboard: bool = False
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    select: Literal["median", "mean"] = "median"
    dist_timeout: PosFloat = 900.0
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"


class EvalConfig(Section):
    """Defaults of ``fewshot eval`` (each can be overridden on its command line)."""

    tasks: PosInt = 600
    seed: Seed = 20170301
    steps: PosInt | None = None
    shots: PosInt | None = None
    queries: PosInt | None = None
    query_batch: Literal["all", "per_class"] = "all"
    checkpoint: Literal["best", "last"] = "last"
    chunk: PosInt = 100


# --------------------------------------------------------------------------- experiment
class Config(Section):
    """A whole experiment."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")] = "run"
    seed: Seed = 0
    device: str = "auto"
    task: TaskConfig = Field(default_factory=SinusoidTask)
    model: ModelConfig = Field(default_factory=MLPModel)
    algorithm: AlgorithmConfig = Field(default_factory=MAMLConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N (or mps), found {quote(v)}")
        return v

    @model_validator(mode="after")
    def _resolve(self) -> Config:
        if self.algorithm.loss == "auto":
            self.algorithm.loss = "mse" if self.problem == "regression" else "cross_entropy"
        if self.problem == "classification" and self.algorithm.loss != "cross_entropy":
            raise ValueError(
                f"algorithm.loss must be cross_entropy for {self.task.kind} tasks, "
                f"found {self.algorithm.loss}"
            )
        if self.problem == "regression" and self.algorithm.loss == "cross_entropy":
            raise ValueError(
                f"algorithm.loss must be mse or l1 for {self.task.kind} tasks, found cross_entropy")
        if self.train.query_batch == "per_class" and self.problem != "classification":
            raise ValueError("train.query_batch: per_class needs a classification task, found "
                             f"task.kind {self.task.kind}")
        demo = getattr(self.task, "demonstration", None)
        if demo is not None and not demo.observe and self.algorithm.kind != "daml":
            raise ValueError(
                f"algorithm.kind {self.algorithm.kind} adapts on the support labels, and this "
                "task's demonstration (task.demonstration.observe: false) has none; "
                "use algorithm.kind: daml")
        return self

    @property
    def problem(self) -> Problem:
        """Regression or classification: a property of the task kind."""
        return self.task.problem

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready dict (tuples as lists)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- kinds
#: ``section -> kind -> class`` of the sections whose class ``kind`` chooses.
_KIND_CLASSES: dict[str, dict[str, type[Section]]] = {
    "task": {c.model_fields["kind"].default: c for c in
             (SinusoidTask, OmniglotTask, MiniImagenetTask, ImageFolderTask)},
    "model": {c.model_fields["kind"].default: c for c in (MLPModel, Conv4Model)},
    "algorithm": dict(ALGORITHM_SECTIONS),
}
#: The kind a section without a ``kind`` key is read as (loading gives a missing
#: ``model.kind`` the task's usual network: ``mlp`` for regression, else ``conv4``).
_DEFAULT_KIND = {"task": "sinusoid", "model": "mlp", "algorithm": "maml"}
#: The sections that have one class whatever their keys.
_SECTION_CLASSES: dict[str, type[Section]] = {"train": TrainConfig, "eval": EvalConfig}
