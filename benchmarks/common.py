"""What the benchmark scripts share: paths, the Omniglot root, RESULTS.md, ``fewshot`` runs,
run-directory files, threads, timing and machine load.

The scripts import it as ``common`` (a script's own folder is the first entry of
``sys.path``, also under ``torchrun`` and in the subprocesses they start). It imports
neither torch nor ``fewshot_cli`` at module level: ``engine_cost.py`` runs its children
against another version of the package, and some scripts start without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: The repository (the parent of ``benchmarks/``).
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
#: Where ``--write-results`` appends a script's report.
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: The Omniglot folder a script uses unless told otherwise: ``$FEWSHOT_OMNIGLOT``, else
#: ``../shared/data/omniglot`` beside the repository.
OMNIGLOT = Path(os.environ.get("FEWSHOT_OMNIGLOT") or ROOT.parent / "shared" / "data" / "omniglot")


# ----------------------------------------------------------------------------- Omniglot
def require_omniglot(root: Path) -> Path:
    """``root``, or exit with one line if it does not hold Omniglot (``images_background``)."""
    if not (Path(root) / "images_background").is_dir():
        raise SystemExit(f"{root}: Omniglot not found (pass --root or set FEWSHOT_OMNIGLOT)")
    return Path(root)


def with_omniglot_root(overrides: Sequence[str], root: Path | str = OMNIGLOT) -> list[str]:
    """``overrides`` plus ``task.root=ROOT`` at the end, unless one of them sets it already."""
    out = list(overrides)
    if not any(o.startswith("task.root=") for o in out):
        out.append(f"task.root={root}")
    return out


# ----------------------------------------------------------------------------- other commits
def extract_src(commit: str, into: Path) -> Path:
    """The ``src`` folder of ``commit`` (``git archive``), extracted under ``into``: a
    ``PYTHONPATH`` that runs that version of the package."""
    import io
    import tarfile

    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def versions(other: str, tmp: Path) -> dict[str, Path]:
    """``{label: src folder}`` of another commit and of this tree, in that order."""
    return {f"other ({other})": extract_src(other, tmp / "other"), "this tree": ROOT / "src"}


# ----------------------------------------------------------------------------- command lines
def add_set_option(parser: argparse.ArgumentParser, dest: str = "overrides",
                   help: str | None = "config override KEY=VALUE (repeatable)") -> None:
    """``--set KEY=VALUE``, repeatable, collected in ``args.<dest>`` (default: [])."""
    parser.add_argument("--set", dest=dest, action="append", default=[], metavar="KEY=VALUE",
                        help=help)


def set_flags(overrides: Sequence[str]) -> list[str]:
    """``["--set", o1, "--set", o2, ...]`` for a ``fewshot`` command line."""
    return [x for o in overrides for x in ("--set", o)]


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = None,
                       help: str = "torch intra-op threads (torch.set_num_threads)") -> None:
    parser.add_argument("--threads", type=int, default=default, help=help)


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (None or 0: leave torch's default); and
    freed memory kept for reuse as the ``fewshot`` commands keep it (``FEWSHOT_MALLOC=system``
    in the environment: not)."""
    try:
        from fewshot_cli.engine.allocator import keep_freed_memory
    except ImportError:  # an earlier version of the package (engine_cost.py)
        pass
    else:
        keep_freed_memory()
    if threads:
        import torch

        torch.set_num_threads(threads)


def omp_prefix() -> str:
    """``"OMP_NUM_THREADS=N "`` when the variable is set, else ``""`` (for a reported command)."""
    n = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={n} " if n is not None else ""


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python benchmarks/NAME.py ARGS`` (shell-quoted) as a report states its command;
    ``argv`` defaults to this process's arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{Path(script).name}", *map(shlex.quote, args)])


# ----------------------------------------------------------------------------- RESULTS.md
def add_write_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write-results", action="store_true",
                        help=f"append the report to {RESULTS.relative_to(ROOT)} (at its end; "
                             "move it into its section by hand)")


def append(text: str) -> None:
    """Append one section (a blank line before it) to RESULTS.md and say so."""
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write("\n" + text.rstrip("\n") + "\n")
    print(f"appended to {RESULTS}")


def publish(text: str, write_results: bool) -> None:
    """Print a report, then, with ``--write-results``, append it to RESULTS.md."""
    print(text)
    if write_results:
        append(text)


# ----------------------------------------------------------------------------- fewshot runs
def fewshot(*args: str, env: dict[str, str] | None = None, cwd: Path | None = ROOT) -> str:
    """``python -m fewshot_cli ARGS`` (by default in the repository; ``cwd=None``: here),
    output captured; its stdout, or exit with the tail of its output if it fails."""
    p = subprocess.run([sys.executable, "-m", "fewshot_cli", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join(s for s in (p.stdout.strip(), p.stderr.strip()) if s)[-3000:]
        raise SystemExit(f"fewshot {shlex.join(args)} failed (exit {p.returncode}):\n{tail}")
    return p.stdout


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The rows of a run directory's ``metrics.jsonl``."""
    text = (Path(run) / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def vectorize_path(meta: dict[str, Any]) -> str | None:
    """The batching path a run's meta.json records (``vectorize.path``; ``vectorize.mode``
    in older run directories)."""
    record = meta.get("vectorize") or {}
    return record.get("path", record.get("mode"))


def window_rates(run: Path) -> list[float]:
    """``its_per_s`` of each log window but the first (the one with the warm-up)."""
    return [r["its_per_s"] for r in read_metrics(run) if "its_per_s" in r][1:]


# ----------------------------------------------------------------------------- timing, load
def sync(device: object) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)  # type: ignore[arg-type]


def rotated(items: Sequence[T], r: int) -> list[T]:
    """``items`` started at position ``r`` (mod its length): the order of round ``r`` when
    alternating cases so that no case always runs first."""
    k = r % len(items) if items else 0
    return [*items[k:], *items[:k]]


def busy_seconds() -> float | None:
    """CPU seconds every process on this machine has been busy so far (``/proc/stat``, idle
    and iowait left out); None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def others_busy_cores(busy0: float | None, busy1: float | None, cpu_s: float,
                      wall_s: float) -> float:
    """Cores that other processes kept busy over ``wall_s`` seconds in which this process
    used ``cpu_s`` CPU seconds, from two :func:`busy_seconds` readings (NaN if unknown).
    Above ~0.1 a timing is contended."""
    if busy0 is None or busy1 is None:
        return float("nan")
    return max(0.0, busy1 - busy0 - cpu_s) / wall_s
