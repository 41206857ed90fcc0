"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1623 handwritten characters
from 50 alphabets, 20 drawings each, as N-way K-shot tasks.

``root`` holds the official archives unzipped: ``images_background/<Alphabet>/
characterNN/*.png`` (964 characters) and ``images_evaluation/...`` (659), or
torchvision's ``root/omniglot-py/`` holding the same two folders. With
``task.download: true`` missing folders are fetched from the official
repository (the URLs torchvision uses).

Preprocessing follows the MAML reference code (Finn et al. 2017): the 105x105
1-bit images are resized with ``Image.resize(..., LANCZOS)``, which Pillow
carries out as nearest-neighbour for 1-bit images, so pixels stay binary; they
are inverted so that strokes are 1 and the background 0.

Splits (``task.split``):

``maml``
    The MAML protocol: all 1623 characters, sorted by ``Alphabet/characterNN``,
    are shuffled with ``split_seed``; the first ``train_classes`` (1200) are the
    meta-training pool, *of which the last* ``val_classes`` *(100) are held out
    for validation*, so train has 1100, val 100 and test the remaining 423.
``background``
    Lake et al.'s split: ``images_background`` for training minus
    ``val_classes`` characters (chosen with ``split_seed``) for validation,
    ``images_evaluation`` for testing; ``train_classes`` is unused.
``vinyals``
    The fixed split of Vinyals et al. (2016) as published with the Prototypical
    Networks code (https://github.com/jakesnell/prototypical-networks,
    ``data/omniglot/splits/vinyals/{train,val,test}.txt``, shipped in
    ``splits/omniglot_vinyals.json``): 1028 train, 172 val and 423 test characters
    (train + val = the 1200 training characters), drawn from both folders as the
    lists say; ``train_classes``, ``val_classes`` and ``split_seed`` are unused.

With ``rotations`` each training character also yields its rotations by 90,
180 and 270 degrees as new classes (Santoro et al. 2016; Finn et al. 2017), so
the maml train split has 4 x 1100 = 4400 classes; val and test are unrotated.
The vinyals split is the exception: its published lists hold every character of
every split in its four rotations, so with ``rotations`` val and test are
rotated too (4112, 688 and 1692 classes, the lists' lines in their order), and
without it they are the 1028, 172 and 423 characters.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import OmniglotTask
from ..errors import ConfigError, DataError
from . import reference
from .episodic import EpisodicTasks, SplitData
from .fingerprint import files_record
from .image_cache import (
    ImageSet,
    list_images,
    list_subfolders,
    load_image_set,
    one_line,
)
from .shapes import preprocess_of

URL_PREFIX = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
#: Official archives and their MD5 sums (as in ``torchvision.datasets.Omniglot``).
ARCHIVES = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
BACKGROUND, EVALUATION = ARCHIVES


def _has_data(folder: Path) -> bool:
    return all((folder / name).is_dir() for name in ARCHIVES)


def download(root: Path) -> None:
    """Fetch and unzip the archives missing from ``root`` (DataError on failure)."""
    from torchvision.datasets import utils  # imported here: only downloads pay for it

    for name, md5 in ARCHIVES.items():
        if (root / name).is_dir():
            continue
        url = f"{URL_PREFIX}{name}.zip"
        try:
            root.mkdir(parents=True, exist_ok=True)
            utils.download_and_extract_archive(
                url, download_root=str(root), filename=f"{name}.zip", md5=md5,
                remove_finished=True,
            )
        except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(
                f"{root}: could not download Omniglot from {url} ({one_line(e)}); "
                f"unzip {name}.zip into {root} by hand"
            ) from None


def locate(root: str | Path, allow_download: bool = False) -> Path:
    """The folder that holds ``images_background/`` and ``images_evaluation/``."""
    root = Path(root).expanduser()
    for folder in (root, root / "omniglot-py"):
        if _has_data(folder):
            return folder
    if allow_download:
        download(root)
        if _has_data(root):
            return root
    if not root.is_dir():
        found = "no such folder"
    else:
        present = [name for name in ARCHIVES if (root / name).is_dir()]
        found = f"only {present[0]}/" if present else "neither"
    hint = "" if allow_download else "; set task.download: true to fetch them"
    raise DataError(
        f"{root}: expected the Omniglot folders {BACKGROUND}/ and {EVALUATION}/, "
        f"found {found}{hint}"
    )


def scan(folder: Path) -> tuple[list[tuple[str, list]], list[str], list[str]]:
    """Characters of both sets in file-system order (background first).

    Returns ``(classes, names, paths)``: ``(name, files)`` pairs for the cache,
    class names ``Alphabet/characterNN`` and the character folders.
    """
    classes, names, paths = [], [], []
    for set_name in ARCHIVES:
        for alphabet in list_subfolders(folder / set_name):
            for character in list_subfolders(alphabet):
                name = f"{alphabet.name}/{character.name}"
                classes.append((f"{set_name}/{name}", list_images(character)))
                names.append(name)
                paths.append(str(character))
    return classes, names, paths


def load(cfg: OmniglotTask
         ) -> tuple[ImageSet, list[str], list[str], int, Callable[[], dict[str, Any]]]:
    """Decoded Omniglot (cached): the image set, class names, folders, # background classes,
    and how to record the files read (:func:`.fingerprint.files_record`, when asked)."""
    folder = locate(cfg.root, cfg.download)
    classes, names, paths = scan(folder)
    if not classes:
        raise DataError(f"{folder}: expected Omniglot character folders, found none")
    n_background = sum(1 for key, _ in classes if key.startswith(BACKGROUND + "/"))
    data = load_image_set(folder, classes, preprocess_of(cfg), cache_dir=cfg.cache_dir,
                          tag="omniglot")
    return data, names, paths, n_background, lambda: files_record(folder, classes)


def split_classes(
    cfg: OmniglotTask, names: list[str], n_background: int
) -> dict[str, list[int]]:
    """Character indices (into ``names``, scan order) of the train/val/test splits."""
    n = len(names)
    if cfg.split == "vinyals":
        return vinyals_classes(names, cfg.root)
    g = torch.Generator().manual_seed(cfg.split_seed)
    if cfg.split == "maml":
        if not cfg.val_classes < cfg.train_classes < n:
            raise ConfigError(
                f"task.train_classes/val_classes: expected val_classes < train_classes < "
                f"{n} (the Omniglot characters found), found {cfg.val_classes} and "
                f"{cfg.train_classes}"
            )
        order = sorted(range(n), key=lambda i: names[i])
        perm = [order[i] for i in torch.randperm(n, generator=g).tolist()]
        n_train = cfg.train_classes - cfg.val_classes
        return {
            "train": perm[:n_train],
            "val": perm[n_train : cfg.train_classes],
            "test": perm[cfg.train_classes :],
        }
    if not 0 < cfg.val_classes < n_background:
        raise ConfigError(
            f"task.val_classes: expected fewer than the {n_background} characters of "
            f"{BACKGROUND}, found {cfg.val_classes}"
        )
    held = set(torch.randperm(n_background, generator=g)[: cfg.val_classes].tolist())
    return {
        "train": [i for i in range(n_background) if i not in held],
        "val": sorted(held),
        "test": list(range(n_background, n)),
    }


def vinyals_classes(names: list[str], root: str | Path) -> dict[str, list[int]]:
    """Indices into ``names`` of the characters of Vinyals et al.'s split, in the
    published lists' order; DataError naming the first missing character."""
    index = {name: i for i, name in enumerate(names)}
    ref = reference.vinyals_split()
    out = {}
    for split, chars in ref.characters.items():
        missing = [c for c in chars if c not in index]
        if missing:
            others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(
                f"{root}: expected the {len(chars)} {split} characters of the vinyals split "
                f"({ref.source}), found no {missing[0]}{others}"
            )
        out[split] = [index[c] for c in chars]
    return out


def rotated(cfg: OmniglotTask, split: str) -> bool:
    """Whether ``split``'s characters come in four rotations (module docstring)."""
    return cfg.rotations is True and (split == "train" or cfg.split == "vinyals")


def build(cfg: OmniglotTask) -> EpisodicTasks:
    """Omniglot tasks configured by ``cfg`` (see the module docstring)."""
    data, names, paths, n_background, files = load(cfg)
    per_class = data.class_indices()
    splits = {}
    for split, chars in split_classes(cfg, names, n_background).items():
        turns = (0, 1, 2, 3) if rotated(cfg, split) else (0,)
        members = [(c, r) for c in chars for r in turns]
        splits[split] = SplitData(
            images=data.images,
            class_images=[per_class[c] for c, _ in members],
            class_names=[names[c] + (f"@rot{90 * r}" if r else "") for c, r in members],
            class_paths=[paths[c] for c, _ in members],
            folder=f"{cfg.root} ({cfg.split} split, {split})",
            rotations=torch.tensor([r for _, r in members], dtype=torch.int64)
            if len(turns) > 1 else None,
        )
    return EpisodicTasks(
        splits, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries, name="omniglot",
        files=files, task_rotations=cfg.rotations == "per_task",
    )
