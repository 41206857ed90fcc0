"""mini-ImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle
(2017): 64 training, 16 validation and 20 test classes of 600 images each.

Expected layout (the one Ravi & Larochelle's scripts produce)::

    root/images/<filename>.jpg
    root/train.csv  root/val.csv  root/test.csv     # header: filename,label

Each csv row names an image in ``images/`` and its class label (a WordNet id).
Images are converted to RGB and resized to ``image_size`` x ``image_size`` with
LANCZOS (as the reference resizing script does; no cropping), and skipped by
the resize when they already have that size (the usual 84x84 copies).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..config import MiniImagenetTask
from ..errors import DataError
from .episodic import SPLITS, EpisodicTasks, SplitData, check_classes
from .image_cache import ImageFile, Preprocess, load_image_set, one_line


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


def build(cfg: MiniImagenetTask) -> EpisodicTasks:
    """mini-ImageNet tasks from ``cfg.root`` (see the module docstring)."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: expected the mini-ImageNet folder (images/, train.csv, val.csv, "
            "test.csv), found no such folder"
        )
    entries = _image_stats(root / "images")
    prep = Preprocess(image_size=cfg.image_size, mode="RGB", resample="lanczos")
    # Read and check every split before decoding anything, so mistakes fail fast.
    listed = {split: split_classes(root, split, entries) for split in SPLITS}
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
    return EpisodicTasks(
        splits, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries, name="miniimagenet"
    )
