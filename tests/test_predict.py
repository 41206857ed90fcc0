"""The Python API (``fewshot_cli.load``, ``adapt``, ``predict``), ``fewshot predict`` and
``fewshot export``: every bundled algorithm adapts through it exactly as ``fewshot eval``
adapts, without the training data; bad input is one line and a non-zero exit."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import SHORT, invoke, runner, train_omniglot_fixture
from PIL import Image

import fewshot_cli
from fewshot_cli.cli import app
from fewshot_cli.engine.evaluator import load_experiment
from fewshot_cli.errors import FewshotError, InputError, RunDirError
from fewshot_cli.rundir import RunDir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
README = Path(__file__).resolve().parents[1] / "README.md"
REAL_OMNIGLOT = Path(os.environ.get(
    "FEWSHOT_OMNIGLOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))

SINE = ["sine-maml", "sine-metasgd", "sine-reptile", "sine-meta-lstm", "sine-daml",
        "sine-daml-chapter", "sine-pretrain"]
OMNIGLOT = ["omniglot-5w1s-maml", "omniglot-5w1s-fomaml", "omniglot-5w1s-mamlpp",
            "omniglot-5w1s-metasgd", "omniglot-5w1s-anil", "omniglot-5w1s-reptile",
            "omniglot-5w1s-meta-lstm"]
#: Settings that keep the fixture runs small (the algorithms' own rules unchanged).
SMALL = {"omniglot-5w1s-reptile": dict(task__shots=2, algorithm__inner_batch=5,
                                       algorithm__eval_inner_steps=4),
         "omniglot-5w1s-meta-lstm": dict(algorithm__sgd_reference_tasks=2, task__queries=2,
                                         algorithm__inner_steps=3,
                                         algorithm__eval_inner_steps=3),
         "omniglot-5w1s-mamlpp": dict(algorithm__inner_steps=2,
                                      algorithm__eval_inner_steps=2)}


def train_sine(tmp_path: Path, name: str) -> Path:
    run = tmp_path / name
    extra = ["--set", "algorithm.sgd_reference_tasks=2"] if "meta-lstm" in name else []
    invoke("train", CONFIGS / f"{name}.yaml", "--run-dir", run, *SHORT, *extra)
    return run


def eval_task(run: Path, shots: int | None = None) -> tuple[object, torch.Tensor, int]:
    """One test task drawn as ``fewshot eval`` draws it, and its query curve after the run's
    test-time steps through the evaluator's own adaptation (last step)."""
    exp, _ = load_experiment(RunDir(run), "last", "cpu")
    cfg = exp.cfg
    steps = cfg.eval.steps or cfg.algorithm.eval_inner_steps
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    batch = exp.source.sample(2, gen, "test", shots=shots, queries=cfg.eval.queries)
    batch = batch.to("cpu", exp.dtype)
    curve = exp.algo.evaluate_tasks(batch, steps, "loop", 1).curve
    return batch, curve[:, -1], steps


def check_equals_eval(run: Path) -> None:
    """The API's adapted model scores the evaluator's tasks exactly as ``fewshot eval``'s
    adaptation does (query loss and accuracy after the test-time steps)."""
    batch, scored, steps = eval_task(run)
    model = fewshot_cli.load(run, device="cpu", checkpoint="last")
    assert model.steps == steps
    for b in range(len(batch)):
        if model.kind == "daml":
            obs = batch.support_y[b] if model.algorithm.observation_dim else None
            adapted = model.adapt(batch.support_x[b], obs)
        else:
            adapted = model.adapt(batch.support_x[b], batch.support_y[b])
        out = adapted(batch.query_x[b])
        loss = model.algorithm.loss_fn(out, batch.query_y[b])  # the run's own task loss
        if model.problem == "classification":
            acc = (out.argmax(-1) == batch.query_y[b]).double().mean()
            assert adapted.classes == list(range(model.ways))
            assert adapted.predict(batch.query_x[b]) == out.argmax(-1).tolist()
            proba = adapted.predict_proba(batch.query_x[b])
            assert torch.allclose(proba.sum(-1), torch.ones(len(out)), atol=1e-5)
            assert acc.item() == pytest.approx(scored[b, 1].item(), abs=1e-6)
        assert loss.item() == pytest.approx(scored[b, 0].item(), rel=1e-4, abs=1e-6), run.name


@pytest.mark.parametrize("name", SINE)
def test_every_sine_algorithm_adapts_as_eval_does(tmp_path: Path, name: str) -> None:
    check_equals_eval(train_sine(tmp_path, name))


@pytest.mark.parametrize("name", OMNIGLOT)
def test_every_image_algorithm_adapts_as_eval_does(tmp_path: Path, name: str) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / f"{name}.yaml", name,
                                 **SMALL.get(name, {}))
    check_equals_eval(run)


def test_load_needs_no_training_data_and_export_round_trips(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-maml.yaml")
    batch, _, _ = eval_task(run)
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / "cache")
    model = fewshot_cli.load(run, device="cpu")
    expected = model.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0])
    out = invoke("export", run, tmp_path / "model.pt")
    assert str(tmp_path / "model.pt") in out
    shutil.move(run, tmp_path / "elsewhere")  # the file stands alone
    again = fewshot_cli.load(tmp_path / "model.pt", device="cpu")
    assert again.preprocess == model.preprocess and again.shape == model.shape
    assert torch.equal(again.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0]),
                       expected)
    # the file holds tensors and plain data only: torch's safe loader reads it
    assert torch.load(tmp_path / "model.pt", weights_only=True)["kind"] == "fewshot-model"
    r = runner.invoke(app, ["export", str(tmp_path / "elsewhere"), str(tmp_path / "model.pt")])
    assert r.exit_code != 0 and "exists" in r.output  # never overwritten without --force


def test_user_labels_order_and_class_count(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-maml.yaml")
    batch, _, _ = eval_task(run, shots=2)
    model = fewshot_cli.load(run, device="cpu")
    x, y = batch.support_x[0], batch.support_y[0]
    names = ["ant", "bee", "cat", "dog", "eel"]  # any values; classes come out sorted
    by_index = model.adapt(x, y)(batch.query_x[0])
    # the same set given class by class is put back in eval's order: the same adaptation
    order = torch.argsort(y, stable=True)
    named = model.adapt(x[order], [names[i] for i in y[order].tolist()])
    assert named.classes == sorted(names)
    proba = named.predict_proba(batch.query_x[0])
    assert torch.allclose(proba, by_index.softmax(-1), atol=1e-6)
    assert named.predict(batch.query_x[0]) == [names[i] for i in by_index.argmax(-1)]
    with pytest.raises(InputError, match="meta-trained on 5-way tasks"):
        model.adapt(x[:8], y[:8] % 4)
    with pytest.raises(InputError, match=r"expected a batch of shape \[n, 1, 28, 28\]"):
        model.adapt(torch.zeros(10, 3, 28, 28), y)


def write_support(root: Path, classes: dict[str, list[Path]]) -> Path:
    for name, files in classes.items():
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / name / f.name)
    return root


def omniglot_classes(data: Path, n: int, per: int) -> dict[str, list[Path]]:
    chars = sorted(data.glob("images_evaluation/*/character*"))[:n]
    return {c.name + "_" + c.parent.name: sorted(c.glob("*.png"))[:per] for c in chars}


def test_predict_command_on_image_folders(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-maml.yaml")
    classes = omniglot_classes(tmp_path / "data", 5, 3)
    support = write_support(tmp_path / "support", {k: v[:1] for k, v in classes.items()})
    query = write_support(tmp_path / "query", {k: v[1:] for k, v in classes.items()})
    out = invoke("predict", run, "--support", support, "--query", query, "--out",
                 tmp_path / "preds.csv")
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0].startswith("query,predicted,probability,p(")
    assert len(lines) == 1 + 10
    for line in lines[1:]:
        file, predicted, p, *ps = line.split(",")
        assert predicted in classes and float(p) == pytest.approx(max(map(float, ps)))
    assert "predicted" in out
    # the same through the API: the command adapts with the run's test-time steps
    model = fewshot_cli.load(run, device="cpu")
    files = sorted(str(p) for p in support.glob("*/*.png"))
    adapted = model.adapt(files, [Path(f).parent.name for f in files])
    queries = sorted(str(p) for p in query.glob("*/*.png"))
    assert [ln.split(",")[1] for ln in lines[1:]] == adapted.predict(queries)
    # files given one by one (a shell glob after --query) and --steps
    invoke("predict", run, "--support", support, "--steps", "1", "--query", *queries[:3])
    r = runner.invoke(app, ["predict", str(run), "--support", str(support), "--query",
                            str(query), "--out", str(tmp_path / "preds.csv")])
    assert r.exit_code != 0 and "exists" in r.output  # earlier results are kept


def one_line_error(args: list[object], pattern: str) -> None:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and r.output.count("error:") == 1, r.output
    assert re.search(pattern, r.output.replace("\n", " ")), r.output


def test_predict_bad_input_is_one_line(tmp_path: Path) -> None:
    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-maml.yaml")
    classes = omniglot_classes(tmp_path / "data", 6, 2)
    four = write_support(tmp_path / "four", dict(list(classes.items())[:4]))
    five = write_support(tmp_path / "five", dict(list(classes.items())[:5]))
    query = five / next(iter(classes))
    one_line_error(["predict", run, "--support", four, "--query", query],
                   r"4 class folders.*5-way tasks")
    empty = tmp_path / "empty_class"
    shutil.copytree(five, empty)
    for f in (empty / next(iter(classes))).iterdir():
        f.unlink()
    one_line_error(["predict", run, "--support", empty, "--query", query],
                   r"expected the class's support images")
    broken = tmp_path / "broken"
    shutil.copytree(five, broken)
    (next((broken / next(iter(classes))).iterdir())).write_bytes(b"not a png")
    one_line_error(["predict", run, "--support", broken, "--query", query],
                   r"expected a readable image")
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (20, 20)).save(lab)
    one_line_error(["predict", run, "--support", five, "--query", lab],
                   r"cannot convert its LAB pixels to 1")
    (tmp_path / "nothing").mkdir()
    one_line_error(["predict", run, "--support", five, "--query", tmp_path / "nothing"],
                   r"nothing: expected query images")
    one_line_error(["predict", tmp_path, "--support", five, "--query", query],
                   r"not a run directory|expected a run")
    one_line_error(["predict", run, "--support", tmp_path / "nope", "--query", query],
                   r"nope: expected a support folder")
    invoke("export", run, tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**state, "format": 99}, tmp_path / "newer.pt")
    one_line_error(["predict", tmp_path / "newer.pt", "--support", five, "--query", query],
                   r"written by a newer fewshot \(model file format 99")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    one_line_error(["predict", tmp_path / "junk.pt", "--support", five, "--query", query],
                   r"corrupt or unreadable model file")
    with pytest.raises(RunDirError, match="newer fewshot"):
        fewshot_cli.load(tmp_path / "newer.pt")


def test_predict_regression_from_points(tmp_path: Path) -> None:
    run = train_sine(tmp_path, "sine-maml")
    (tmp_path / "pts.csv").write_text("x,y\n-3,0.5\n0,1.2\n2,-0.4\n")
    invoke("predict", run, "--support", tmp_path / "pts.csv", "--query", "-1,0,1.5",
           "--out", tmp_path / "out.csv")
    rows = [r.split(",") for r in (tmp_path / "out.csv").read_text().splitlines()]
    assert rows[0] == ["x", "predicted"] and [float(r[0]) for r in rows[1:]] == [-1, 0, 1.5]
    model = fewshot_cli.load(run, device="cpu")
    expected = model.adapt([-3, 0, 2], [0.5, 1.2, -0.4]).predict([-1.0, 0.0, 1.5])
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(expected.flatten().tolist())
    with pytest.raises(InputError, match="regression"):
        model.adapt([-3, 0, 2], [0.5, 1.2, -0.4]).predict_proba([1.0])
    one_line_error(["predict", run, "--support", tmp_path, "--query", "1"],
                   r"give a CSV file of x,y rows")
    daml = train_sine(tmp_path, "sine-daml-chapter")  # the demonstration shows inputs alone
    (tmp_path / "demo.csv").write_text("-3\n0\n2\n-1\n1\n")
    invoke("predict", daml, "--support", tmp_path / "demo.csv", "--query", "0.5")
    with pytest.raises(InputError, match="leave observation out"):
        fewshot_cli.load(daml).adapt([-3.0, 0.0], [1.0, 2.0])


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use a trained model"):]
    train = re.search(r"fewshot train (configs/\S+) --run-dir (\S+)", section)
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert train and code
    monkeypatch.chdir(tmp_path)
    invoke("train", CONFIGS / Path(train.group(1)).name, "--run-dir", train.group(2), *SHORT)
    exec(compile(code.group(1), "README.md", "exec"), {})  # noqa: S102 - the README's own code


def test_real_omniglot_images(tmp_path: Path) -> None:
    if not (REAL_OMNIGLOT / "images_evaluation").is_dir():
        pytest.skip(f"real Omniglot not found at {REAL_OMNIGLOT} (set FEWSHOT_OMNIGLOT)")
    from fewshot_cli.tasks.image_cache import ImageFile, load_image_set
    from fewshot_cli.tasks.shapes import preprocess_of

    run = train_omniglot_fixture(tmp_path, CONFIGS / "omniglot-5w1s-maml.yaml")
    classes = omniglot_classes(REAL_OMNIGLOT, 5, 4)
    model = fewshot_cli.load(run, device="cpu")
    # the API prepares a real image exactly as the Omniglot task source decodes it
    files = [p for ps in classes.values() for p in ps]
    listed = [(name, [ImageFile(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in ps])
              for name, ps in classes.items()]
    data = load_image_set(REAL_OMNIGLOT, listed, preprocess_of(model.config.task),
                          cache_dir=tmp_path / "real-cache", tag="omniglot")
    assert torch.equal(model.transform(files), data.images.float() / 255.0)
    support = write_support(tmp_path / "support", {k: v[:1] for k, v in classes.items()})
    query = write_support(tmp_path / "query", {k: v[1:] for k, v in classes.items()})
    invoke("predict", run, "--support", support, "--query", query, "--out",
           tmp_path / "p.csv")
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 15


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no such path"):
        fewshot_cli.load(tmp_path / "missing")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(FewshotError):
        fewshot_cli.load(tmp_path / "x.pt")
    run = train_sine(tmp_path, "sine-maml")
    (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
    with pytest.raises(RunDirError, match="best.pt does not exist"):
        fewshot_cli.load(run, checkpoint="best")
    assert fewshot_cli.load(run).origin["checkpoint"] == "last.pt"
