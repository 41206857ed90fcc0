"""What a new user hits first: shell completion, ``--set algorithm.kind=X`` on a config of
another kind, ``--checkpoint best`` on a run without best.pt, an unreadable eval.json in
``plot`` and ``compare``, and the progress bars of ``eval`` and of decoding images."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import SHORT, invoke, runner
from image_fixtures import make_image_folder
from rich.console import Console

from fewshot_cli import cli
from fewshot_cli.cli import app
from fewshot_cli.completion import complete_config, complete_run_dir
from fewshot_cli.config import load_config
from fewshot_cli.engine.evaluator import eval_settings, evaluate_protocols
from fewshot_cli.errors import RunDirError
from fewshot_cli.report import Bars, DecodeBars, decode_bars
from fewshot_cli.rundir import RunDir
from fewshot_cli.tasks import image_cache

ROOT = Path(__file__).resolve().parents[1]
SINE = ROOT / "configs" / "sine-maml.yaml"


def lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny evaluated sinusoid run (best.pt, last.pt at iteration 10, eval.json)."""
    run = tmp_path_factory.mktemp("runs") / "sine"
    invoke("train", SINE, "--run-dir", run, *SHORT)
    invoke("eval", run, "--tasks", "4", "--steps", "2")
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "sine"))


# --------------------------------------------------------------------------- completion
@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F _fewshot_completion"),
                                           ("zsh", "compdef _fewshot_completion fewshot")])
def test_show_completion_prints_the_shell_script(shell: str, marker: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the shell is named rather than detected from the processes above the test
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    r = runner.invoke(app, ["--show-completion", shell], prog_name="fewshot")
    assert r.exit_code == 0, r.output
    assert marker in r.output and "_FEWSHOT_COMPLETE" in r.output


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("configs/a.yaml", "configs/b.yml", "configs/notes.txt", "top.yaml",
                 "runs/sine-1/meta.json", "runs/sine-2/config.yaml", "runs/other/x.txt",
                 "data/omniglot/x.png", ".hidden/c.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x: 1\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_config_completion_offers_yaml_files_and_the_folders_holding_them(tree: Path) -> None:
    assert complete_config("") == ["top.yaml", "configs/"]
    assert complete_config("configs/") == ["configs/a.yaml", "configs/b.yml"]
    assert complete_config("co") == ["configs/a.yaml", "configs/b.yml"]  # a lone folder opens
    assert complete_config("configs/b") == ["configs/b.yml"]
    assert complete_config("nothing") == []
    assert complete_config(".h") == [".hidden/c.yaml"]
    assert complete_config(f"{tree}/configs/a") == [f"{tree}/configs/a.yaml"]


def test_run_dir_completion_offers_run_directories(tree: Path) -> None:
    assert complete_run_dir("") == ["runs/sine-1", "runs/sine-2"]  # runs/ opened
    assert complete_run_dir("runs/") == ["runs/sine-1", "runs/sine-2"]
    assert complete_run_dir("runs/sine-2") == ["runs/sine-2"]
    assert complete_run_dir("runs/o") == []
    assert complete_run_dir("data/") == []
    assert complete_run_dir(f"{tree}/runs/s") == [f"{tree}/runs/sine-1", f"{tree}/runs/sine-2"]


@pytest.mark.parametrize("words, want", [
    ("fewshot eval runs/s", ["runs/sine-1", "runs/sine-2"]),
    ("fewshot compare runs/sine-1 runs/", ["runs/sine-1", "runs/sine-2"]),
    ("fewshot plot --baseline runs/sine-2 runs/sine-1", ["runs/sine-1"]),
    ("fewshot train --resume runs/sine-", ["runs/sine-1", "runs/sine-2"]),
    ("fewshot train configs/", ["configs/a.yaml", "configs/b.yml"]),
])
def test_the_shell_asks_and_gets_the_candidates(tree: Path, words: str, want: list[str]) -> None:
    env = {"_FEWSHOT_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - 1)}
    r = runner.invoke(app, [], prog_name="fewshot", env=env)
    assert r.exit_code == 0, r.output
    assert r.output.split() == want


# --------------------------------------------------------------------------- --set X.kind=Y
def test_setting_another_algorithm_kind_drops_the_old_kinds_options() -> None:
    notes: list[str] = []
    cfg = load_config(SINE, ["algorithm.kind=reptile"], notes)
    assert cfg.algorithm.kind == "reptile"
    assert (cfg.algorithm.inner_lr, cfg.algorithm.meta_batch) == (0.01, 25)  # kept
    assert notes == ["algorithm.kind=reptile: dropped first_order (not an option of reptile)"]
    notes.clear()
    load_config(SINE, ["algorithm.kind=maml"], notes)
    assert notes == []  # the same kind: nothing dropped, nothing said
    cfg = load_config(SINE, ["task.kind=image_folder", "model.kind=conv4",
                             "algorithm.loss=cross_entropy"], notes)
    assert (cfg.task.kind, cfg.model.kind, cfg.task.shots) == ("image_folder", "conv4", 10)
    assert notes == [
        "task.kind=image_folder: dropped amplitude, phase, x_range, noise_std "
        "(not options of image_folder)",
        "model.kind=conv4: dropped hidden, activation (not options of conv4)"]


def test_train_prints_one_note_and_a_set_key_of_the_old_kind_is_still_an_error(
        tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", str(SINE), "--set", "algorithm.kind=reptile", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert lines(r.stderr) == ["note: algorithm.kind=reptile: dropped first_order (not an "
                               "option of reptile)"]
    algorithm = yaml.safe_load(r.stdout)["algorithm"]
    assert algorithm["kind"] == "reptile" and "first_order" not in algorithm
    for order in (["algorithm.kind=reptile", "algorithm.first_order=true"],
                  ["algorithm.first_order=true", "algorithm.kind=reptile"]):
        r = runner.invoke(app, ["train", str(SINE), "--dry-run",
                                *[x for o in order for x in ("--set", o)]])
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert lines(r.output) == [lines(r.output)[0]]
        assert "--set 'algorithm.first_order=true'" in r.output
        assert "unknown key 'algorithm.first_order'" in r.output
    # a typo in the file is not an option of the old kind: it is not dropped but reported
    typo = tmp_path / "typo.yaml"
    typo.write_text("algorithm:\n  kind: maml\n  first_ordr: true\n")
    r = runner.invoke(app, ["train", str(typo), "--dry-run", "--set", "algorithm.kind=anil"])
    assert r.exit_code == 2 and "unknown key 'algorithm.first_ordr'" in r.output


# --------------------------------------------------------------------------- --checkpoint best
def test_eval_without_best_pt(run: Path, trained: Path) -> None:
    (run / "checkpoints" / "best.pt").unlink()
    before = (run / "eval.json").read_bytes()
    # asked for by name: refused, naming what there is
    r = runner.invoke(app, ["eval", str(run), "--checkpoint", "best", "--tasks", "3"])
    assert r.exit_code == 1 and len(lines(r.output)) == 1, r.output
    assert f"{run}/checkpoints/best.pt does not exist" in r.output
    assert "last.pt (iteration 10)" in r.output and "--checkpoint last" in r.output
    assert (run / "eval.json").read_bytes() == before
    # the config's default: a warning, and last.pt
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["checkpoint"] = "best"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = runner.invoke(app, ["eval", str(run), "--tasks", "3", "--steps", "1"])
    assert r.exit_code == 0, r.output
    warning = [x for x in lines(r.stderr) if x.startswith("warning:")]
    assert warning == [f"warning: {run}/checkpoints/best.pt does not exist (the run has no "
                       "validation split, or has not validated yet); evaluating last.pt "
                       "(iteration 10) instead"]
    result = json.loads((run / "eval.json").read_text())
    assert (result["checkpoint"], result["checkpoint_requested"]) == ("last", "best")
    # a baseline without best.pt: a warning naming it
    r = runner.invoke(app, ["eval", str(trained), "--checkpoint", "best", "--tasks", "3",
                            "--steps", "1", "--baseline", str(run)])
    assert r.exit_code == 0, r.output
    assert f"warning: --baseline {run}: {run}/checkpoints/best.pt does not exist" in r.stderr


def test_plot_best_without_best_pt_is_refused(run: Path) -> None:
    (run / "checkpoints" / "best.pt").unlink()
    r = runner.invoke(app, ["plot", str(run), "--checkpoint", "best"])
    assert r.exit_code == 1 and len(lines(r.output)) == 1, r.output
    assert "best.pt does not exist" in r.output and not (run / "plots").exists()


# --------------------------------------------------------------------------- unreadable eval.json
@pytest.mark.parametrize("text, cause", [
    ("{not json", "unreadable (not JSON: Expecting property name enclosed in double quotes at "
                  "line 1, column 2)"),
    ('{"per_step": [1], "settings": {}}', "unreadable (no evaluation in it"),
])
def test_plot_draws_what_it_can_and_fails_on_an_unreadable_eval_json(
        run: Path, text: str, cause: str) -> None:
    (run / "eval.json").write_text(text)
    r = runner.invoke(app, ["plot", str(run)])
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    errors = lines(r.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: {run}/eval.json: {cause}")
    assert "adaptation.png not drawn" in errors[0]
    written = {Path(x).name for x in lines(r.stdout)}
    assert {"loss.png", "metrics.png", "fit.png"} <= written
    assert all((run / "plots" / name).is_file() for name in written)
    assert not (run / "plots" / "adaptation.png").exists()
    assert (run / "eval.json").read_text() == text  # left as it was


def test_load_results_names_the_cause(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.load_results() == []  # not evaluated: nothing, and no error
    (tmp_path / "eval.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(RunDirError, match="eval.json: unreadable \\(not UTF-8 text\\)"):
        run.load_results()
    (tmp_path / "eval.json").unlink()
    (tmp_path / "eval.json").mkdir()
    with pytest.raises(RunDirError, match="eval.json: unreadable \\(Is a directory\\)"):
        run.load_results()
    assert run.read_results() == []  # the lenient reader stays lenient


def test_compare_names_an_unreadable_eval_json(run: Path, trained: Path, tmp_path: Path
                                               ) -> None:
    (run / "eval.json").write_text("[1, 2")
    r = runner.invoke(app, ["compare", str(trained), str(run), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert f"warning: {run}/eval.json: unreadable (not JSON:" in text and "left out" in text
    assert "no evaluation yet" not in text
    r = runner.invoke(app, ["compare", str(run), "-o", str(tmp_path / "d.png")])
    assert r.exit_code == 1 and len(lines(r.output)) == 1
    assert "nothing to compare" in r.output and f"{run}/eval.json: unreadable" in r.output
    assert not (tmp_path / "d.png").exists()


# --------------------------------------------------------------------------- progress
def test_evaluate_protocols_reports_each_chunk(trained: Path) -> None:
    run = RunDir(trained)
    cfg = run.read_config()
    protocols = [eval_settings(cfg, tasks=5, steps=1, shots=k, chunk=2) for k in (2, 3)]
    calls: list[tuple[int, int]] = []
    evaluate_protocols(run, protocols, "cpu", progress=lambda p, done: calls.append((p, done)))
    assert calls == [(0, 2), (0, 4), (0, 5), (1, 2), (1, 4), (1, 5)]


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=100), buffer


def test_eval_bar_on_a_terminal_only(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = runner.invoke(app, ["eval", str(run), "--tasks", "3", "--steps", "1", "--shots", "2,3"])
    assert r.exit_code == 0, r.output
    assert "━" not in r.stderr and "eval K=" not in r.output  # not a terminal: no bar
    console, buffer = terminal()
    monkeypatch.setattr(cli, "err", console)
    invoke("eval", run, "--tasks", "3", "--steps", "1", "--shots", "2,3")
    shown = buffer.getvalue()
    assert "eval K=2" in shown and "eval K=3" in shown and "3/3" in shown
    console, buffer = terminal()
    monkeypatch.setattr(cli, "err", console)
    invoke("eval", run, "--tasks", "3", "--steps", "1", "--no-progress")
    assert "━" not in buffer.getvalue() and "3/3" not in buffer.getvalue()


def test_bars_are_silent_off_a_terminal() -> None:
    buffer = io.StringIO()
    with Bars(Console(file=buffer), True) as bars:
        assert bars.add("eval", 4) is None
        bars.update(None, 4)
    assert buffer.getvalue() == ""
    console, buffer = terminal()
    with Bars(console, False) as bars:
        assert bars.add("eval", 4) is None
    assert buffer.getvalue() == ""


def image_classes(tmp_path: Path) -> tuple[Path, list, image_cache.Preprocess]:
    root = make_image_folder(tmp_path / "images", {"train": 3}, per_class=4, size=8)
    classes = [(d.name, image_cache.list_images(d))
               for d in image_cache.list_subfolders(root / "train")]
    return root / "train", classes, image_cache.Preprocess(image_size=8)


@pytest.mark.parametrize("workers", [1, 3])
def test_first_decode_reports_its_progress(tmp_path: Path, workers: int) -> None:
    root, classes, prep = image_classes(tmp_path)
    started: list[tuple[str, int]] = []
    advanced: list[int] = []

    def start(what: str, total: int) -> image_cache.Advance:
        started.append((what, total))
        return advanced.append

    with image_cache.decode_progress(start):
        image_cache.load_image_set(root, classes, prep, cache_dir=tmp_path / "c",
                                   workers=workers)
        assert started == [("images", 12)] and sum(advanced) == 12
        cached = image_cache.load_image_set(root, classes, prep, cache_dir=tmp_path / "c")
    assert cached.from_cache and started == [("images", 12)]  # from the cache: no bar


def test_decode_bar_on_a_terminal_only(tmp_path: Path) -> None:
    root, classes, prep = image_classes(tmp_path)
    buffer = io.StringIO()
    with decode_bars(Console(file=buffer), True):
        image_cache.load_image_set(root, classes, prep, cache_dir=tmp_path / "a")
    assert buffer.getvalue() == ""
    console, buffer = terminal()
    with decode_bars(console, True):
        image_cache.load_image_set(root, classes, prep, cache_dir=tmp_path / "b")
    assert "decoding images" in buffer.getvalue() and "12/12" in buffer.getvalue()
    bars = DecodeBars(console)
    advance = bars("omniglot", 2)
    assert advance is not None and bars.bars is not None and bars.bars.started
    advance(2)
    assert not bars.bars.started  # done: gone before the next bar (training's) starts


def test_train_shows_the_decode_bar_on_a_terminal_only(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_folder(tmp_path / "images", {"train": 2, "test": 2}, per_class=2, size=8)
    config = tmp_path / "images.yaml"
    config.write_text(yaml.safe_dump({
        "device": "cpu",
        "task": {"kind": "image_folder", "root": str(root), "ways": 2, "shots": 1,
                 "queries": 1, "image_size": 28},
        "model": {"kind": "conv4", "filters": 2},
        "algorithm": {"meta_batch": 1},
        "train": {"iterations": 2, "log_every": 1, "checkpoint_every": 2,
                  "vectorize": "loop"}}))

    def train(name: str) -> str:  # decodes: a cache folder of its own
        return invoke("train", config, "--run-dir", tmp_path / name, "--set",
                      f"task.cache_dir={tmp_path / name}-cache")

    assert "decoding" not in train("quiet")  # stderr is not a terminal
    console, buffer = terminal()
    monkeypatch.setattr(cli, "err", console)
    train("shown")
    assert "decoding image_folder-train" in buffer.getvalue()
    assert "decoding image_folder-test" in buffer.getvalue()


def test_data_check_command_reports_and_exits_by_its_verdict(tmp_path: Path) -> None:
    from fewshot_cli.completion import candidates

    root = make_image_folder(tmp_path / "images", splits={"train": 4, "test": 3}, per_class=3)
    config = tmp_path / "c.yaml"
    config.write_text(f"task: {{kind: image_folder, root: {root}, ways: 3, shots: 1, "
                      "queries: 1}\nmodel: {kind: conv4}\nalgorithm: {kind: maml}\n")
    r = runner.invoke(app, ["data", "check", str(config)])
    assert r.exit_code == 0, r.output
    assert "image_folder at" in r.output and "as expected" in r.output
    r = runner.invoke(app, ["data", "check", str(config), "--set", "task.ways=4"])
    assert r.exit_code == 1 and "expected at least 4 classes for 4-way tasks" in r.output
    r = runner.invoke(app, ["data", "check", str(tmp_path / "missing.yaml")])
    assert r.exit_code != 0 and r.output.count("error:") == 1 and "Traceback" not in r.output
    assert candidates(str(tmp_path) + "/c", lambda p: p.suffix == ".yaml") == [str(config)]


def test_data_convert_command_refuses_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["data", "convert-miniimagenet", str(tmp_path / "nope"),
                                 str(tmp_path / "out")])
    assert r.exit_code == 1 and r.output.count("error:") == 1
    assert "expected a folder holding mini-imagenet-cache-train.pkl" in r.output
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_kind_follows_a_task_switch(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("task: {kind: sinusoid}\nmodel: {hidden: [8, 8], activation: relu}\n"
                      "algorithm: {kind: maml, loss: mse}\n")
    notes: list[str] = []
    cfg = load_config(config, ["task.kind=omniglot", "algorithm.loss=cross_entropy"], notes)
    assert cfg.model.kind == "conv4" and cfg.task.kind == "omniglot"
    assert notes == ["model.kind=conv4, which follows task.kind=omniglot: dropped hidden, "
                     "activation (not options of conv4)"]


def test_eval_keeps_an_unreadable_eval_json_aside(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "eval.json").write_text("{half a file")
    r = runner.invoke(app, ["eval", str(run), "--tasks", "3", "--steps", "1"])
    assert r.exit_code == 0, r.output
    kept = sorted(run.glob("eval-unreadable-*.json"))
    assert len(kept) == 1 and kept[0].read_text() == "{half a file"
    assert f"held no readable evaluation; kept as {kept[0]}" in " ".join(r.stderr.split())
    assert json.loads((run / "eval.json").read_text())["results"]
