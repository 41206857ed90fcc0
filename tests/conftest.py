"""Shared test settings: keep caches inside pytest's temporary folders."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                   ) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
