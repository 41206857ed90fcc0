"""``fewshot data``: check a config's data set against what it should hold, and convert the
commonly shared mini-ImageNet pickles into the layout the loader reads."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .completion import complete_config
from .errors import FewshotError
from .report import error_exit

data_app = typer.Typer(no_args_is_help=True, help="Check or prepare a data set.")
out = Console()
err = Console(stderr=True)
STYLES = {"error": "bold red", "warning": "yellow", "ok": "green", "info": "dim"}


class ImageFormat(str, Enum):
    jpg = "jpg"
    png = "png"


@data_app.command("check")
def check(
    config: Annotated[Path, typer.Argument(help="Config whose task data to check.",
                                           autocompletion=complete_config)],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a config value (repeatable).")] = None,
    every_image: Annotated[bool, typer.Option(
        "--every-image", help="Read every image's header, not only each class's first.")
    ] = False,
) -> None:
    """Report what the config's data folder holds against what the task and the published
    data set expect (Omniglot's folders and drawings, the Ravi & Larochelle mini-ImageNet
    split, an image folder's classes), without training. Exit 1 if anything would fail."""
    from .config import load_config
    from .datacheck import check as check_data

    try:
        report = check_data(load_config(config, overrides or []), every_image=every_image)
    except FewshotError as e:
        raise error_exit(err, e) from None
    for line in report.lines():
        level, _, text = line.partition(": ")
        style = STYLES.get(level)
        shown = f"[{style}]{level}:[/] {escape(text)}" if style and text else escape(line)
        out.print(shown, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("convert-miniimagenet")
def convert_miniimagenet(
    src: Annotated[Path, typer.Argument(
        help="Folder holding mini-imagenet-cache-{train,val,test}.pkl.")],
    dest: Annotated[Path, typer.Argument(
        help="New folder for images/ and train.csv, val.csv, test.csv.")],
    image_format: Annotated[ImageFormat, typer.Option(
        "--format", help="jpg keeps the reference's file names (the CSVs can match it "
                         "byte for byte); png is lossless.")] = ImageFormat.jpg,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Write into a folder that already holds the CSV files.")] = False,
) -> None:
    """Turn the widely shared pickle copies of mini-ImageNet into the layout task.kind:
    miniimagenet reads (task.root = DEST); check the result with fewshot data check."""
    from .tasks.convert import convert_miniimagenet as convert

    try:  # a line as each split is written
        convert(src, dest, image_format=image_format.value, overwrite=overwrite,
                progress=lambda line: out.print(line, highlight=False, soft_wrap=True))
    except FewshotError as e:
        raise error_exit(err, e) from None
