"""Where benchmark scripts write their figures: ``benchmarks/RESULTS.md``."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def append(text: str) -> None:
    """Append one section (a blank line before it) to RESULTS.md and say so."""
    with RESULTS.open("a") as f:
        f.write("\n" + text.rstrip("\n") + "\n")
    print(f"appended to {RESULTS}")
