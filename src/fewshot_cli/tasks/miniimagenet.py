"""mini-ImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle
(2017): 64 training, 16 validation and 20 test classes of 600 images each.

Expected layout (the one Ravi & Larochelle's scripts produce)::

    root/images/<filename>.jpg
    root/train.csv  root/val.csv  root/test.csv     # header: filename,label

Each csv row names an image in ``images/`` and its class label (a WordNet id).
Images are converted to RGB and resized to ``image_size`` x ``image_size`` with
LANCZOS (as the reference resizing script does; no cropping), and skipped by
the resize when they already have that size (the usual 84x84 copies).

The split check. The package ships Ravi & Larochelle's split as published in
https://github.com/twitter-research/meta-learning-lstm (``data/miniImagenet/
{train,val,test}.csv``, see :mod:`.reference`): the WordNet ids of each split's
classes, 600 images per class and each csv file's SHA-256. A copy whose labels
include any of those WordNet ids claims to be that split and is checked against
it before anything is decoded (a ``task.split_check`` key, where the config has
one, can make that ``on`` for any copy or ``off``; the default is this ``auto``).
:func:`compare_to_ravi` gives one line per mismatch:

* errors (a :class:`DataError` naming the first and how many more): a class of
  the split missing from its csv, a class the split does not have (a made-up
  one, or one of another split: test classes in train.csv leak), a class with
  other than 600 images. Results on such a copy are not comparable with
  published ones, so training on it is refused;
* warnings: a csv file whose bytes differ from the reference while its classes
  and image counts match (other line endings or quoting, other row order, other
  file names such as those of a converted copy). What is trained on is then the
  same split, so the run goes on, and the warning says which difference it is.

Copies with made-up labels (none of the WordNet ids) load as they are.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import MiniImagenetTask
from ..errors import DataError
from . import reference
from .episodic import SPLITS, EpisodicTasks, SplitData, check_classes
from .fingerprint import files_record
from .image_cache import ImageFile, load_image_set, one_line
from .shapes import preprocess_of

SPLIT_NAME = "Ravi & Larochelle"


@dataclass(frozen=True)
class Mismatch:
    """One difference between a copy and the reference split: an error or a warning."""

    level: Literal["error", "warning"]
    text: str


def read_split_csv(path: Path) -> list[tuple[str, str]]:
    """The ``(filename, label)`` rows of one split's csv."""
    if not path.is_file():
        raise DataError(
            f"{path}: expected the mini-ImageNet split file (header filename,label), "
            "found no such file"
        )
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [cell.strip() for cell in next(reader, [])]
            if header != ["filename", "label"]:
                found = ",".join(header) if header else "an empty file"
                raise DataError(f"{path}: expected the header 'filename,label', found '{found}'")
            for row in reader:
                if not row or not "".join(row).strip():
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(
                        f"{path}:{reader.line_num}: expected 'filename,label', "
                        f"found '{','.join(row)}'"
                    )
                rows.append((row[0].strip(), row[1].strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: expected a readable csv file, found {one_line(e)}") from None
    if not rows:
        raise DataError(f"{path}: expected rows of filename,label, found only the header")
    return rows


def _image_stats(images_dir: Path) -> dict[str, os.DirEntry[str]]:
    if not images_dir.is_dir():
        raise DataError(
            f"{images_dir}: expected the mini-ImageNet image folder (images/*.jpg), "
            "found no such folder"
        )
    try:
        return {e.name: e for e in os.scandir(images_dir)}
    except OSError as e:
        raise DataError(f"{images_dir}: expected a readable folder, found {one_line(e)}") from None


def split_classes(
    root: Path, split: str, entries: dict[str, os.DirEntry[str]]
) -> list[tuple[str, list[ImageFile]]]:
    """``(label, files)`` per class of ``split``, classes in order of first appearance."""
    csv_path = root / f"{split}.csv"
    classes: dict[str, list[ImageFile]] = {}
    for filename, label in read_split_csv(csv_path):
        entry = entries.get(filename)
        if entry is None:
            raise DataError(
                f"{root / 'images' / filename}: expected the image listed in {csv_path}, "
                "found no such file"
            )
        st = entry.stat()
        classes.setdefault(label, []).append(ImageFile(entry.path, st.st_size, st.st_mtime_ns))
    return list(classes.items())


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: expected a readable file, found {one_line(e)}") from None
    return h.hexdigest()


def uses_ravi_classes(labels: Iterable[str]) -> bool:
    """Whether any label is a class (WordNet id) of the reference split."""
    ref = reference.ravi_split()
    return any(ref.split_of(label) is not None for label in labels)


def ravi_check_wanted(cfg: MiniImagenetTask, labels: Iterable[str]) -> bool:
    """Whether to check a copy with ``labels`` against the reference split.

    ``task.split_check`` (``auto`` when the config has no such key): ``on``
    always, ``off`` never, ``auto`` when a label is one of the split's WordNet ids.
    """
    mode = getattr(cfg, "split_check", "auto")
    if mode in ("on", True):
        return True
    if mode in ("off", False):
        return False
    return uses_ravi_classes(labels)


def compare_to_ravi(
    root: Path, listed: Mapping[str, Sequence[tuple[str, Sequence[str]]]]
) -> list[Mismatch]:
    """One :class:`Mismatch` per difference from the reference split (module docstring).

    ``listed`` maps each split present to its csv's classes, ``(label, file names)``
    in csv order; ``root/<split>.csv`` is hashed when its classes and counts match.
    """
    ref = reference.ravi_split()
    per_class = ref.images_per_class
    home_of = {label: split for split, classes in listed.items() for label, _ in classes}
    out: list[Mismatch] = []
    for split, classes in listed.items():
        csv_path = root / f"{split}.csv"
        expected = ref.classes[split]
        found = {label for label, _ in classes}
        errors = len(out)
        for wnid in expected:
            if wnid not in found:
                where = f" (it is in {home_of[wnid]}.csv)" if wnid in home_of else ""
                out.append(Mismatch("error", (
                    f"{csv_path}: expected class {wnid} of the {SPLIT_NAME} {split} split, "
                    f"found no rows of it{where}"
                )))
        for label, files in classes:
            home = ref.split_of(label)
            if home != split:
                what = f"a {home} class" if home else "not a class of mini-ImageNet"
                out.append(Mismatch("error", (
                    f"{csv_path}: expected only the {len(expected)} {split} classes of the "
                    f"{SPLIT_NAME} split, found class {label} ({what})"
                )))
            elif len(files) != per_class:
                out.append(Mismatch("error", (
                    f"{csv_path}: expected {per_class} images of class {label}, "
                    f"found {len(files)}"
                )))
            elif len(set(files)) != len(files):
                out.append(Mismatch("error", (
                    f"{csv_path}: expected {per_class} distinct images of class {label}, "
                    f"found {len(set(files))} (some rows repeat a file)"
                )))
        if len(out) > errors:
            continue
        digest = file_sha256(csv_path)
        if digest == ref.csv_sha256[split]:
            continue
        rows = sorted((name, label) for label, files in classes for name in files)
        if rows == sorted(reference.ravi_csv_rows(split)):
            how = "the same rows as other bytes (row order, line endings or quoting)"
        else:
            how = "the same classes and image counts under other file names"
        out.append(Mismatch("warning", (
            f"{csv_path}: expected SHA-256 {ref.csv_sha256[split][:16]}... "
            f"({ref.csv_source(split)}), found {digest[:16]}...: {how}"
        )))
    return out


def check_ravi(cfg: MiniImagenetTask, root: Path,
               listed: Mapping[str, Sequence[tuple[str, Sequence[ImageFile]]]]) -> None:
    """Compare a copy with the reference split when wanted: DataError on an error
    (the first, and how many more), a warning per csv file that differs only in bytes."""
    names = {
        split: [(label, [os.path.basename(f.path) for f in files]) for label, files in classes]
        for split, classes in listed.items()
    }
    labels = [label for classes in names.values() for label, _ in classes]
    if not ravi_check_wanted(cfg, labels):
        return
    found = compare_to_ravi(root, names)
    errors = [m.text for m in found if m.level == "error"]
    if errors:
        more = (f" (and {len(errors) - 1} more differences from the {SPLIT_NAME} split; "
                "fewshot data check lists them all)") if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
    for m in found:
        warnings.warn(m.text, stacklevel=3)


def build(cfg: MiniImagenetTask) -> EpisodicTasks:
    """mini-ImageNet tasks from ``cfg.root`` (see the module docstring)."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: expected the mini-ImageNet folder (images/, train.csv, val.csv, "
            "test.csv), found no such folder"
        )
    entries = _image_stats(root / "images")
    prep = preprocess_of(cfg)
    # Read and check every split before decoding anything, so mistakes fail fast.
    listed = {split: split_classes(root, split, entries) for split in SPLITS}
    check_ravi(cfg, root, listed)
    for split, classes in listed.items():
        csv_path = root / f"{split}.csv"
        check_classes(
            str(csv_path), [f"{csv_path} (label {name})" for name, _ in classes],
            [len(f) for _, f in classes], cfg.ways, cfg.shots, cfg.queries,
        )
    splits = {}
    for split, classes in listed.items():
        csv_path = root / f"{split}.csv"
        data = load_image_set(
            root, classes, prep, cache_dir=cfg.cache_dir, tag=f"miniimagenet-{split}"
        )
        splits[split] = SplitData(
            images=data.images,
            class_images=data.class_indices(),
            class_names=data.class_names,
            class_paths=[f"{csv_path} (label {name})" for name in data.class_names],
            folder=str(csv_path),
        )
    every = [(f"{split}/{name}", files) for split, classes in listed.items()
             for name, files in classes]
    return EpisodicTasks(
        splits, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries, name="miniimagenet",
        files=lambda: files_record(root, every),
    )
