"""Property: ``config.validate`` turns any mapping a YAML file could hold into a Config or
one short ConfigError line, never another exception."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fewshot_cli.config import _KIND_CLASSES, _SECTION_CLASSES, Config, load_config, validate
from fewshot_cli.errors import ConfigError

#: Every real key of every section, across all kinds.
FIELDS: dict[str, list[str]] = {
    section: sorted({k for cls in classes.values() for k in cls.model_fields})
    for section, classes in _KIND_CLASSES.items()
} | {section: sorted(cls.model_fields) for section, cls in _SECTION_CLASSES.items()}
TOP = [k for k in Config.model_fields if k not in FIELDS]
#: Strings that are valid somewhere: kinds, choices, devices.
WORDS = sorted({k for classes in _KIND_CLASSES.values() for k in classes} | {
    "auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps", "tpu", "relu", "tanh", "vmap", "loop",
    "fused", "mse", "l1", "cross_entropy", "adam", "sgd", "float32", "float64", "best",
    "last", "all", "per_class", "maml", "background", "vinyals", "data/x", "", "run"})

random_keys = st.text(max_size=12) | st.integers(-3, 3) | st.booleans() | st.none()
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 100)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(WORDS)
           | st.text(max_size=30))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(random_keys, inner, max_size=3),
    max_leaves=8,
)


def section(name: str) -> st.SearchStrategy[dict[Any, Any]]:
    keys = st.sampled_from(FIELDS[name]) | random_keys
    return st.dictionaries(keys, values, max_size=6)


configs = st.tuples(
    st.fixed_dictionaries({}, optional={
        **{k: values for k in TOP},
        **{s: section(s) | values for s in FIELDS},
    }),
    st.dictionaries(random_keys, values, max_size=2),
).map(lambda t: {**t[1], **t[0]})


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(configs)
@example({})
@example({"name": [["lol"] * 3] * 3, "task": {"kind": ["sinusoid"], "shots": 1}})
@example({"task": {"kind": "sinusoid", "amplitude": [math.nan, 1.0]}})
@example({"seed": 2**70, "model": {"kind": {"a": 1}}})
@example({"train": {"x" * 300 + "\n": 1}})
def test_validate_returns_a_config_or_one_short_error(data: dict[Any, Any]) -> None:
    try:
        cfg = validate(data, "x")
    except ConfigError as e:
        assert str(e).startswith("x: "), str(e)
        _check(str(e))
    else:
        assert isinstance(cfg, Config)


def _check(msg: str) -> None:
    assert len(msg.splitlines()) == 1, msg
    assert len(msg) < 500, msg


@pytest.mark.parametrize("key", ["name", "seed", "device", "train", "model.hidden",
                                 "task.phase_choices", "train.iterations", "task.kind",
                                 "model.kind", "algorithm.kind", "eval.checkpoint"])
def test_alias_nest_under_a_wrongly_typed_key(key: str, tmp_path: Path) -> None:
    """A "billion laughs" nest of YAML aliases (9**12 strings if expanded; hypothesis would
    expand it to print an example, so it is tested here) gives one short line, fast."""
    levels = ['&l0 [' + ", ".join(['"lol"'] * 9) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 12)]
    value = "[" + ", ".join(levels) + "]"
    text = f"{key}: {value}\n" if "." not in key else \
        "{}:\n  {}: {}\n".format(*key.split("."), value)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    _check(str(e.value))
    assert key.split(".")[0] in str(e.value)
