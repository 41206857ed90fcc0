"""The base of every config section and the constrained value types the sections share."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_serializer

PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
Range = tuple[float, float]
#: What torch's random generators accept (a larger seed is an OverflowError at run time).
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, and so are NaN and infinities
    (no key means anything by them; ``null`` is how a config says "no limit")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: Keys left out of the resolved config while at these values: options added after runs
    #: were made without them (so an older checkpoint's config still matches), and options
    #: that are off.
    UNSTATED: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _without_unstated(self, handler: Any) -> Any:
        data = handler(self)
        off = self.UNSTATED
        return {k: v for k, v in data.items() if k not in off or v != off[k]}


def check_range(value: Range, what: str) -> Range:
    """``value`` itself when it is an interval ``[low, high]`` with ``low <= high``."""
    if value[0] > value[1]:
        raise ValueError(f"{what} must be [low, high] with low <= high, found {list(value)}")
    return value
