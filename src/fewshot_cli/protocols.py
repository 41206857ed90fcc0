"""Choosing one evaluation of a run's eval.json: the one ``compare`` and the sweep's
figures report.

eval.json keeps one result per protocol (support size, step count, queries, tasks, ...),
in the order each was first written: a protocol evaluated again keeps its place, so the
file's order is not the order of evaluation. Each result carries the ``time`` it was
written; the latest is the one with the greatest time (the first of them in the file when
one call wrote several, which is the first protocol that call listed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def own(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's own results, without those of its ``--baseline`` runs."""
    return [r for r in results if not r.get("baseline")]


def latest(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The result written last (see the module docstring); None for none."""
    best: dict[str, Any] | None = None
    for r in results:
        t = r.get("time") if isinstance(r.get("time"), str) else ""
        if best is None or t > (best.get("time") if isinstance(best.get("time"), str) else ""):
            best = r
    return best


def choose(results: list[dict[str, Any]], shots: int | None = None,
           steps: Sequence[int] | None = None) -> dict[str, Any] | None:
    """The latest of the run's own results evaluated with ``shots`` support examples (per
    class) and adapted for at least ``max(steps)`` inner steps, each when given; None
    when no result matches."""
    chosen = own(results)
    if shots is not None:
        chosen = [r for r in chosen if r["settings"].get("shots") == shots]
    if steps:
        chosen = [r for r in chosen if int(r["settings"].get("steps", -1)) >= max(steps)]
    return latest(chosen)


def describe(result: dict[str, Any]) -> str:
    """``K=5, 10 steps``: a result's protocol in a few words (for messages)."""
    s = result["settings"]
    return f"K={s.get('shots')}, {s.get('steps')} steps"
