"""Configuration schema, YAML loading and ``--set`` overrides.

A config file is YAML with top-level keys ``name``, ``seed``, ``device`` and
the sections ``task``, ``model``, ``algorithm``, ``train`` and ``eval``. Every
key has a default; unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` with one line naming the file and the key.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .errors import ConfigError

PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
Range = tuple[float, float]
#: What torch's random generators accept (a larger seed is an OverflowError at run time).
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]
#: Device names ``device`` and ``--device`` accept (``fewshot_cli.engine.setup`` checks
#: that the device exists).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, and so are NaN and infinities
    (no key means anything by them; ``null`` is how a config says "no limit")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_range(value: Range, what: str) -> Range:
    if value[0] > value[1]:
        raise ValueError(f"{what} must be [low, high] with low <= high, found {list(value)}")
    return value


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
        return v if v is None else _check_range(v, "x_range")

    @field_validator("x_ranges")
    @classmethod
    def _each_ordered(cls, v: list[Range] | None) -> list[Range] | None:
        for r in v or []:
            _check_range(r, "each of x_ranges")
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
        return _check_range(v, info.field_name)

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
    split: Literal["maml", "background"] = "maml"
    train_classes: PosInt = 1200
    val_classes: PosInt = 100
    rotations: bool = True
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


ModelConfig = Annotated[Union[MLPModel, Conv4Model], Field(discriminator="kind")]


# --------------------------------------------------------------------------- algorithm
class AlgorithmSection(Section):
    """Keys every algorithm has: the inner loop, its loss, and the meta-optimiser.

    Each ``algorithm.kind`` is a subclass with its own keys; defining the
    subclass here is all the config needs (the union below collects them), and
    ``fewshot_cli.algorithms`` maps the kind to its implementation.
    """

    inner_lr: PosFloat = 0.01
    inner_steps: PosInt = 1
    eval_inner_steps: PosInt = 10
    loss: Literal["auto", "mse", "l1", "cross_entropy"] = "auto"
    meta_optimizer: Literal["adam", "sgd"] = "adam"
    meta_lr: PosFloat = 1e-3
    meta_batch: PosInt = 25

    @field_validator("inner_lr", "meta_lr")
    @classmethod
    def _finite(cls, v: float, info: Any) -> float:
        if not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be a finite number, found {v}")
        return v


class MAMLConfig(AlgorithmSection):
    """MAML (Finn et al. 2017); ``first_order`` gives FOMAML.

    The MAML++ options (Antoniou, Edwards & Storkey 2019, "How to train your MAML"), each
    off by default: ``msl_iterations`` (MSL): the outer loss weighs the query loss after
    every inner step, the weights annealed towards the last step over this many iterations,
    then the last step's alone (null: the last step's throughout); ``first_order_iterations``
    (DA): first-order meta-gradients for this many iterations, second order after (null:
    off); ``per_step_bn_weights`` (BNWB) and ``per_step_bn_statistics`` (BNRS): one set of
    batch norm weights and biases, and of running statistics, per inner step (conv4 with
    batch norm; the running statistics are collected in meta-training, where batch norm uses
    the batch's, as in the paper's code); ``running_statistics_at_eval``: evaluation
    normalises step s with BNRS's set s rather than the batch's statistics (not
    transductive); ``learned_inner_lrs`` (LSLR): a learned inner step size per parameter
    tensor and inner step, starting at ``inner_lr``; ``cosine_meta_lr`` (CA): the meta
    learning rate follows a cosine from ``meta_lr`` down to ``meta_lr_final`` over training.
    ``checkpoint_inner_steps``: recompute each inner step in the backward pass (activation
    checkpointing), so second-order memory stays flat in ``inner_steps``, at the cost of one
    more support forward and backward per step; not on the vmap or compiled path.
    An option that is off is left out of the resolved config, as before it existed.
    """

    kind: Literal["maml"] = "maml"
    first_order: bool = False
    msl_iterations: PosInt | None = None
    first_order_iterations: PosInt | None = None
    per_step_bn_weights: bool = False
    per_step_bn_statistics: bool = False
    running_statistics_at_eval: bool = False
    learned_inner_lrs: bool = False
    cosine_meta_lr: bool = False
    meta_lr_final: Annotated[float, Field(ge=0)] = 0.0
    checkpoint_inner_steps: bool = False

    #: The MAML++ keys and their "off" values.
    OPTIONS_OFF: ClassVar[dict[str, Any]] = {
        "msl_iterations": None, "first_order_iterations": None, "per_step_bn_weights": False,
        "per_step_bn_statistics": False, "running_statistics_at_eval": False,
        "learned_inner_lrs": False, "cosine_meta_lr": False, "meta_lr_final": 0.0,
        "checkpoint_inner_steps": False}

    @model_validator(mode="after")
    def _one_derivative_order(self) -> MAMLConfig:
        if self.first_order and self.first_order_iterations is not None:
            raise ValueError("first_order_iterations (derivative-order annealing) switches to "
                             "second order later, so it needs first_order: false, found "
                             "first_order: true")
        if self.running_statistics_at_eval and not self.per_step_bn_statistics:
            raise ValueError("running_statistics_at_eval needs per_step_bn_statistics: true, "
                             "found false")
        return self

    @model_serializer(mode="wrap")
    def _without_options_off(self, handler: Any) -> Any:
        data = handler(self)
        return {k: v for k, v in data.items()
                if k not in self.OPTIONS_OFF or v != self.OPTIONS_OFF[k]}


class PretrainConfig(AlgorithmSection):
    """The MAML paper's pretrained baseline: joint training, fine-tuned at test time."""

    kind: Literal["pretrain"] = "pretrain"


class DAMLConfig(AlgorithmSection):
    """DAML (Yu et al. 2018): adaptation by a learned loss over the network's output and
    hidden activations on the support set (a demonstration), meta-learned with the init.

    ``loss_hidden``: the loss network's hidden sizes; ``loss_norm``: the inner loss is the
    mean L1 norm or squared L2 norm of its output; ``observation``: its input also holds the
    support set's own observations (a demonstration's, or the support labels); ``hidden``:
    which of the network's hidden activations it sees; ``points_per_step``: support points
    per inner step, taken in turn (null: all of them every step); ``inner_grad_clip``: clip
    each inner-gradient element to [-c, c] (null: none).
    """

    kind: Literal["daml"] = "daml"
    first_order: bool = False
    loss_hidden: list[PosInt] = [32, 32]
    loss_norm: Literal["l1", "l2"] = "l1"
    observation: bool = True
    hidden: Literal["all", "last", "none"] = "all"
    points_per_step: PosInt | None = None
    inner_grad_clip: PosFloat | None = None


class MetaLSTMConfig(AlgorithmSection):
    """The LSTM meta-learner (Ravi & Larochelle 2017): a learned coordinate-wise update rule
    whose cell state is the learner's parameters; ``inner_lr`` is not used.

    ``inner_steps`` (T): updates per task; ``inner_batch``: support examples per update,
    taken in turn (null: the whole support set); ``hidden``: the first LSTM's hidden size;
    ``preprocess_p``: p of the gradient and loss preprocessing; ``forget_bias_init``,
    ``input_bias_init``: the ranges the gate biases start in; ``grad_clip``: the
    meta-gradient norm clip (null: none); ``inner_grad_clip``: clip each element of the
    learner's gradient to [-c, c] (null: none, as in the paper); ``sgd_reference_lrs``:
    the fixed learning rates of the plain-SGD reference ``fewshot eval`` adds, the best on
    ``sgd_reference_tasks`` validation tasks (empty: no reference).
    """

    kind: Literal["meta_lstm"] = "meta_lstm"
    inner_batch: PosInt | None = None
    hidden: PosInt = 20
    preprocess_p: PosFloat = 10.0
    forget_bias_init: Range = (4.0, 6.0)
    input_bias_init: Range = (-5.0, -4.0)
    grad_clip: PosFloat | None = 0.25
    inner_grad_clip: PosFloat | None = None
    sgd_reference_lrs: list[PosFloat] = [0.003, 0.01, 0.03, 0.1, 0.3]
    sgd_reference_tasks: PosInt = 100

    @field_validator("forget_bias_init", "input_bias_init")
    @classmethod
    def _ordered(cls, v: Range, info: Any) -> Range:
        return _check_range(v, info.field_name)


class MetaSGDConfig(AlgorithmSection):
    """Meta-SGD (Li et al. 2017): a learned step size for every coordinate of every parameter,
    meta-learned with the init; ``inner_lr`` is not used.

    ``lr_init``: the range the step sizes start in, uniformly at random (the paper's
    [0.005, 0.1]); ``first_order``: drop the second derivatives with respect to the init
    (the step sizes still learn: the adapted weights are linear in them).
    """

    kind: Literal["metasgd"] = "metasgd"
    first_order: bool = False
    lr_init: Range = (0.005, 0.1)

    @field_validator("lr_init")
    @classmethod
    def _ordered(cls, v: Range, info: Any) -> Range:
        return _check_range(v, info.field_name)


class ANILConfig(AlgorithmSection):
    """ANIL (Raghu et al. 2020): MAML whose inner loop adapts the network's head alone, on
    body features computed once per task; ``first_order`` drops the second derivatives of
    the inner step."""

    kind: Literal["anil"] = "anil"
    first_order: bool = False


Beta = Annotated[float, Field(ge=0, lt=1)]


class ReptileConfig(AlgorithmSection):
    """Reptile (Nichol, Achiam & Schulman 2018): ``inner_steps`` steps of SGD or Adam on a
    task's support set, then the initialisation moves towards the adapted weights,
    theta <- theta + eps * mean over the meta-batch of (phi - theta); no query set is used
    in training.

    ``meta_lr`` is eps, annealed linearly to ``meta_lr_final`` over training (the paper
    anneals it to 0); with ``meta_optimizer: sgd`` the update is that interpolation, with
    ``adam`` theta - phi goes to Adam as a gradient. ``inner_optimizer``: ``sgd`` (step size
    ``inner_lr``) or ``adam`` (``inner_lr``, ``inner_betas``; a fresh state for each task).
    ``inner_batch``: support examples per training step, taken in turn from a new shuffle of
    the task's support set (null: all of them); ``eval_inner_batch``: the same at
    evaluation, in the support set's order.
    """

    kind: Literal["reptile"] = "reptile"
    inner_lr: PosFloat = 0.001
    inner_steps: PosInt = 5
    eval_inner_steps: PosInt = 50
    meta_optimizer: Literal["adam", "sgd"] = "sgd"
    meta_lr: PosFloat = 1.0
    meta_batch: PosInt = 5
    meta_lr_final: Annotated[float, Field(ge=0)] = 0.0
    inner_optimizer: Literal["sgd", "adam"] = "adam"
    inner_betas: tuple[Beta, Beta] = (0.0, 0.999)
    inner_batch: PosInt | None = 10
    eval_inner_batch: PosInt | None = None


ALGORITHM_SECTIONS: dict[str, type[AlgorithmSection]] = {
    c.model_fields["kind"].default: c for c in AlgorithmSection.__subclasses__()
}
AlgorithmConfig = Annotated[
    Union[tuple(ALGORITHM_SECTIONS.values())],  # type: ignore[valid-type]
    Field(discriminator="kind"),
]


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


# --------------------------------------------------------------------------- loading
_KIND_CLASSES: dict[str, dict[str, type[Section]]] = {
    "task": {c.model_fields["kind"].default: c for c in
             (SinusoidTask, OmniglotTask, MiniImagenetTask, ImageFolderTask)},
    "model": {c.model_fields["kind"].default: c for c in (MLPModel, Conv4Model)},
    "algorithm": dict(ALGORITHM_SECTIONS),
}
_DEFAULT_KIND = {"task": "sinusoid", "model": "mlp", "algorithm": "maml"}
_SECTION_CLASSES: dict[str, type[Section]] = {"train": TrainConfig, "eval": EvalConfig}


def _section_class(section: str, data: dict[str, Any]) -> type[Section] | None:
    if section in _SECTION_CLASSES:
        return _SECTION_CLASSES[section]
    if section in _KIND_CLASSES:
        raw = data.get(section)
        kind = raw.get("kind") if isinstance(raw, dict) else None
        return _KIND_CLASSES[section].get(kind if isinstance(kind, str) else
                                          _DEFAULT_KIND[section])
    return None


MAX_QUOTE = 80
#: The longest error line ``validate`` raises (the file name, key and value quoted in it are
#: cut well before this; this only guards against a combination of long ones).
MAX_LINE = 400
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), cut
    to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key_part(part: Any) -> str:
    """One part of a key path as the user would write it; an odd key (spaces, newlines, a
    very long name, not a string) is quoted, cut to a few dozen characters."""
    if isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
        return part
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)  # a list index
    return quote(part, 40)


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error line never quotes a whole file."""
    text = reprlib_repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reprlib_repr(value: Any) -> str:
    """A bounded repr: containers are abbreviated before they are formatted in full."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = MAX_QUOTE, MAX_QUOTE, 6, 6, 3
    return r.repr(value)


def _error_loc(err: dict[str, Any]) -> list[str]:
    """The key path of a pydantic error as the user wrote it."""
    loc = [_key_part(p) for p in err["loc"]]
    # Discriminated unions put the chosen kind into the location; drop it.
    if len(loc) >= 2 and loc[0] in _KIND_CLASSES and loc[1] in _KIND_CLASSES[loc[0]]:
        loc = [loc[0], *loc[2:]]
    return [p for p in loc if not p.startswith("function-")]


def _format_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    loc = _error_loc(err)
    key = ".".join(loc) if loc else "(top level)"
    kind = err["type"]
    found = err.get("input")
    if kind == "extra_forbidden":
        name = loc[-1]
        if len(loc) == 1:
            choices = list(Config.model_fields)
        else:
            cls = _section_class(loc[0], data)
            choices = list(cls.model_fields) if cls else []
        hint = difflib.get_close_matches(name, choices, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown key '{key}'{suggestion}; valid keys: {', '.join(choices)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        options = ", ".join(_KIND_CLASSES.get(loc[0], {}))
        tag = (err.get("ctx") or {}).get("tag", found)
        return f"{key}.kind: expected one of {options}, found {quote(tag)}"
    msg = err["msg"][:200]
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    if " found " in msg:  # our own validators already say what they found
        return f"{key}: {msg}"
    return f"{key}: {msg}, found {quote(found)}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value is YAML) into (path, value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e.problem})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return ``data`` with each ``section.key=value`` override applied."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def _fill_kinds(data: dict[str, Any]) -> dict[str, Any]:
    """Default ``task.kind`` to sinusoid, ``model.kind`` to the task's usual network and
    ``algorithm.kind`` to maml."""
    data = dict(data)
    task = data.get("task")
    if task is None:
        task = data["task"] = {}
    if isinstance(task, dict) and "kind" not in task:
        data["task"] = task = {"kind": "sinusoid", **task}
    kind = task.get("kind") if isinstance(task, dict) else None
    task_cls = _KIND_CLASSES["task"].get(kind) if isinstance(kind, str) else None
    model = data.get("model")
    if model is None:
        model = {}
    if isinstance(model, dict) and "kind" not in model:
        regression = task_cls is not None and task_cls.problem == "regression"
        data["model"] = {"kind": "mlp" if regression else "conv4", **model}
    algorithm = data.get("algorithm")
    if algorithm is None:
        algorithm = {}
    if isinstance(algorithm, dict) and "kind" not in algorithm:
        data["algorithm"] = {"kind": _DEFAULT_KIND["algorithm"], **algorithm}
    return data


def validate(data: dict[str, Any], source: str, overrides: list[str] | None = None) -> Config:
    """Validate a raw mapping; ``source`` names it in error messages, unless the key at
    fault was set by one of ``overrides`` (``--set``), which is then named instead."""
    for section, classes in _KIND_CLASSES.items():
        raw = data.get(section)
        kind = raw.get("kind", "") if isinstance(raw, dict) else ""
        # pydantic formats a discriminator as text: a nest of YAML aliases would expand
        if not isinstance(kind, str):
            raise ConfigError(one_line(f"{source}: {section}.kind: expected one of "
                                       f"{', '.join(classes)}, found {quote(kind)}"))
    data = _fill_kinds(data)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = _error_loc(first)
        for text in overrides or []:
            path, _ = parse_override(text)
            if loc[: len(path)] == path or (loc and path[: len(loc)] == loc):
                source = f"--set {quote(text, 60)}"
        raise ConfigError(one_line(f"{source}: {_format_error(first, data)}")) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty (expected at least a task: section; "
                          "see configs/ for examples)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return validate(data, str(path), overrides)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
