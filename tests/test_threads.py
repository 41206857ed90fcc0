"""The thread choice: measured, cached, and timed again when the cache chose more than one
thread, so that a machine busier than at the measurement cannot make a run collapse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewshot_cli.config import load_config
from fewshot_cli.engine import threads
from fewshot_cli.engine.setup import build_experiment

SINE = Path(__file__).resolve().parents[1] / "configs" / "sine-maml.yaml"


def test_a_cached_choice_of_more_threads_is_timed_again(tmp_path: Path, monkeypatch) -> None:
    exp = build_experiment(load_config(SINE, ["device=cpu"]), torch.device("cpu"))
    monkeypatch.setattr(threads, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 2)
    seconds = {1: 1.0, 2: 0.5}  # quiet machine: two threads twice as fast
    timed: list[int] = []

    def fake_time(exp, batch, path, n):  # noqa: ANN001, ANN202
        timed.append(n)
        return seconds[n]

    monkeypatch.setattr(threads, "_time", fake_time)
    said: list[str] = []
    try:
        n, info = threads.choose(exp, "vmap", None, "key", said.append)
        assert (n, info["source"], timed) == (2, "measured", [1, 2])
        assert said == ["timing a meta-update with 1 and 2 threads"]
        seconds.update({2: 3.0})  # busy machine: two threads collapse
        n, info = threads.choose(exp, "vmap", None, "key", said.append)
        assert n == 1 and info["source"].startswith("measured again") and timed == [1, 2] * 2
        n, info = threads.choose(exp, "vmap", None, "key", said.append)
        assert (n, info["source"]) == (1, "cached measurement") and len(timed) == 4
        assert info["seconds_per_step"] == {"1": 1.0, "2": 3.0}
    finally:
        threads.apply(1)


@pytest.mark.parametrize(("one", "two", "expected"), [(1.0, 0.8, 1), (1.0, 0.75, 2)])
def test_more_threads_must_be_clearly_faster(one: float, two: float, expected: int) -> None:
    assert threads._best({"1": one, "2": two}, [1, 2]) == expected
