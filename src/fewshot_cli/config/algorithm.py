"""The ``algorithm:`` section: the keys every algorithm shares and one subclass per
``algorithm.kind``."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from .base import PosFloat, PosInt, Range, Section, check_range


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


#: How the inner (support) loss of a classification task is reduced over its N x K
#: examples: ``mean``, or ``sum/K``, the reference MAML's (cbfinn/maml: ``xent`` in
#: utils.py divides each example's cross-entropy by ``update_batch_size``, K, and
#: ``tf.gradients`` sums them), which is N times the mean. The same step size then takes an
#: N times larger first step. For regression both are the mean over the K support points.
InnerReduction = Literal["mean", "sum/K"]


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
    ``inner_loss_reduction``: :data:`InnerReduction`. ``meta_grad_clip_value``: clip each
    element of the meta-gradient to [-c, c] (the reference code does, at 10, on
    mini-ImageNet: maml.py, ``tf.clip_by_value``); null: none. ``inner_adapts_batch_norm``:
    false keeps the batch norm scale and offset out of the inner loop (meta-learned, not
    adapted), as the reference code's batch norm variables are not among its fast weights.
    ``checkpoint_inner_steps``: recompute
    each inner step in the backward pass (activation checkpointing), so second-order memory
    stays flat in ``inner_steps``, at the cost of one more support forward and backward per
    step; not on the vmap or compiled path.
    An option that is off is left out of the resolved config (:attr:`OPTIONS_OFF`), so a
    run without MAML++ options resolves to plain MAML's keys alone and a checkpoint whose
    config has none of these keys still matches it.
    """

    kind: Literal["maml"] = "maml"
    first_order: bool = False
    inner_loss_reduction: InnerReduction = "mean"
    meta_grad_clip_value: PosFloat | None = None
    inner_adapts_batch_norm: bool = True
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

    UNSTATED: ClassVar[dict[str, Any]] = {
        **OPTIONS_OFF, "inner_loss_reduction": "mean", "meta_grad_clip_value": None,
        "inner_adapts_batch_norm": True}


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

    ``eval_batch_norm``: how the learner's batch norm normalises the query set at meta-test
    (validation and ``fewshot eval``): ``running``, with running averages collected on the
    episode's support batches during its updates and erased between episodes (the paper,
    sec. 3.4, and the reference code: the learner in 'evaluate' mode after
    ``learner.reset()``), updated as ``(1 - bn_momentum) * running + bn_momentum * batch``
    from 0 and 1 (torch7's convention; the reference's ``BN_momentum`` is 0.9 for 1-shot and
    0.95 for 5-shot, config/lstm/train-imagenet-*.lua, passed on by model/lstm-classifier.lua);
    or ``batch``, with the query batch's own statistics (transductive). In meta-training
    both use the batch's statistics, as the paper does.
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
    eval_batch_norm: Literal["running", "batch"] = "running"
    bn_momentum: Annotated[float, Field(gt=0, le=1)] = 0.9

    @field_validator("forget_bias_init", "input_bias_init")
    @classmethod
    def _ordered(cls, v: Range, info: Any) -> Range:
        return check_range(v, info.field_name)


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
        return check_range(v, info.field_name)


class ANILConfig(AlgorithmSection):
    """ANIL (Raghu et al. 2020): MAML whose inner loop adapts the network's head alone, on
    body features computed once per task; ``first_order`` drops the second derivatives of
    the inner step; ``inner_loss_reduction``: :data:`InnerReduction`."""

    kind: Literal["anil"] = "anil"
    first_order: bool = False
    inner_loss_reduction: InnerReduction = "mean"

    UNSTATED: ClassVar[dict[str, Any]] = {"inner_loss_reduction": "mean"}


Beta = Annotated[float, Field(ge=0, lt=1)]


class ReptileConfig(AlgorithmSection):
    """Reptile (Nichol, Achiam & Schulman 2018): ``inner_steps`` steps of SGD or Adam on a
    task's support set, then the initialisation moves towards the adapted weights,
    theta <- theta + eps * mean over the meta-batch of (phi - theta); no query set is used
    in training.

    ``meta_lr`` is eps, annealed linearly to ``meta_lr_final`` over training (the paper
    anneals it to 0); with ``meta_optimizer: sgd`` the update is that interpolation, with
    ``adam`` theta - phi goes to Adam as a gradient. ``inner_optimizer``: ``sgd`` (step size
    ``inner_lr``) or ``adam`` (``inner_lr``, ``inner_betas``); ``adam_state``: ``carried``
    (one Adam state carried from task to task through training and into evaluation, as the
    reference code) or ``fresh`` (a new state for each task).
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
    adam_state: Literal["carried", "fresh"] = "fresh"
    inner_batch: PosInt | None = 10
    eval_inner_batch: PosInt | None = None


ALGORITHM_SECTIONS: dict[str, type[AlgorithmSection]] = {
    c.model_fields["kind"].default: c for c in AlgorithmSection.__subclasses__()
}
AlgorithmConfig = Annotated[
    Union[tuple(ALGORITHM_SECTIONS.values())],  # type: ignore[valid-type]
    Field(discriminator="kind"),
]

