"""Freed memory kept in the process for reuse (glibc's allocator), not returned to the system.

glibc serves an allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap``
and unmaps it when it is freed, so every such tensor's pages fault in and are zeroed by the
kernel on first touch, at every allocation. The LSTM meta-learner's gate blocks are such
tensors (``[coordinates, 4 hidden]``: 36 MB per Omniglot task, allocated and freed at every
update); the matrix product that fills one took several times as long into fresh memory as
into reused memory (benchmarks/RESULTS.md, "LSTM meta-learner"). With ``mmap`` and
trimming off, freed blocks stay in the heap and are reused.

The cost: the process's resident memory stays at its peak until it exits. ``FEWSHOT_MALLOC=
system`` in the environment leaves the allocator as it is. Elsewhere than glibc (macOS,
musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory (once per process); whether it did (False where the
    allocator is not glibc's, or with ``FEWSHOT_MALLOC=system``)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("FEWSHOT_MALLOC", "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # trimming off first: with mmap off, a freed block at the heap's top would otherwise
        # be handed back and faulted in again at the next allocation
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
                    and libc.mallopt(M_MMAP_MAX, 0))
    except (OSError, AttributeError):
        return False
