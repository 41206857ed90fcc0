"""Every bad input a user can give, one row each: the real CLI in a subprocess must
exit non-zero (2 for config errors, 1 otherwise) with exactly one stderr line that
starts with ``error:`` and names the file, key or path, print no traceback, and leave
every earlier result (eval.json, checkpoints, metrics, plots) as it was.

Each row runs ``python -m fewshot_cli ARGS`` in a process of its own, two at a time.
Importing torch would be most of each process's cost, so by default the processes are
forked from two small servers that have imported fewshot (and torch) once and then run
the package's ``__main__`` exactly as ``python -m`` does, with the case's arguments,
working directory, environment and stdout/stderr files; an exception that escaped
the CLI is printed as the interpreter would (a ``Traceback``). Set
``FEWSHOT_TEST_SUBPROCESS=1`` to start a fresh interpreter per row instead.

A few cases that need to break the file system (full disk, read-only folder) run in
process with ``CliRunner`` and monkeypatching.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import queue
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from image_fixtures import make_image_folder
from typer.testing import CliRunner

from fewshot_cli.cli import app
from fewshot_cli.engine import checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SINE = CONFIGS / "sine-maml.yaml"
IMAGES = CONFIGS / "miniimagenet-5w1s-maml.yaml"
SHORT = ["--set", "train.iterations=20", "--set", "train.log_every=5", "--set",
         "train.val_every=10", "--set", "train.val_tasks=5", "--set", "train.checkpoint_every=10",
         "--set", "algorithm.meta_batch=4", "--set", "train.vectorize=vmap", "--no-progress"]
#: A tiny image-folder run (the data errors come before any training).
IMAGE = ["--set", "task.kind=image_folder", "--set", "task.image_size=12", "--set",
         "task.queries=1", "--set", "eval.queries=1", "--set", "model.filters=4", "--set",
         "train.iterations=2", "--set", "train.vectorize=loop", "--no-progress"]
#: An error line quotes paths, keys and values, never whole files or data structures.
MAX_LINE = 500
WORKERS = 2
runner = CliRunner()


# ----------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short sinusoid run with a checkpoint pair, metrics and an eval.json; a case that
    damages it works on its own copy."""
    run = tmp_path_factory.mktemp("trained") / "run"
    r = runner.invoke(app, ["train", str(SINE), *SHORT, "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(run), "--tasks", "5", "--steps", "2"])
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 train, 5 val and 5 test classes of 4 images each."""
    return make_image_folder(tmp_path_factory.mktemp("images") / "data",
                             splits={"train": 5, "val": 5, "test": 5}, per_class=4, size=12)


# ----------------------------------------------------------------------------- the table
@dataclass
class Ctx:
    """One case's folder: ``tmp`` (also the working directory), ``run`` (a copy of the
    trained run, made on first use), ``data`` (the image folder fixture) and ``env``."""

    tmp: Path
    trained: Path
    data: Path
    env: dict[str, str]

    @property
    def run(self) -> Path:
        path = self.tmp / "run"
        if not path.exists():
            shutil.copytree(self.trained, path)
        return path

    @property
    def runs(self) -> Path:
        return self.tmp / "runs"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], list[str]]  # builds the bad input, returns the CLI arguments
    code: int
    needles: tuple[str, ...] = ()  # in the error line; formatted with tmp, run, data
    check: Callable[[Ctx, subprocess.CompletedProcess], None] | None = None
    changes: tuple[str, ...] = ()  # run files a succeeding command may write
    skip: str | None = None


def config(text: str) -> Callable[[Ctx], list[str]]:
    return lambda c: ["train", str(c.write("c.yaml", text)), "--runs-root", str(c.runs)]


def laughs(section: str, key: str, depth: int = 12, width: int = 9) -> str:
    """A "billion laughs" nest of YAML aliases (9**12 strings if expanded) as the value
    of ``section.key``."""
    levels = ['&l0 [' + ", ".join(['"lol"'] * width) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, depth)]
    return f"{section}:\n  {key}: [" + ", ".join(levels) + "]\n"


def image_train(*extra: str, root: str | None = None, folders: Sequence[str] = ()
                ) -> Callable[[Ctx], list[str]]:
    """Train on the image fixture, or on ``root`` after making ``folders`` (empty) in tmp."""
    def setup(c: Ctx) -> list[str]:
        for folder in folders:
            (c.tmp / folder).mkdir(parents=True)
        where = root.format(tmp=c.tmp) if root else str(c.data)
        return ["train", str(IMAGES), *IMAGE, "--set", f"task.root={where}",
                "--set", f"task.cache_dir={c.tmp / 'cache'}", "--runs-root", str(c.runs), *extra]
    return setup


def on_run(command: str, *extra: str, damage: Callable[[Path], None] | None = None
           ) -> Callable[[Ctx], list[str]]:
    """``fewshot COMMAND RUN EXTRA`` on a copy of the trained run, damaged first."""
    def setup(c: Ctx) -> list[str]:
        if damage is not None:
            damage(c.run)
        args = ["train", "--resume", str(c.run)] if command == "resume" else [command, str(c.run)]
        return [*args, *extra]
    return setup


def no_metrics(run: Path) -> None:
    (run / "metrics.jsonl").unlink()


def no_checkpoints(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")


def both_checkpoints(write: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        for which in ("best", "last"):
            write(run / "checkpoints" / f"{which}.pt")
    return damage


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(path.name).randbytes(4096))


class Payload:
    """Unpickling this runs ``os.system``: a checkpoint must never be loaded that way."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def marker(run: Path) -> Path:
    """The file the payload would create: next to the run, outside the snapshot."""
    return run.parent / "pwned"


def pickled_code(path: Path) -> None:
    torch.save({"format": 2, "iteration": 20, "config": {}, "algorithm": {},
                "evil": Payload(marker(path.parents[1]))}, path)


def algorithm_list(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["algorithm"] = [1, 2, 3]
    torch.save(state, path)


def edit_config(section: str, key: str, value: object) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = yaml.safe_load((run / "config.yaml").read_text())
        data[section][key] = value
        (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return damage


def append_metrics(data: bytes, replace: bool = False) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / "metrics.jsonl"
        path.write_bytes(data if replace else path.read_bytes() + data)
    return damage


def write_file(name: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / name).write_text(text)


def marker_absent(c: Ctx, p: subprocess.CompletedProcess) -> None:
    assert not marker(c.run).exists(), "the checkpoint's pickled code ran"
    assert "weights_only" not in p.stderr


def made(*names: str) -> Callable[[Ctx, subprocess.CompletedProcess], None]:
    def check(c: Ctx, p: subprocess.CompletedProcess) -> None:
        for name in names:
            assert (c.run / name).is_file(), name
    return check


def not_made(*names: str) -> Callable[[Ctx, subprocess.CompletedProcess], None]:
    def check(c: Ctx, p: subprocess.CompletedProcess) -> None:
        for name in names:
            assert not (c.run / name).exists(), name
    return check


def vectorize_cache(content: str) -> Callable[[Ctx], list[str]]:
    def setup(c: Ctx) -> list[str]:
        c.env["FEWSHOT_CACHE"] = str(c.write("cache/vectorize.json", content).parent)
        return ["train", str(SINE), *SHORT, "--set", "train.vectorize=auto",
                "--run-dir", str(c.tmp / "new")]
    return setup


def trained_with_cache(c: Ctx, p: subprocess.CompletedProcess) -> None:
    new = c.tmp / "new"
    assert (new / "checkpoints" / "last.pt").is_file() and (new / "metrics.jsonl").is_file()
    meta = json.loads((new / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["vectorize"]["source"] == "measured"
    cache = json.loads((c.tmp / "cache" / "vectorize.json").read_text(),
                       parse_constant=lambda x: pytest.fail(x))
    assert isinstance(cache, dict) and cache, "the cache was rewritten as a JSON object"


NO_CUDA = "CUDA is available here" if torch.cuda.is_available() else None
CASES = [
    # -- configs (exit 2, nothing created)
    Case("yaml-syntax", config("task:\n  shots: [1, 2\nmodel: {}\n"), 2,
         ("{tmp}/c.yaml", "invalid YAML at line")),
    Case("unknown-key", config("train:\n  iteratons: 5\n"), 2,
         ("{tmp}/c.yaml", "train.iteratons", "did you mean 'iterations'")),
    Case("wrong-type", config("train:\n  iterations: many\n"), 2,
         ("train.iterations", "valid integer", "'many'")),
    Case("out-of-range", config("algorithm:\n  inner_lr: -1\n"), 2,
         ("algorithm.inner_lr", "greater than 0", "-1")),
    Case("not-finite", config("algorithm:\n  meta_lr: .inf\n"), 2, ("algorithm.meta_lr",)),
    Case("seed-overflow", config(f"seed: {2**70}\n"), 2, ("seed",)),
    Case("empty-config", config(""), 2, ("{tmp}/c.yaml", "empty")),
    Case("comment-only-config", config("# a config to fill in later\n"), 2,
         ("{tmp}/c.yaml", "empty")),
    Case("config-is-a-list", config("- task\n- model\n"), 2, ("expected a mapping",)),
    Case("alias-bomb", config(laughs("train", "iterations")), 2,
         ("train.iterations", "valid integer")),
    Case("alias-bomb-kind", config(laughs("task", "kind")), 2,
         ("task.kind", "expected one of sinusoid")),
    Case("missing-config", lambda c: ["train", str(c.tmp / "nope.yaml")], 2,
         ("{tmp}/nope.yaml", "not found")),
    Case("bad-set", lambda c: ["train", str(SINE), "--set", "model.hidden", "--runs-root",
                               str(c.runs)], 2, ("model.hidden", "section.key=value")),
    # -- data (exit 1, nothing created)
    Case("data-missing", image_train(root="/nonexistent/fewshot-data"), 1,
         ("/nonexistent/fewshot-data", "no such folder")),
    Case("data-empty", image_train(root="{tmp}/empty", folders=("empty",)), 1,
         ("{tmp}/empty/train", "no such folder")),
    Case("data-no-images", image_train(root="{tmp}/bad", folders=[
        f"bad/{split}/class_{k}" for split in ("train", "test") for k in range(5)]), 1,
         ("{tmp}/bad/train/class_", "found 0")),
    Case("more-ways-than-classes", image_train("--set", "task.ways=6"), 1,
         ("{data}/train", "at least 6 classes", "found 5")),
    Case("more-shots-than-images", image_train("--set", "task.shots=3", "--set",
                                               "task.queries=2"), 1,
         ("{data}/train/class_", "shots 3 + queries 2", "found 4")),
    # -- not a run, no checkpoint, no metrics
    Case("eval-not-a-run", lambda c: ["eval", str(c.tmp)], 1,
         ("{tmp}", "not a run directory")),
    Case("plot-not-a-run", lambda c: ["plot", str(c.tmp)], 1,
         ("{tmp}", "not a run directory")),
    Case("plot-missing-folder", lambda c: ["plot", str(c.tmp / "gone")], 1,
         ("{tmp}/gone", "no such run directory")),
    Case("eval-no-checkpoint", on_run("eval", damage=no_checkpoints), 1,
         ("{run}/checkpoints/last.pt", "no checkpoint")),
    Case("plot-no-checkpoint", on_run("plot", damage=no_checkpoints), 1,
         ("{run}/checkpoints/last.pt", "no checkpoint")),
    # A checkpoint is all that eval needs (metrics.jsonl is the training log), so eval of a
    # run without metrics succeeds; plot has nothing to draw and says so.
    Case("eval-no-metrics", on_run("eval", "--tasks", "3", "--steps", "1", damage=no_metrics),
         0, changes=("eval.json", "eval-history.jsonl")),
    Case("plot-no-metrics", on_run("plot", damage=no_metrics), 1,
         ("{run}/metrics.jsonl", "nothing to plot")),
    Case("plot-metrics-only-junk", on_run("plot", damage=append_metrics(
        b'[1, 2]\n{"x": 1}\n{"iteration": true}\n', replace=True)), 1,
         ("{run}/metrics.jsonl", "nothing to plot")),
    # -- damaged checkpoints (plot must refuse before writing any PNG)
    Case("eval-truncated-checkpoint", on_run("eval", damage=both_checkpoints(truncate)), 1,
         ("{run}/checkpoints/last.pt", "corrupt or unreadable checkpoint")),
    Case("plot-truncated-checkpoint", on_run("plot", damage=both_checkpoints(truncate)), 1,
         ("{run}/checkpoints/last.pt", "corrupt or unreadable checkpoint")),
    Case("eval-random-bytes", on_run("eval", damage=both_checkpoints(random_bytes)), 1,
         ("{run}/checkpoints/last.pt",)),
    Case("plot-random-bytes", on_run("plot", "--checkpoint", "best",
                                     damage=both_checkpoints(random_bytes)), 1,
         ("{run}/checkpoints/best.pt",)),
    Case("eval-pickled-code", on_run("eval", damage=both_checkpoints(pickled_code)), 1,
         ("{run}/checkpoints/last.pt", "refused"), check=marker_absent),
    Case("plot-pickled-code", on_run("plot", damage=both_checkpoints(pickled_code)), 1,
         ("{run}/checkpoints/last.pt", "refused"), check=marker_absent),
    Case("resume-pickled-code", on_run("resume", damage=both_checkpoints(pickled_code)), 1,
         ("{run}/checkpoints/last.pt", "refused"), check=marker_absent),
    Case("eval-algorithm-not-a-dict", on_run("eval", damage=both_checkpoints(algorithm_list)),
         1, ("{run}/checkpoints/last.pt", "not a fewshot checkpoint")),
    # -- config.yaml edited after training
    Case("eval-config-activation-changed",
         on_run("eval", damage=edit_config("model", "activation", "tanh")), 2,
         ("{run}/checkpoints/last.pt", "model.activation", "'relu'", "'tanh'")),
    Case("eval-config-hidden-changed", on_run("eval", damage=edit_config("model", "hidden", [8])),
         2, ("model.hidden", "[40, 40]", "[8]")),
    Case("plot-config-hidden-changed", on_run("plot", damage=edit_config("model", "hidden", [8])),
         2, ("model.hidden",)),
    # -- devices
    Case("eval-device-cuda", on_run("eval", "--device", "cuda"), 2, ("cuda", "not available"),
         skip=NO_CUDA),
    Case("eval-device-tpu", on_run("eval", "--device", "tpu"), 2, ("--device", "'tpu'")),
    Case("eval-device-meta", on_run("eval", "--device", "meta"), 2, ("--device", "'meta'")),
    Case("train-device-cuda7", lambda c: ["train", str(SINE), *SHORT, "--device", "cuda:7",
                                          "--runs-root", str(c.runs)], 2, ("cuda:7",),
         skip="8 GPUs here" if torch.cuda.device_count() > 7 else None),
    # -- eval options
    Case("eval-inner-lr-nan", on_run("eval", "--inner-lr", "nan"), 2, ("--inner-lr", "nan")),
    Case("eval-inner-lr-inf", on_run("eval", "--inner-lr", "inf"), 2, ("--inner-lr", "inf")),
    Case("eval-inner-lr-zero", on_run("eval", "--inner-lr", "0"), 2, ("--inner-lr", "> 0")),
    # -- resume
    Case("resume-not-a-run", lambda c: ["train", "--resume", str(c.tmp)], 1,
         ("{tmp}", "not a run directory")),
    Case("resume-with-config", lambda c: ["train", str(SINE), "--resume", str(c.run)], 2,
         (str(SINE), "--resume")),
    Case("resume-changes-model", on_run("resume", "--set", "model.hidden=[8]"), 2,
         ("model.hidden", "only train.*, eval.* and device")),
    # -- run files edited by hand: skipped where the file allows it, never a traceback
    Case("plot-metrics-junk-lines", on_run("plot", damage=append_metrics(
        b'[1, 2]\n{"x": 1}\n"row"\n{"iteration": -3}\n{"iteration": 25, "loss": "low"}\n'
        b'{"iteration": 30, "loss": 1e999, "inner_loss": [1e999, 100000000000000000000'
        b'0000000000000000000000000000000000000000000000000000000000000000000000000000000'
        b'0000000000000000000000000000000000000000000000000000000000000000000000000000000'
        b'00000000000000000000000000000000000000000000000000000000000000000000000000000000'
        b'0000000000000000000000000000000000000000000000000000000000000000000000000000]}\n')),
         0, changes=("plots",), check=made("plots/loss.png", "plots/metrics.png")),
    Case("plot-metrics-not-utf8", on_run("plot", damage=append_metrics(
        b'\xff\xfe{"iteration": 3\x80}\n\xc3\x28\n')), 0, changes=("plots",),
         check=made("plots/loss.png")),
    Case("eval-meta-is-a-list", on_run("eval", "--tasks", "3", "--steps", "1",
                                       damage=write_file("meta.json", "[1, 2]\n")), 0,
         changes=("eval.json", "eval-history.jsonl")),
    Case("plot-meta-is-a-list", on_run("plot", damage=write_file("meta.json", "[1, 2]\n")), 0,
         changes=("plots",), check=made("plots/loss.png")),
    # the figures eval.json does not feed are still written; the one it does is an error
    Case("plot-eval-json-not-an-evaluation", on_run("plot", damage=write_file(
        "eval.json", '{"per_step": [1], "settings": {}}\n')), 1,
         ("{run}/eval.json", "unreadable", "adaptation.png not drawn"), changes=("plots",),
         check=lambda c, p: (made("plots/loss.png")(c, p),
                             not_made("plots/adaptation.png")(c, p))),
    Case("vectorize-cache-garbage", vectorize_cache("{not json"), 0,
         check=trained_with_cache),
    Case("vectorize-cache-list", vectorize_cache("[1, 2, 3]"), 0, check=trained_with_cache),
]


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    if not run.is_dir():
        return {}
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


@dataclass
class Outcome:
    ctx: Ctx
    before: dict[str, tuple[bytes, int]]
    proc: subprocess.CompletedProcess


TIMEOUT_S = 240
#: The fork server: reads one JSON job per line, forks, and in the child runs
#: ``python -m fewshot_cli`` (``runpy``, as ``-m`` does); answers the exit status.
SERVER = r"""
import json, os, runpy, sys, time, traceback
import fewshot_cli.cli, fewshot_cli.engine.runner, fewshot_cli.plots  # the costly imports
MAIN = os.path.join(os.path.dirname(fewshot_cli.cli.__file__), "__main__.py")

def child(job):
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    for fd, name, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        f = os.open(name, flags, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = [MAIN, *job["args"]]
    try:
        runpy.run_module("fewshot_cli", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1

for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child(job)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + job["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            code = "timeout"
            break
        time.sleep(0.01)
    print(json.dumps(code), flush=True)
"""


class Cli:
    """``run(args, cwd, env)``: ``python -m fewshot_cli ARGS`` in a process of its own
    (forked from a server, or a fresh interpreter with FEWSHOT_TEST_SUBPROCESS=1)."""

    def __init__(self, env: dict[str, str], io_dir: Path) -> None:
        self.io_dir = io_dir
        self.fresh = bool(os.environ.get("FEWSHOT_TEST_SUBPROCESS")) or not hasattr(os, "fork")
        self.servers: queue.Queue[subprocess.Popen] = queue.Queue()
        self.all: list[subprocess.Popen] = []
        if not self.fresh:
            for _ in range(WORKERS):
                server = subprocess.Popen([sys.executable, "-c", SERVER], env=env, text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                self.all.append(server)
                self.servers.put(server)

    def run(self, name: str, args: list[str], cwd: Path, env: dict[str, str]
            ) -> subprocess.CompletedProcess:
        if self.fresh:
            return subprocess.run([sys.executable, "-m", "fewshot_cli", *args], cwd=cwd,
                                  env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        out, err = self.io_dir / f"{name}.stdout", self.io_dir / f"{name}.stderr"
        server = self.servers.get()
        try:
            server.stdin.write(json.dumps({"args": args, "cwd": str(cwd), "env": env,
                                           "stdout": str(out), "stderr": str(err),
                                           "timeout": TIMEOUT_S}) + "\n")
            server.stdin.flush()
            code = json.loads(server.stdout.readline())
        finally:
            self.servers.put(server)
        assert code != "timeout", f"{args} ran for more than {TIMEOUT_S} s"
        return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())

    def close(self) -> None:
        for server in self.all:
            server.stdin.close()
            server.wait(timeout=60)


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             trained: Path, images: Path) -> dict[str, Outcome]:
    """Every selected row, run WORKERS at a time."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input"}
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "FEWSHOT_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    todo = [(case, Ctx(tmp_path_factory.mktemp(case.id), trained, images, dict(env)))
            for case in CASES if case.id in selected and case.skip is None]
    cli = Cli(env, tmp_path_factory.mktemp("io"))

    def run(case: Case, ctx: Ctx) -> Outcome:
        args = case.setup(ctx)
        before = _snapshot(ctx.tmp / "run")
        return Outcome(ctx, before, cli.run(case.id, args, ctx.tmp, ctx.env))

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            done = list(pool.map(lambda t: run(*t), todo))
    finally:
        cli.close()
    return {case.id: out for (case, _), out in zip(todo, done)}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, outcomes: dict[str, Outcome]) -> None:
    if case.skip:
        pytest.skip(case.skip)
    out = outcomes[case.id]
    c, p = out.ctx, out.proc
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.returncode == case.code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    if case.code:
        assert len(lines) == 1, p.stderr
        line = lines[0]
        assert line.startswith("error:"), line
        assert len(line) < MAX_LINE, line
        for needle in case.needles:
            needle = needle.format(tmp=c.tmp, run=c.tmp / "run", data=c.data)
            assert needle in line, (needle, line)
        assert not c.runs.exists(), "a failed train left a run directory"
    else:
        assert not any(x.startswith("error:") for x in lines), p.stderr
    after = _snapshot(c.tmp / "run")
    for name in sorted(out.before.keys() | after.keys()):
        if any(name == x or name.startswith(x + "/") for x in case.changes):
            continue
        assert name in after, f"{name} was removed"
        assert name in out.before, f"{name} was written"
        assert out.before[name] == after[name], f"{name} was changed"
    if case.check is not None:
        case.check(c, p)


# ----------------------------------------------------------------------------- in process
def _lines(text: str) -> list[str]:
    return [x for x in text.strip().splitlines() if x.strip()]


def _copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_json_files_are_standard(trained: Path, tmp_path: Path) -> None:
    run = _copy(trained, tmp_path)
    # a diverging inner loop puts non-finite losses into the result: they must become null
    r = runner.invoke(app, ["eval", str(run), "--tasks", "8", "--steps", "6", "--inner-lr", "80"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval.json").read_text())["diverged_tasks"] > 0

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))

    for name in ("meta.json", "eval.json"):
        assert isinstance(strict((run / name).read_text()), dict), name
    for name in ("metrics.jsonl", "eval-history.jsonl"):
        lines = (run / name).read_text().splitlines()
        assert lines and all(isinstance(strict(x), dict) for x in lines), name


@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_full_disk_during_training(what: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on the second checkpoint write (best.pt at iteration 10) or the second
    metrics row: one error line, status failed, the earlier last.pt intact."""
    run = tmp_path / "run"
    calls = []

    def full() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    if what == "checkpoint":  # the checkpoint's bytes cannot be written to the disk
        real_write = checkpoint.atomic_write

        def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
            def failing(f: Any) -> None:
                full()
                write(f)

            real_write(path, failing)

        monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)
    else:
        real_open = io.open

        def fake_open(file: object, mode: str = "r", *a: object, **k: object) -> object:
            if str(file).endswith("metrics.jsonl") and "a" in mode:
                full()
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr(io, "open", fake_open)
    r = runner.invoke(app, ["train", str(SINE), *SHORT, "--run-dir", str(run)])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    errors = [x for x in _lines(r.stderr) if x.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], r.stderr
    name = "best.pt" if what == "checkpoint" else "metrics.jsonl"
    assert name in errors[0], errors[0]
    assert json.loads((run / "meta.json").read_text())["status"] == "failed"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 0
    assert not [p for p in (run / "checkpoints").iterdir() if p.suffix == ".tmp"]


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """``read_only(folder)``: every write under ``folder`` fails with EROFS, as on a
    read-only mount (tests run as root, where chmod a-w stops nothing)."""
    def protect(folder: Path) -> None:
        root = os.path.abspath(folder)

        def inside(path: object) -> bool:
            if not isinstance(path, (str, os.PathLike)):
                return False  # a file descriptor
            p = os.path.abspath(os.fspath(path))
            return p == root or p.startswith(root + os.sep)

        def refuse(path: object) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

        real_os_open = os.open

        def os_open(path: object, flags: int, *a: object, **k: object) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) \
                    and inside(path):
                refuse(path)
            return real_os_open(path, flags, *a, **k)

        real_io_open = io.open

        def io_open(file: object, mode: str = "r", *a: object, **k: object) -> object:
            if any(m in mode for m in "wax+") and inside(file):
                refuse(file)
            return real_io_open(file, mode, *a, **k)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(io, "open", io_open)
        monkeypatch.setattr(builtins, "open", io_open)
        for name in ("mkdir", "replace", "rename", "unlink", "remove", "rmdir", "link",
                     "chmod"):
            real = getattr(os, name)

            def fake(path: object, *a: object, _real: Callable = real, **k: object) -> object:
                if inside(path):
                    refuse(path)
                return _real(path, *a, **k)

            monkeypatch.setattr(os, name, fake)
    return protect


def _tree(run: Path) -> Iterator[tuple[str, bytes]]:
    for p in sorted(run.rglob("*")):
        if p.is_file():
            yield str(p.relative_to(run)), p.read_bytes()


def test_eval_on_a_read_only_run_prints_then_fails(trained: Path, tmp_path: Path,
                                                   read_only: Callable[[Path], None]) -> None:
    run = _copy(trained, tmp_path)
    before = list(_tree(run))
    read_only(run)
    r = runner.invoke(app, ["eval", str(run), "--tasks", "3", "--steps", "1"])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "loss mean" in r.stdout, "the results table is printed before the error"
    errors = _lines(r.stderr)
    assert len(errors) == 1 and errors[0].startswith("error:"), r.stderr
    assert f"{run}/eval.json" in errors[0] and "Read-only file system" in errors[0]
    assert list(_tree(run)) == before


def test_plot_on_a_read_only_run_is_one_line(trained: Path, tmp_path: Path,
                                             read_only: Callable[[Path], None]) -> None:
    run = _copy(trained, tmp_path)
    before = list(_tree(run))
    read_only(run)
    r = runner.invoke(app, ["plot", str(run)])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    errors = _lines(r.stderr)
    assert len(errors) == 1 and errors[0].startswith("error:"), r.stderr
    assert f"{run}/plots/loss.png" in errors[0] and "Read-only file system" in errors[0]
    assert list(_tree(run)) == before
