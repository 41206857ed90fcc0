"""Stopping a run between two iterations: SIGINT and SIGTERM raise a flag, never an
exception, so the state a run saves is always the state between two iterations."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

#: The exit status of a run stopped by each signal (128 + its number).
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignals:
    """SIGINT / SIGTERM raise a flag instead of an exception, while installed.

    The loop finishes (or never starts) the current iteration, saves and exits;
    a second signal during the save changes nothing.
    """

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_first = on_first
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is None and self._on_first is not None:
            self._on_first(signum)
        self.signum = self.signum or signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The exit status for the signal received (130 when none was)."""
        return SIGNAL_EXIT.get(self.signum, 130) if self.signum else 130

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNAL_EXIT:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
