"""``fewshot predict``: adapt a trained run (or an exported model) to your own support set and
predict your queries; ``fewshot export``: one file holding a trained model."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .completion import complete_run_dir
from .errors import DataError, FewshotError, InputError, RunDirError
from .files import atomic_write
from .options import CheckpointChoice, check_device
from .report import error_exit

out = Console()
err = Console(stderr=True)

_EXTENSIONS = ".png, .jpg, .jpeg"


# -- reading the user's examples ---------------------------------------------------------------
def support_images(folder: Path) -> tuple[list[str], list[str]]:
    """``folder/<class>/*.png|jpg|jpeg``: every image's path and its class (the folder's
    name), classes in name order."""
    from .tasks.image_cache import list_images, list_subfolders

    if not folder.is_dir():
        raise DataError(f"{folder}: expected a support folder of <class>/*.png|jpg|jpeg, "
                        "found no such folder")
    classes = list_subfolders(folder)
    if not classes:
        raise DataError(f"{folder}: expected one subfolder per class holding its images "
                        f"({_EXTENSIONS}), found no subfolders")
    paths, labels = [], []
    for c in classes:
        files = list_images(c)
        if not files:
            raise DataError(f"{c}: expected the class's support images ({_EXTENSIONS}), "
                            "found none")
        paths += [f.path for f in files]
        labels += [c.name] * len(files)
    return paths, labels


def query_images(items: list[str]) -> list[str]:
    """The query images: each item a file (any format Pillow reads) or a folder (its images
    and its subfolders' images, in name order)."""
    from .tasks.image_cache import list_images, list_subfolders

    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_file():
            paths.append(item)
        elif p.is_dir():
            found = [f.path for f in list_images(p)]
            stack = list_subfolders(p)
            while stack:
                sub = stack.pop(0)
                found += [f.path for f in list_images(sub)]
                stack[:0] = list_subfolders(sub)
            if not found:
                raise DataError(f"{p}: expected query images ({_EXTENSIONS}) in the folder or "
                                "its subfolders, found none")
            paths += found
        else:
            raise DataError(f"{item}: expected a query image or a folder of them, found no "
                            "such file or folder")
    return paths


def read_points(path: Path, columns: int, what: str) -> list[list[float]]:
    """Rows of numbers of a CSV file (a first row that is not numbers is a header), each
    with at least ``columns`` values."""
    if not path.is_file():
        raise DataError(f"{path}: expected a CSV file of {what}, found no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    out_rows: list[list[float]] = []
    for n, row in enumerate(rows, 1):
        try:
            values = [float(c) for c in row if c.strip()]
        except ValueError:
            if n == 1:
                continue  # a header
            raise DataError(f"{path}: line {n}: expected numbers, found {','.join(row)!r}"
                            ) from None
        if len(values) < columns:
            raise DataError(f"{path}: line {n}: expected {columns} value(s) ({what}), found "
                            f"{len(values)}")
        out_rows.append(values)
    if not out_rows:
        raise DataError(f"{path}: expected rows of {what}, found none")
    return out_rows


def query_points(items: list[str], width: int) -> list[list[float]]:
    """Regression queries: numbers (``0.5``, ``-1,0,1``) or CSV files of inputs."""
    points: list[list[float]] = []
    for item in items:
        if Path(item).is_file():
            points += [r[:width] for r in read_points(Path(item), width, "query inputs")]
            continue
        try:
            values = [float(v) for v in item.split(",") if v.strip()]
        except ValueError:
            raise DataError(f"--query {item}: expected input values (e.g. -1,0,2.5) or a CSV "
                            "file of them, found neither") from None
        if width != 1:
            raise InputError(f"--query {item}: this model takes {width} inputs per point; "
                             "give them as rows of a CSV file")
        points += [[v] for v in values]
    if not points:
        raise InputError("--query: no query points given")
    return points


# -- the commands --------------------------------------------------------------------------------
def predict(
    run: Annotated[Path, typer.Argument(
        metavar="RUN", help="A run directory of `fewshot train`, or a file of `fewshot "
        "export`.", autocompletion=complete_run_dir)],
    support: Annotated[Path, typer.Option(
        metavar="DIR|CSV", help="Image runs: a folder of <class>/*.png|jpg|jpeg, one class "
        "per subfolder. Regression runs: a CSV of x,y rows (DAML: the demonstration's "
        "x[,observation] rows).", show_default=False)],
    query: Annotated[list[str], typer.Option(
        metavar="DIR|FILE|X", help="Image runs: image files, or folders of them "
        "(subfolders included). Regression runs: x values (-1,0,2.5) or a CSV of them. "
        "Repeatable; more may follow as arguments.", show_default=False)],
    more: Annotated[list[str] | None, typer.Argument(
        metavar="QUERY", help="More queries (e.g. a shell glob after --query).",
        show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        min=0, metavar="S", help="Inner steps [default: the run's test-time steps].",
        show_default=False)] = None,
    out_csv: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", help="Also write the predictions to this CSV file.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --out file.")] = False,
    device: Annotated[str | None, typer.Option(
        metavar="DEVICE", help="cpu, cuda, cuda:N [default: CUDA when available].",
        show_default=False)] = None,
    checkpoint: Annotated[CheckpointChoice | None, typer.Option(
        help="Which checkpoint of a run [default: its eval.checkpoint].",
        show_default=False)] = None,
) -> None:
    """Adapt RUN's meta-learned model to your support set and predict your queries: a table of
    query, predicted class and probability (regression: x and the predicted value)."""
    try:
        check_device(device)
        queries = list(query) + list(more or [])
        if out_csv is not None and out_csv.exists() and not force:
            raise RunDirError(f"--out {out_csv}: exists; choose another file or pass --force "
                              "to replace it")
        start = time.perf_counter()
        model = _load(run, device, checkpoint)
        if model.problem == "classification":
            rows, header = _predict_images(model, support, queries, steps)
        else:
            rows, header = _predict_points(model, support, queries, steps)
        seconds = time.perf_counter() - start
    except FewshotError as e:
        raise error_exit(err, e) from None
    table = Table(*header[:3] if model.problem == "classification" else header)
    for row in rows:
        shown = row[:3] if model.problem == "classification" else row
        table.add_row(*[escape(_text(v)) for v in shown])
    out.print(table)
    err.print(f"{len(rows)} queries predicted in {seconds:.2f} s (load, adapt, predict)",
              highlight=False)
    if out_csv is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)  # numbers at full precision
        try:
            atomic_write(out_csv, lambda f: f.write(buffer.getvalue().encode("utf-8")))
        except OSError as e:
            why = RunDirError(f"--out {out_csv}: cannot write it ({e.strerror or e})")
            raise error_exit(err, why) from None
        err.print(f"wrote {out_csv}", highlight=False, soft_wrap=True)


def _text(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _load(run: Path, device: str | None, checkpoint: CheckpointChoice | None) -> Any:
    """The model of ``run`` (a run directory or an exported file), told on stderr."""
    from .engine import threads
    from .meta_model import load
    from .rundir import RunDir

    threads.for_run(RunDir(run).read_meta() if run.is_dir() else {})
    model = load(run, device=device, checkpoint=checkpoint and checkpoint.value)
    o = model.origin
    where = (f"{o['run']}, {o['checkpoint']}" if "run" in o and "file" not in o
             else o.get("file", str(run)))
    it = f", iteration {o['iteration']}" if o.get("iteration") is not None else ""
    err.print(f"model: {model.kind} on {model.config.task.kind} ({escape(where)}{it}); "
              f"{model.device}", highlight=False, soft_wrap=True)
    return model


def _predict_images(model: Any, support: Path, queries: list[str], steps: int | None
                    ) -> tuple[list[list[Any]], list[str]]:
    if model.preprocess is None:
        raise InputError(f"{support}: this model's tasks ({model.config.task.kind}) have no "
                         "images")
    paths, labels = support_images(support)
    n = len(dict.fromkeys(labels))
    if n != model.ways:
        raise InputError(f"{support}: {n} class folders, but this model was meta-trained on "
                         f"{model.ways}-way tasks: give exactly {model.ways} classes")
    query_paths = query_images(queries)
    adapted = model.adapt(paths, labels, steps=steps)
    proba = adapted.predict_proba(query_paths)
    best = proba.argmax(-1).tolist()
    header = ["query", "predicted", "probability", *[f"p({c})" for c in adapted.classes]]
    rows = [[q, adapted.classes[b], float(p[b]), *map(float, p)]
            for q, b, p in zip(query_paths, best, proba)]
    return rows, header


def _predict_points(model: Any, support: Path, queries: list[str], steps: int | None
                    ) -> tuple[list[list[Any]], list[str]]:
    import torch

    width, outputs = model.shape.input_shape[0], model.shape.output_dim
    if support.is_dir():
        raise InputError(f"--support {support}: this model does regression: give a CSV file of "
                         "x,y rows, not a folder")
    demo = model.kind == "daml"
    observed = not demo or model.algorithm.observation_dim > 0
    cols = width + (outputs if observed else 0)
    rows = read_points(support, cols, "x,y" if not demo else
                       "x,observation" if observed else "x")
    x = torch.tensor([r[:width] for r in rows], dtype=torch.float64)
    y = torch.tensor([r[width:cols] for r in rows], dtype=torch.float64) if observed else None
    points = query_points(queries, width)
    adapted = model.adapt(x, y, steps=steps)  # DAML: (demonstration, observation)
    pred = adapted.predict(torch.tensor(points, dtype=torch.float64))
    header = [*(["x"] if width == 1 else [f"x{i}" for i in range(width)]),
              *(["predicted"] if outputs == 1 else [f"predicted{i}" for i in range(outputs)])]
    return [[*p, *map(float, v)] for p, v in zip(points, pred)], header


def export(
    run: Annotated[Path, typer.Argument(
        metavar="RUN", help="A run directory of `fewshot train`.",
        autocompletion=complete_run_dir)],
    file: Annotated[Path, typer.Argument(
        metavar="FILE", help="The model file to write (e.g. model.pt).")],
    checkpoint: Annotated[CheckpointChoice | None, typer.Option(
        help="Which checkpoint [default: the run's eval.checkpoint].",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing FILE.")] = False,
) -> None:
    """Write RUN's meta-learned model to one FILE (weights, config, preprocessing) that
    `fewshot predict` and `fewshot_cli.load` read without the run directory or its data."""
    try:
        if file.is_dir() or (file.exists() and not force):
            raise RunDirError(f"{file}: exists; choose another file or pass --force to "
                              "replace it")
        if not run.is_dir():
            from .rundir import RunDir

            RunDir.open(run)  # one line: not a run directory
        model = _load(run, "cpu", checkpoint)
        model.export(file)
    except FewshotError as e:
        raise error_exit(err, e) from None
    size = file.stat().st_size
    err.print(f"exported {size / 1e6:.2f} MB", highlight=False)
    out.print(str(file), highlight=False, soft_wrap=True)
