"""Freed memory kept for reuse (engine/allocator.py): set once per process on glibc, left
alone with ``FEWSHOT_MALLOC=system``, and set by every command that computes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's allocator only")

PROBE = """
from fewshot_cli.engine import allocator, threads
threads.apply(1)
print(allocator._applied)
"""


def applied(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


@glibc
def test_threads_apply_keeps_freed_memory_unless_told_not_to() -> None:
    assert applied({"FEWSHOT_MALLOC": ""}) == "True"
    assert applied({"FEWSHOT_MALLOC": "system"}) == "False"


FAULTS = """
import resource, torch
from fewshot_cli.engine import allocator
allocator.keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(50 * 2**20).fill_(1)  # 200 MB, touched and freed
before = faults()
for _ in range(5):
    torch.empty(9 * 2**20).fill_(1)  # 36 MB: above glibc's largest mmap threshold
print((faults() - before) // 5)
"""


@glibc
def test_a_large_tensor_reuses_freed_memory_instead_of_faulting_in_new_pages() -> None:
    """A 36 MB tensor (a meta-LSTM gate block's size) allocated again and again after a
    larger one was freed: glibc's default maps each afresh (9,216 pages faulted in each
    time); with freed memory kept, none."""
    def faults(env: dict[str, str]) -> int:
        return int(subprocess.run([sys.executable, "-c", FAULTS], env={**os.environ, **env},
                                  capture_output=True, text=True, check=True).stdout)

    assert faults({"FEWSHOT_MALLOC": "system"}) > 5000
    assert faults({"FEWSHOT_MALLOC": ""}) < 100
