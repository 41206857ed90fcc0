"""Stopping a run between two iterations: SIGINT and SIGTERM raise a flag, so the state a
run saves is always the state between two iterations. Inside :meth:`StopSignals.interruptible`
(work that changes no training state: validation) they also raise :class:`Interrupted` at
once, so that a long validation does not hold a stop back."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import Stopped

#: The exit status of a run stopped by each signal (128 + its number).
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(Stopped):
    """A stop signal received inside :meth:`StopSignals.interruptible`."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


class StopSignals:
    """SIGINT / SIGTERM raise a flag instead of an exception, while installed.

    The loop finishes (or never starts) the current iteration, saves and exits;
    a second signal during the save changes nothing.
    """

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_first = on_first
        self._old: dict[int, Any] = {}
        self._raising = False

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is None and self._on_first is not None:
            self._on_first(signum)
        self.signum = self.signum or signum
        if self._raising:
            self._raising = False
            raise Interrupted(signum)

    @contextmanager
    def interruptible(self, enabled: bool = True) -> Iterator[None]:
        """A block that a stop signal ends at once with :class:`Interrupted` (raised where
        the main thread is, at its next Python instruction) instead of at the next
        iteration; entering it after a signal raises at once. Only for work that changes
        no state a checkpoint holds. ``enabled=False``: a plain block."""
        if not enabled:
            yield
            return
        if self.signum is not None:
            raise Interrupted(self.signum)
        self._raising = True
        try:
            yield
        finally:
            self._raising = False

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


@contextmanager
def terminate_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does, for work that writes nothing
    until it ends (``fewshot eval``, a run's set-up before its folder exists); yields a
    list that holds the signal received, for the exit status (130 or 143)."""
    got: list[int] = []

    def handle(signum: int, frame: Any) -> None:  # noqa: ARG001
        got.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = signal.signal(signal.SIGTERM, handle)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, old)
