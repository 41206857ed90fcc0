"""File helpers shared by the run directory and the caches."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` via a temporary sibling and an atomic rename.

    A crash or error never leaves half a file: the temporary file is removed
    and the exception propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these hold nothing secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$FEWSHOT_CACHE``, else ``~/.cache/fewshot``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FEWSHOT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/fewshot").expanduser()
