"""The base of every config section and the constrained value types the sections share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
Range = tuple[float, float]
#: What torch's random generators accept (a larger seed is an OverflowError at run time).
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, and so are NaN and infinities
    (no key means anything by them; ``null`` is how a config says "no limit")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_range(value: Range, what: str) -> Range:
    """``value`` itself when it is an interval ``[low, high]`` with ``low <= high``."""
    if value[0] > value[1]:
        raise ValueError(f"{what} must be [low, high] with low <= high, found {list(value)}")
    return value
