"""Kill and resume: does ``fewshot train --resume`` continue a SIGKILLed run bit-identically?

1. One uninterrupted reference run: ``python -m fewshot_cli train CONFIG --set ...
   --run-dir DIR --no-progress`` (its wall time bounds the kill times).
2. ``--trials`` times: the same run in a fresh directory, SIGKILLed at a random
   moment (uniform between 0.5 s and the reference's wall time; seeded), then
   ``python -m fewshot_cli train --resume DIR --no-progress`` until it completes.
   With ``--rekills 1`` (the default) the first resume is SIGKILLed once more at a
   random moment before its expected end; later resumes run to completion. A kill
   that lands before the run directory holds its config.yaml (Python still
   starting) leaves nothing to resume: the run is started afresh.
3. Each trial is compared with the reference: ``checkpoints/last.pt``'s
   ``algorithm`` and ``optimizer`` state (every tensor ``torch.equal``, with the
   same dtype and shape, recursively) and ``iteration``, and every
   ``metrics.jsonl`` row on every key except ``time`` and ``its_per_s``.

Prints a table and "K of N bit-identical"; exits 1 if any trial differs or fails.
``--write-results`` appends the table to benchmarks/RESULTS.md.

    python benchmarks/kill_resume.py                          # sinusoid, 20 trials
    python benchmarks/kill_resume.py --config omniglot        # Omniglot 5-way 1-shot
    python benchmarks/kill_resume.py --trials 2 --iterations 300   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import torch

#: Metrics keys that measure the machine, not the computation.
TIMING_KEYS = ("time", "its_per_s")
MIN_KILL_S = 0.5

PRESETS: dict[str, tuple[Path, list[str]]] = {
    "sine": (common.CONFIGS / "sine-maml.yaml", [
        "train.iterations=2000", "train.log_every=50", "train.val_every=500",
        "train.val_tasks=20", "train.checkpoint_every=100", "train.vectorize=vmap",
    ]),
    "omniglot": (common.CONFIGS / "omniglot-5w1s-maml.yaml", [
        "train.iterations=300", "algorithm.meta_batch=8", "train.log_every=10",
        "train.val_every=100", "train.val_tasks=20", "train.checkpoint_every=25",
        "train.vectorize=vmap",
    ]),
}


# ----------------------------------------------------------------------------- subprocesses
class Children:
    """The training processes this script started, so that none outlives it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.live: set[subprocess.Popen] = set()

    def start(self, args: list[str], log: Path) -> subprocess.Popen:
        with log.open("ab") as out:
            out.write(f"$ fewshot {shlex.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen([sys.executable, "-m", "fewshot_cli", *args], cwd=common.ROOT,
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.live.add(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float) -> int | None:
        """The exit code, or None if ``proc`` is still running after ``timeout`` seconds."""
        try:
            rc = proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None
        self.live.discard(proc)
        return rc

    def kill(self, proc: subprocess.Popen) -> int:
        """SIGKILL ``proc`` (a no-op if it has just exited); its exit code."""
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = proc.wait()
        self.live.discard(proc)
        return rc

    def kill_all(self) -> None:
        for proc in list(self.live):
            self.kill(proc)


# ----------------------------------------------------------------------------- run directories
def read_rows(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a line that is not JSON is kept as ``{"unparsed": line}``."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            rows.append({"unparsed": line})
    return rows


def logged_iteration(run: Path) -> int | None:
    """The last well-formed metrics row's iteration (the run was at most log_every beyond)."""
    its = [r["iteration"] for r in read_rows(run) if isinstance(r.get("iteration"), int)]
    return its[-1] if its else None


def load_last(run: Path) -> dict[str, Any] | None:
    path = run / "checkpoints" / "last.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_iteration(run: Path) -> str:
    """What a resume would start from: ``last.pt``'s iteration, or why there is none."""
    if not (run / "config.yaml").is_file():
        return "fresh"  # no run directory yet: started again from scratch
    try:
        state = load_last(run)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a finding, reported
        return f"unreadable ({type(e).__name__})"
    return "none" if state is None else str(state.get("iteration"))


def status(run: Path) -> str | None:
    try:
        return json.loads((run / "meta.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------- comparison
def first_difference(a: Any, b: Any, where: str) -> str | None:
    """Where two state trees differ (tensors bit for bit), or None if identical."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where}: tensor against {type(b if isinstance(a, torch.Tensor) else a)}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{list(a.shape)} against {b.dtype}{list(b.shape)}"
        return None if torch.equal(a, b) else f"{where}: tensor values differ"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))} in only one"
        for k in a:
            d = first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                      and math.isnan(b))
    return None if same else f"{where}: {a!r} against {b!r}"


def compare_runs(reference: Path, trial: Path, ref_state: dict[str, Any],
                 ref_rows: list[dict[str, Any]]) -> str | None:
    """None when ``trial`` matches the reference run, else the first difference."""
    try:
        state = load_last(trial)
    except Exception as e:  # noqa: BLE001
        return f"last.pt unreadable ({type(e).__name__}: {e})"
    if state is None:
        return "no last.pt"
    for key in ("iteration", "algorithm", "optimizer"):
        if key not in state:
            return f"last.pt has no {key}"
        d = first_difference(ref_state[key], state[key], key)
        if d:
            return f"last.pt {d}"
    rows = read_rows(trial)
    if len(rows) != len(ref_rows):
        return f"metrics.jsonl: {len(rows)} rows against the reference's {len(ref_rows)}"
    for i, (r, t) in enumerate(zip(ref_rows, rows)):
        strip = ({k: v for k, v in row.items() if k not in TIMING_KEYS} for row in (r, t))
        d = first_difference(*strip, f"metrics.jsonl row {i + 1}")
        if d:
            return d
    return None


# ----------------------------------------------------------------------------- one trial
@dataclass
class Trial:
    index: int
    kill_at: float
    killed: bool = False                    # False: the run completed before the kill time
    logged_at_kill: int | None = None
    resumed_from: str = "-"
    rekill_at: float | None = None
    rekilled: bool = False
    logged_at_rekill: int | None = None
    resumed_from_2: str = "-"
    processes: int = 1
    seconds: float = 0.0
    difference: str | None = None
    error: str | None = None

    @property
    def identical(self) -> bool:
        return self.error is None and self.difference is None


def run_trial(t: Trial, args: argparse.Namespace, children: Children, train_args: list[str],
              run: Path, log: Path, timeout: float, remaining_s: Any,
              rng: random.Random) -> None:
    """Start, kill, resume (and re-kill) one run until it completes (see the module doc)."""
    start = time.perf_counter()
    proc = children.start([*train_args, "--run-dir", str(run)], log)
    rc = children.wait(proc, t.kill_at)
    if rc is None:
        children.kill(proc)
        t.killed = True
        t.logged_at_kill = logged_iteration(run)
    elif rc != 0:
        t.error = f"the first run exited with {rc} before the kill (see {log.name})"
        return
    t.resumed_from = checkpoint_iteration(run) if t.killed else "-"
    rekills = args.rekills
    while status(run) != "completed":
        if t.processes >= 2 + args.rekills + 3:
            t.error = f"not completed after {t.processes} processes (status {status(run)})"
            return
        if (run / "config.yaml").is_file():
            proc = children.start(["train", "--resume", str(run), "--no-progress"], log)
        else:  # killed before the run directory was written: nothing to resume
            shutil.rmtree(run, ignore_errors=True)
            proc = children.start([*train_args, "--run-dir", str(run)], log)
        t.processes += 1
        if rekills > 0 and t.killed:
            rekills -= 1
            t.rekill_at = rng.uniform(MIN_KILL_S, max(MIN_KILL_S, remaining_s(run)))
            rc = children.wait(proc, t.rekill_at)
            if rc is None:
                children.kill(proc)
                t.rekilled = True
                t.logged_at_rekill = logged_iteration(run)
                t.resumed_from_2 = checkpoint_iteration(run)
                continue
        else:
            rc = children.wait(proc, timeout)
            if rc is None:
                children.kill(proc)
                t.error = f"a resume ran longer than {timeout:.0f} s; killed"
                return
        if rc != 0:
            t.error = f"a resume exited with {rc} (see {log.name})"
            return
    t.seconds = time.perf_counter() - start


# ----------------------------------------------------------------------------- report
def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(trials: list[Trial]) -> list[str]:
    lines = ["| trial | kill at s | logged it. at kill | resumed from it. | re-kill at s | "
             "logged it. at re-kill | resumed from it. | processes | bit-identical |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for t in trials:
        kill = fmt(t.kill_at) + ("" if t.killed else " (completed first)")
        rekill = "-" if t.rekill_at is None else (
            fmt(t.rekill_at) + ("" if t.rekilled else " (completed first)"))
        verdict = "yes" if t.identical else f"**no**: {t.error or t.difference}"
        lines.append(f"| {t.index} | {kill} | {fmt(t.logged_at_kill)} | {t.resumed_from} | "
                     f"{rekill} | {fmt(t.logged_at_rekill)} | {t.resumed_from_2} | "
                     f"{t.processes} | {verdict} |")
    return lines


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


# ----------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="sine",
                   help=f"a preset ({', '.join(PRESETS)}) or a config file [sine]")
    common.add_set_option(p, help="extra config override, after the preset's (repeatable)")
    p.add_argument("--iterations", type=int, default=None, help="override train.iterations")
    p.add_argument("--root", type=Path, default=common.OMNIGLOT,
                   help="Omniglot folder (omniglot preset) [../shared/data/omniglot]")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--rekills", type=int, choices=(0, 1), default=1,
                   help="kill the first resume once more (1) or never (0) [1]")
    p.add_argument("--seed", type=int, default=0, help="kill-time RNG seed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs [1]")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds any one process may run [10x the reference, at least 120]")
    p.add_argument("--work", type=Path, default=None, help="folder for the temporary runs")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    common.add_write_results_option(p)
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.config in PRESETS:
        config, sets = PRESETS[args.config][0], list(PRESETS[args.config][1])
        if args.config == "omniglot":
            root = common.require_omniglot(args.root.resolve())
            sets.insert(0, f"task.root={root}")
    else:
        config, sets = Path(args.config).resolve(), []
    if args.iterations:
        sets.append(f"train.iterations={args.iterations}")
    sets += [f"device={args.device}", *args.overrides]
    train_args = ["train", str(config), *common.set_flags(sets), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    children = Children(env)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fewshot-kill-resume-", dir=args.work))
    log = tmp / "log.txt"
    print(f"{config.name} {' '.join(sets)}\n{machine()}, OMP_NUM_THREADS={args.threads}; "
          f"runs in {tmp}", flush=True)
    try:
        ref = tmp / "reference"
        t0 = time.perf_counter()
        proc = children.start([*train_args, "--run-dir", str(ref)], log)
        rc = children.wait(proc, args.timeout or 3600)
        if rc is None:
            children.kill(proc)
        ref_wall = time.perf_counter() - t0
        if rc != 0 or status(ref) != "completed":
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the reference run failed (exit {rc}):\n{tail}")
        ref_state, ref_rows = load_last(ref), read_rows(ref)
        ref_meta = json.loads((ref / "meta.json").read_text())
        iterations = int(ref_state["iteration"])
        loop_s = float(ref_meta["wall_seconds"])
        startup_s = max(ref_wall - loop_s, 0.0)
        timeout = args.timeout or max(120.0, 10 * ref_wall)
        print(f"reference: {iterations} iterations, {ref_wall:.1f} s for the whole command "
              f"({loop_s:.1f} s in the training loop, {startup_s:.1f} s start-up); "
              f"expect about {args.trials * 2 * ref_wall / 60:.0f} min for {args.trials} trials",
              flush=True)

        def remaining_s(run: Path) -> float:
            """Expected wall time of a resume of ``run`` (start-up + the iterations left)."""
            state = checkpoint_iteration(run)
            done = int(state) if state.isdigit() else 0
            return startup_s + loop_s * (iterations - done) / max(iterations, 1)

        rng = random.Random(args.seed)
        trials: list[Trial] = []
        for i in range(1, args.trials + 1):
            t = Trial(i, rng.uniform(MIN_KILL_S, max(ref_wall, MIN_KILL_S)))
            run = tmp / f"trial-{i:02d}"
            try:
                run_trial(t, args, children, train_args, run, log, timeout, remaining_s, rng)
                if t.error is None:
                    t.difference = compare_runs(ref, run, ref_state, ref_rows)
            finally:
                children.kill_all()
            trials.append(t)
            print(table([t])[-1], flush=True)
            if not args.keep:
                shutil.rmtree(run, ignore_errors=True)
    finally:
        children.kill_all()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    same = sum(t.identical for t in trials)
    killed = sum(t.killed for t in trials)
    rekilled = sum(t.rekilled for t in trials)
    summary = (f"{same} of {len(trials)} bit-identical ({killed} killed before completing, "
               f"{rekilled} of them killed again while resuming)")
    lines = table(trials)
    print()
    print("\n".join(lines))
    print(summary)
    if args.write_results:
        command = common.command_line(__file__, None if argv is None else [])
        section = [
            "", f"## Kill and resume: {config.name} ({time.strftime('%Y-%m-%d')})", "",
            f"Command: `OMP_NUM_THREADS={args.threads} {command}`", "",
            f"Machine: {machine()}.", "",
            f"Settings: `{' '.join(sets)}`. Reference run: {iterations} iterations, "
            f"{ref_wall:.1f} s for the whole command ({loop_s:.1f} s in the training loop). "
            f"Kill times uniform in [{MIN_KILL_S}, {ref_wall:.1f}] s (seed {args.seed}); "
            f"{'the first resume killed once more; ' if args.rekills else ''}"
            "compared: `last.pt` algorithm and optimizer state (torch.equal on every tensor), "
            "its iteration, and every metrics.jsonl row except `time` and `its_per_s`. "
            "\"logged it.\" is the last metrics.jsonl row before the kill.", "",
            *lines, "", f"**{summary}.**", "",
        ]
        common.append("\n".join(section))
    return 0 if same == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
