"""Engine cost: seconds per training iteration of the old engine (commit ca0dd8d) against
the working tree, and the cost of writing their checkpoints.

The old version is extracted with ``git archive`` into a temporary folder (the
repository is not touched) and each version runs ``python -m fewshot_cli train`` in
its own subprocess with ``PYTHONPATH`` at its ``src`` folder, so that version is the
one imported (checked once per version: ``fewshot_cli.__file__`` is printed). Each
config is trained by the two versions alternately, ``--rounds`` times, the order
swapped every round (old, new, new, old, ...), so a change in machine load hits both
alike. Both use ``OMP_NUM_THREADS=--threads`` and the same settings:

* sine: configs/sine-maml.yaml, vectorize vmap, 3,000 iterations, log every 100,
  validation (10 tasks) only after the last iteration;
* omniglot: configs/omniglot-5w1s-maml.yaml, vectorize vmap, 200 iterations, log
  every 10, validation (10 tasks) only after the last iteration.

Seconds per iteration of a run = 1 / the median of its ``metrics.jsonl`` ``its_per_s``
(one per log window; the first window, with the warm-up, is left out; validation and
checkpoints fall outside the windows used). Reported: the median over rounds per
version, the ratio new/old of those medians, and the median of the per-round ratios.

Checkpoints: the ``last.pt`` and ``best.pt`` each version's trainer wrote in the last
round are loaded and written again ``--writes`` times into a temporary folder with
that version's own writer (new: ``fewshot_cli.engine.checkpoint.save``; old:
``RunDir.save_checkpoint``, which the old trainer called): median write time, and the
file sizes.

    python benchmarks/engine_cost.py                      # ~12 min on 2 cores
    python benchmarks/engine_cost.py --rounds 1 --sine-iterations 200 \\
        --omniglot-iterations 20 --writes 2               # smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

OLD_COMMIT = "ca0dd8d"
CONFIG_FILES = {"sine": "configs/sine-maml.yaml", "omniglot": "configs/omniglot-5w1s-maml.yaml"}
VERSIONS = ("old", "new")


# ----------------------------------------------------------------------------- child: checkpoints
def checkpoint_child(run_dir: Path, writes: int) -> None:
    """Runs under the version being measured: time its writer on its own trainer's files."""
    import torch

    import fewshot_cli

    try:
        from fewshot_cli.engine import checkpoint
    except ImportError:  # the old engine: the trainer wrote through RunDir.save_checkpoint
        checkpoint = None
    from fewshot_cli.rundir import RunDir

    out: dict[str, Any] = {"fewshot_cli": fewshot_cli.__file__}
    with tempfile.TemporaryDirectory(dir=run_dir.parent) as tmp:
        target = RunDir(Path(tmp))
        for which in ("last", "best"):
            source = run_dir / "checkpoints" / f"{which}.pt"
            if not source.is_file():
                out[which] = None
                continue
            state = torch.load(source, map_location="cpu", weights_only=True)
            if checkpoint is not None:
                state = {k: v for k, v in state.items() if k != "format"}  # save() adds it

                def save(s: dict[str, Any], w: str = which) -> None:
                    checkpoint.save(target.checkpoint_path(w), s)
            else:
                def save(s: dict[str, Any], w: str = which) -> None:
                    target.save_checkpoint(w, s)
            times = []
            for _ in range(writes):
                t0 = time.perf_counter()
                save(state)
                times.append(time.perf_counter() - t0)
            out[which] = {
                "bytes": source.stat().st_size,
                "rewritten_bytes": target.checkpoint_path(which).stat().st_size,
                "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            }
    print(json.dumps(out))


# ----------------------------------------------------------------------------- parent
@dataclass
class Version:
    name: str
    src: Path
    configs: Path                       # the folder its config files are read from
    label: str
    imported: str = ""
    env: dict[str, str] = field(default_factory=dict)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(common.ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def extract_old(commit: str, dest: Path) -> None:
    """``src`` and ``configs`` of ``commit`` into ``dest`` (no worktree, nothing committed)."""
    data = subprocess.run(["git", "-C", str(common.ROOT), "archive", "--format=tar", commit, "src",
                           "configs"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(dest)  # our own repository's archive


def check_import(v: Version, timeout: float) -> None:
    """The version's subprocesses import ``fewshot_cli`` from ``v.src``; else exit."""
    p = subprocess.run([sys.executable, "-c", "import fewshot_cli; print(fewshot_cli.__file__)"],
                       env=v.env, cwd=v.src.parent, capture_output=True, text=True,
                       timeout=timeout)
    where = Path(p.stdout.strip()).resolve() if p.returncode == 0 else None
    if where is None or not where.is_relative_to(v.src.resolve()):
        raise SystemExit(f"{v.name}: fewshot_cli imported from {where or p.stderr.strip()}, "
                         f"not from {v.src}")
    v.imported = str(where)
    print(f"{v.name:3}: {v.label}; fewshot_cli imported from {where}", flush=True)


def overrides(name: str, args: argparse.Namespace) -> list[str]:
    common = ["train.vectorize=vmap", f"train.val_every={10**9}",
              f"train.val_tasks={args.val_tasks}", "device=cpu"]
    if name == "sine":
        return [f"train.iterations={args.sine_iterations}", "train.log_every=100", *common]
    return [f"task.root={args.root.resolve()}", f"train.iterations={args.omniglot_iterations}",
            "train.log_every=10", *common]


def train(v: Version, name: str, sets: list[str], run: Path, timeout: float) -> dict[str, Any]:
    """One training run of version ``v``; its seconds per iteration and wall times."""
    argv = [sys.executable, "-m", "fewshot_cli", "train", str(v.configs / Path(
        CONFIG_FILES[name]).name), *common.set_flags(sets), "--run-dir", str(run), "--no-progress"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, env=v.env, cwd=run.parent, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{v.name} {name}: no result after {timeout:.0f} s") from None
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{v.name} {name} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    rates = common.window_rates(run)
    if not rates:
        raise SystemExit(f"{v.name} {name}: fewer than two log windows; use more iterations")
    meta = common.read_json(run / "meta.json")
    return {"s_per_it": 1 / statistics.median(rates), "windows": len(rates), "wall_s": wall,
            "loop_s": meta["wall_seconds"], "iterations": meta["iteration"]}


def measure_checkpoints(v: Version, run: Path, writes: int, timeout: float) -> dict[str, Any]:
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--checkpoint-child",
                        str(run), "--writes", str(writes)], env=v.env, cwd=run.parent,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"{v.name}: checkpoint timing failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if Path(out["fewshot_cli"]).resolve() != Path(v.imported):
        raise SystemExit(f"{v.name}: checkpoint timing imported {out['fewshot_cli']}")
    return out


def filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), e.g. ext4."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    path = path.resolve()
    best = max((m for m in mounts if path.is_relative_to(m[1])), key=lambda m: len(m[1]),
               default=None)
    return best[2] if best else "?"


def ms(v: float) -> str:
    return f"{1e3 * v:.1f}"


def report(args: argparse.Namespace, versions: dict[str, Version], names: list[str],
           results: dict[str, dict[str, list[dict[str, Any]]]],
           ckpt: dict[str, dict[str, dict[str, Any]]], fs: str) -> list[str]:
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, OMP_NUM_THREADS={args.threads}. "
        f"old = {versions['old'].label}; new = {versions['new'].label}.", "",
        f"Seconds per iteration (1 / median `its_per_s` of a run's log windows after the "
        f"first), {args.rounds} alternating round(s):", "",
        "| config | iterations | old s/it (median, min-max) | new s/it (median, min-max) | "
        "new/old | median per-round new/old | old / new whole command s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        r = results[name]
        s = {v: [x["s_per_it"] for x in r[v]] for v in VERSIONS}
        med = {v: statistics.median(s[v]) for v in VERSIONS}
        paired = statistics.median(n / o for o, n in zip(s["old"], s["new"]))
        walls = {v: statistics.median(x["wall_s"] for x in r[v]) for v in VERSIONS}
        cells = [f"{ms(med[v])} ms ({ms(min(s[v]))}-{ms(max(s[v]))})" for v in VERSIONS]
        lines.append(f"| {name} | {r['new'][0]['iterations']} | {cells[0]} | {cells[1]} | "
                     f"{med['new'] / med['old']:.3f} | {paired:.3f} | "
                     f"{walls['old']:.1f} / {walls['new']:.1f} |")
    if ckpt:
        lines += ["", f"Checkpoint writes (each trainer's own last.pt / best.pt of the last "
                  f"round, rewritten {args.writes} times with that version's writer, atomic "
                  f"with fsync, on {fs}): median ms (min-max), file size KiB:", "",
                  "| config | file | old ms | new ms | old KiB | new KiB |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for name in names:
            for which in ("last", "best"):
                c = {v: ckpt[name][v].get(which) for v in VERSIONS}
                t = [f"{ms(x['median_s'])} ({ms(x['min_s'])}-{ms(x['max_s'])})" if x else "-"
                     for x in c.values()]
                kib = [f"{x['bytes'] / 1024:.1f}" if x else "-" for x in c.values()]
                lines.append(f"| {name} | {which}.pt | {t[0]} | {t[1]} | {kib[0]} | {kib[1]} |")
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default=OLD_COMMIT, help=f"the old engine's commit [{OLD_COMMIT}]")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--configs", default="sine,omniglot", help="comma-separated: sine, omniglot")
    p.add_argument("--sine-iterations", type=int, default=3000)
    p.add_argument("--omniglot-iterations", type=int, default=200)
    p.add_argument("--val-tasks", type=int, default=10)
    p.add_argument("--root", type=Path, default=common.OMNIGLOT, help="Omniglot folder")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both [1]")
    p.add_argument("--writes", type=int, default=10, help="checkpoint writes timed per file")
    p.add_argument("--no-checkpoints", action="store_true", help="skip the checkpoint timing")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    p.add_argument("--work", type=Path, default=None, help="folder for the temporary files")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    common.add_write_results_option(p)
    p.add_argument("--checkpoint-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.names = [s.strip() for s in args.configs.split(",") if s.strip()]
    if not args.names or set(args.names) - set(CONFIG_FILES):
        p.error(f"--configs: expected names from {', '.join(CONFIG_FILES)}")
    if args.rounds < 1 or args.writes < 1:
        p.error("--rounds and --writes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.checkpoint_child:
        checkpoint_child(args.checkpoint_child, args.writes)
        return
    if "omniglot" in args.names:
        common.require_omniglot(args.root)
    old_sha = git("rev-parse", "--short", f"{args.old}^{{commit}}")
    head = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "src"))
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fewshot-engine-cost-", dir=args.work))
    try:
        extract_old(args.old, tmp / "old")
        changes = ", with uncommitted changes in src" if dirty else ""
        versions = {
            "old": Version("old", tmp / "old" / "src", tmp / "old" / "configs",
                           f"commit {old_sha}"),
            "new": Version("new", common.ROOT / "src", common.ROOT / "configs",
                           f"working tree (HEAD {head}{changes})"),
        }
        for v in versions.values():
            pythonpath = os.pathsep.join(filter(None, [str(v.src), os.environ.get("PYTHONPATH")]))
            v.env = dict(os.environ, PYTHONPATH=pythonpath, OMP_NUM_THREADS=str(args.threads),
                         PYTHONUNBUFFERED="1")
            check_import(v, timeout=120)
        for name in args.names:
            old_cfg = (versions["old"].configs / Path(CONFIG_FILES[name]).name).read_bytes()
            new_cfg = (common.ROOT / CONFIG_FILES[name]).read_bytes()
            if old_cfg != new_cfg:
                print(f"note: {CONFIG_FILES[name]} differs between the versions; each reads its "
                      "own copy", flush=True)
        runs = tmp / "runs"
        runs.mkdir()
        results: dict[str, dict[str, list[dict[str, Any]]]] = {
            n: {v: [] for v in VERSIONS} for n in args.names}
        last_run: dict[str, dict[str, Path]] = {n: {} for n in args.names}
        start = time.perf_counter()
        for r in range(args.rounds):
            for name in args.names:
                sets = overrides(name, args)
                for vname in (VERSIONS if r % 2 == 0 else VERSIONS[::-1]):
                    run = runs / f"{name}-{vname}-{r + 1}"
                    res = train(versions[vname], name, sets, run, args.timeout)
                    results[name][vname].append(res)
                    print(f"round {r + 1}/{args.rounds} {name:8} {vname}: "
                          f"{ms(res['s_per_it'])} ms/it over {res['windows']} windows, "
                          f"whole command {res['wall_s']:.1f} s "
                          f"[{time.perf_counter() - start:.0f} s elapsed]", flush=True)
                    previous = last_run[name].get(vname)
                    if previous is not None and not args.keep:
                        shutil.rmtree(previous, ignore_errors=True)
                    last_run[name][vname] = run
        ckpt: dict[str, dict[str, dict[str, Any]]] = {}
        if not args.no_checkpoints:
            for name in args.names:
                ckpt[name] = {v: measure_checkpoints(versions[v], last_run[name][v],
                                                     args.writes, args.timeout)
                              for v in VERSIONS}
        fs = filesystem(tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    lines = report(args, versions, args.names, results, ckpt, fs)
    print()
    print("\n".join(lines))
    if args.write_results:
        command = common.command_line(__file__, None if argv is None else [])
        section = ["", f"## Engine cost: old engine ({old_sha}) against the new "
                   f"({time.strftime('%Y-%m-%d')})", "",
                   f"Command: `OMP_NUM_THREADS={args.threads} {command}`", "",
                   "Settings: vectorize vmap, device cpu, validation "
                   f"({args.val_tasks} tasks) only after the last iteration; sine logs every "
                   "100 iterations, Omniglot every 10.", "", *lines, ""]
        common.append("\n".join(section))


if __name__ == "__main__":
    main()
