"""The published class splits shipped with the package (``tasks/splits/*.json``).

``miniimagenet.json``
    The mini-ImageNet split of Ravi & Larochelle (2017): the WordNet ids of the 64
    train, 16 val and 20 test classes, 600 images per class, and the SHA-256 of
    ``data/miniImagenet/{train,val,test}.csv`` in
    https://github.com/twitter-research/meta-learning-lstm (commit 0cffa24).
``miniimagenet_files.json``
    The image file names those three csv files list, per class (a bitmask of the
    numbers in ``<wnid><8-digit number>.jpg``), so that the csv files can be
    rebuilt byte for byte (:func:`ravi_csv_rows`).
``omniglot_vinyals.json``
    The Omniglot character split of Vinyals et al. (2016) as published in
    ``data/omniglot/splits/vinyals/{train,val,test,trainval}.txt`` of
    https://github.com/jakesnell/prototypical-networks (commit c9bb4d2): 1028
    train, 172 val and 423 test characters. The published lists name every
    character four times, once per rotation (``rot000`` .. ``rot270``); the json
    holds each character once, and :func:`vinyals_lines` rebuilds the lists.

Each file names its source repository, commit and paths under ``"source"``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

RAVI_SPLITS = ("train", "val", "test")


def _load(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath("splits", name).read_text(encoding="utf-8")
    return json.loads(text)


def _source(doc: dict[str, Any]) -> str:
    src = doc["source"]
    return f"{src['repository'].removeprefix('https://github.com/')}@{src['commit'][:7]}"


@dataclass(frozen=True)
class RaviSplit:
    """Ravi & Larochelle's mini-ImageNet split: classes per split, images per class,
    the SHA-256 of each split's csv file and where they come from."""

    classes: dict[str, tuple[str, ...]]
    images_per_class: int
    csv_sha256: dict[str, str]
    csv_paths: dict[str, str]
    source: str

    def split_of(self, wnid: str) -> str | None:
        """The split that holds class ``wnid`` (None if it is not a mini-ImageNet class)."""
        for split, names in self.classes.items():
            if wnid in names:
                return split
        return None

    def csv_source(self, split: str) -> str:
        """``repository@commit:path`` of ``split``'s reference csv file."""
        return f"{self.source}:{self.csv_paths[split]}"


@cache
def ravi_split() -> RaviSplit:
    """The shipped mini-ImageNet split (``splits/miniimagenet.json``)."""
    doc = _load("miniimagenet.json")
    return RaviSplit(
        classes={s: tuple(doc["classes"][s]) for s in RAVI_SPLITS},
        images_per_class=int(doc["images_per_class"]),
        csv_sha256=dict(doc["csv_sha256"]),
        csv_paths=dict(doc["source"]["paths"]),
        source=_source(doc),
    )


@cache
def _ravi_numbers() -> dict[str, str]:
    return _load("miniimagenet_files.json")["numbers"]


def ravi_filenames(wnid: str) -> list[str] | None:
    """The reference file names of class ``wnid`` in csv order (None if not a class)."""
    encoded = _ravi_numbers().get(wnid)
    if encoded is None:
        return None
    bits = base64.b64decode(encoded)
    return [
        f"{wnid}{8 * i + b:08d}.jpg"
        for i, byte in enumerate(bits)
        for b in range(8)
        if byte >> b & 1
    ]


def ravi_csv_rows(split: str) -> list[tuple[str, str]]:
    """The ``(filename, label)`` rows of the reference csv file of ``split``, in order."""
    rows: list[tuple[str, str]] = []
    for wnid in ravi_split().classes[split]:
        rows.extend((name, wnid) for name in ravi_filenames(wnid) or [])
    return rows


@dataclass(frozen=True)
class VinyalsSplit:
    """Vinyals et al.'s Omniglot split: ``Alphabet/characterNN`` per split."""

    characters: dict[str, tuple[str, ...]]
    rotations: tuple[str, ...]
    txt_sha256: dict[str, str]
    source: str


@cache
def vinyals_split() -> VinyalsSplit:
    """The shipped Omniglot split (``splits/omniglot_vinyals.json``)."""
    doc = _load("omniglot_vinyals.json")
    return VinyalsSplit(
        characters={s: tuple(doc["characters"][s]) for s in RAVI_SPLITS},
        rotations=tuple(doc["rotations"]),
        txt_sha256=dict(doc["txt_sha256"]),
        source=_source(doc),
    )


def vinyals_lines(split: str) -> list[str]:
    """The lines of the published list ``split`` (``train``, ``val``, ``test`` or ``trainval``):
    ``Alphabet/characterNN/rotXXX``, each character with its four rotations."""
    ref = vinyals_split()
    parts = ("train", "val") if split == "trainval" else (split,)
    return [f"{c}/{r}" for p in parts for c in ref.characters[p] for r in ref.rotations]
