"""Running the CLI in-process from tests: ``invoke`` (must succeed) and ``sets``
(``--set`` pairs from keyword arguments, ``__`` standing for ``.``)."""

from __future__ import annotations

from typer.testing import CliRunner

from fewshot_cli.cli import app

runner = CliRunner()


def invoke(*args: str) -> str:
    """Run ``fewshot ARGS``; its output, after asserting it succeeded."""
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def sets(**values: object) -> list[str]:
    """``--set key=value`` pairs, e.g. ``sets(train__iterations=4)``."""
    return [x for k, v in values.items() for x in ("--set", f"{k.replace('__', '.')}={v}")]
