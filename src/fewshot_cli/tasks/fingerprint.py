"""What identifies the data a run read: recorded in meta.json, compared on resume.

For image tasks: each split's class list and the files behind it (names relative to the
data root, and sizes), as counts and SHA-256 digests. Two copies of a data set that
agree on these give the same tasks; a renamed, added, removed or re-encoded file changes
them. Image contents are not read (that would cost a pass over every file).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a sinusoid run imports this module, and no image code
    from .image_cache import ImageFile


def digest(value: Any) -> str:
    """SHA-256 of ``value``'s canonical JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def files_record(root: str | os.PathLike[str],
                 classes: Sequence[tuple[str, Sequence[ImageFile]]]) -> dict[str, Any]:
    """Counts and digest of the files of ``classes`` (``(name, files)`` pairs), their names
    taken relative to ``root`` so the record does not depend on where the copy lives."""
    rows = [(name, os.path.relpath(f.path, root), f.size) for name, files in classes
            for f in files]
    return {"classes": len(classes), "files": len(rows), "bytes": sum(r[2] for r in rows),
            "sha256": digest(rows)}


def classes_record(names: Sequence[str]) -> dict[str, Any]:
    """Count and digest of one split's class list, in order."""
    return {"classes": len(names), "sha256": digest(list(names))}
