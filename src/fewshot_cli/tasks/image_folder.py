"""A user's own images as N-way K-shot tasks.

Layout: ``root/<split>/<class>/*.{png,jpg,jpeg}`` with ``split`` one of
``train`` and ``test`` (required) and ``val`` (optional: sampling it without
the folder is a :class:`DataError`). Each class folder is one class; its
images are converted to ``L`` (``channels: 1``) or ``RGB`` (``channels: 3``)
and resized to ``image_size`` x ``image_size`` with LANCZOS, without cropping.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ImageFolderTask
from ..errors import DataError
from .episodic import SPLITS, EpisodicTasks, SplitData, check_classes
from .fingerprint import files_record
from .image_cache import list_images, list_subfolders, load_image_set
from .shapes import preprocess_of

REQUIRED = ("train", "test")
_LAYOUT = "<class>/*.png|jpg|jpeg"


def build(cfg: ImageFolderTask) -> EpisodicTasks:
    """Tasks from ``cfg.root`` (see the module docstring)."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: expected an image folder with train/ and test/ (and optionally val/) "
            f"holding {_LAYOUT}, found no such folder"
        )
    prep = preprocess_of(cfg)
    splits: dict[str, SplitData] = {}
    missing: dict[str, str] = {}
    for split in SPLITS:  # every required folder is checked before anything is decoded
        folder = root / split
        if not folder.is_dir():
            message = (
                f"{folder}: expected a folder of {split} classes ({_LAYOUT}), found no such folder"
            )
            if split in REQUIRED:
                raise DataError(message)
            missing[split] = message + " (val/ is optional, but validation tasks were requested)"
    every = []
    for split in SPLITS:
        folder = root / split
        if split in missing:
            continue
        class_dirs = list_subfolders(folder)
        classes = [(d.name, list_images(d)) for d in class_dirs]
        every += [(f"{split}/{name}", files) for name, files in classes]
        check_classes(
            str(folder), [str(d) for d in class_dirs], [len(f) for _, f in classes],
            cfg.ways, cfg.shots, cfg.queries,
        )
        data = load_image_set(
            root, classes, prep, cache_dir=cfg.cache_dir, tag=f"image_folder-{split}"
        )
        splits[split] = SplitData(
            images=data.images,
            class_images=data.class_indices(),
            class_names=data.class_names,
            class_paths=[str(d) for d in class_dirs],
            folder=str(folder),
        )
    return EpisodicTasks(
        splits, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries, name="image_folder",
        missing=missing, files=lambda: files_record(root, every),
    )
