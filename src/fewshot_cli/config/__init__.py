"""Configuration: the schema, YAML loading and ``--set`` overrides.

A config file is YAML with top-level keys ``name``, ``seed``, ``device`` and
the sections ``task``, ``model``, ``algorithm``, ``train`` and ``eval``. Every
key has a default; unknown keys, wrong types and out-of-range values raise
:class:`~fewshot_cli.errors.ConfigError` with one line naming the file and the key.

The modules, each importing only those listed before it:

- :mod:`.quoting`: bounded quoting of values for error lines;
- :mod:`.base`: the section base class and the shared value types;
- :mod:`.algorithm`: the ``algorithm`` section, one class per ``algorithm.kind``;
- :mod:`.schema`: :class:`Config` and its other sections;
- :mod:`.messages`: a pydantic error as one line, with a did-you-mean hint;
- :mod:`.overrides`: parsing and applying ``--set section.key=value``;
- :mod:`.loading`: reading, overriding and validating a config file.

Every name importers use is re-exported here: import from ``fewshot_cli.config``.
"""

from .algorithm import (
    ALGORITHM_SECTIONS,
    AlgorithmConfig,
    AlgorithmSection,
    ANILConfig,
    Beta,
    DAMLConfig,
    MAMLConfig,
    MetaLSTMConfig,
    MetaSGDConfig,
    PretrainConfig,
    ReptileConfig,
)
from .base import PosFloat, PosInt, Range, Section, Seed
from .loading import dump_config, load_config, validate
from .overrides import apply_overrides, parse_override
from .quoting import MAX_LINE, MAX_QUOTE, one_line, quote, reprlib_repr
from .schema import (
    _KIND_CLASSES,
    _SECTION_CLASSES,
    DEVICE_PATTERN,
    Config,
    Conv4Model,
    Demonstration,
    EvalConfig,
    ImageFolderTask,
    ImageTask,
    MiniImagenetTask,
    MLPModel,
    ModelConfig,
    OmniglotTask,
    Problem,
    SinusoidTask,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "ALGORITHM_SECTIONS",
    "ANILConfig",
    "AlgorithmConfig",
    "AlgorithmSection",
    "Beta",
    "Config",
    "Conv4Model",
    "DAMLConfig",
    "DEVICE_PATTERN",
    "Demonstration",
    "EvalConfig",
    "ImageFolderTask",
    "ImageTask",
    "MAMLConfig",
    "MAX_LINE",
    "MAX_QUOTE",
    "MLPModel",
    "MetaLSTMConfig",
    "MetaSGDConfig",
    "MiniImagenetTask",
    "ModelConfig",
    "OmniglotTask",
    "PosFloat",
    "PosInt",
    "PretrainConfig",
    "Problem",
    "Range",
    "ReptileConfig",
    "Section",
    "Seed",
    "SinusoidTask",
    "TaskConfig",
    "TrainConfig",
    "_KIND_CLASSES",
    "_SECTION_CLASSES",
    "apply_overrides",
    "dump_config",
    "load_config",
    "one_line",
    "parse_override",
    "quote",
    "reprlib_repr",
    "validate",
]
