"""What the ``fewshot`` commands' options accept, checked before anything is loaded."""

from __future__ import annotations

from enum import Enum

from .config import DEVICE_PATTERN, quote
from .errors import ConfigError


class CheckpointChoice(str, Enum):
    best = "best"
    last = "last"


class QueryBatch(str, Enum):
    all = "all"
    per_class = "per_class"


class PlotFormat(str, Enum):
    png = "png"
    pdf = "pdf"
    svg = "svg"


def int_list(option: str, text: str | None, minimum: int) -> list[int] | None:
    """``--shots 5,10,20``: the distinct values in the order given (None when absent)."""
    if text is None:
        return None
    values: list[int] = []
    for part in text.split(","):
        try:
            value = int(part.strip())
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ConfigError(f"{option}: expected an integer >= {minimum} or a comma-separated "
                              f"list of them (e.g. 5,10,20), found {quote(text)}")
        if value not in values:
            values.append(value)
    return values


def check_device(device: str | None) -> None:
    """A --device that names no device fails here, before torch is loaded (whether the
    device exists is checked when the run is built)."""
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"--device: expected auto, cpu, cuda, cuda:N or mps, "
                          f"found {quote(device)}")


def passed_on(**options: object) -> list[str]:
    """The options given, as arguments for each member's own command."""
    return [x for k, v in options.items() if v is not None
            for x in (f"--{k.replace('_', '-')}", str(v))]
