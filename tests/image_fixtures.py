"""Tiny generated image data sets in the layouts the image task loaders read."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

#: Solid class colours for RGB fixtures: far apart, so JPEG noise cannot confuse them.
COLOURS = [
    (230, 25, 25), (25, 230, 25), (25, 25, 230), (230, 230, 25), (230, 25, 230),
    (25, 230, 230), (128, 128, 128), (240, 240, 240), (20, 20, 20), (240, 128, 20),
    (128, 20, 240), (20, 128, 64), (180, 90, 140), (90, 180, 40), (60, 40, 120),
    (200, 200, 120), (120, 60, 20), (20, 60, 200),
]


def glyph(seed: int, size: int = 105, cell: int = 15) -> np.ndarray:
    """A 1-bit ``size x size`` drawing (True = white background): random ink blocks.

    Blocks are ``cell`` pixels wide so the pattern survives resizing to 28; the
    pattern is random, so it is not symmetric under rotation.
    """
    rng = np.random.default_rng(seed)
    n = size // cell
    ink = rng.random((n, n)) < 0.3
    ink[rng.integers(n), rng.integers(n)] = True
    big = np.kron(ink, np.ones((cell, cell), dtype=bool))
    out = np.ones((size, size), dtype=bool)
    out[: big.shape[0], : big.shape[1]] = ~big
    return out


def write_omniglot_set(
    root: Path, set_name: str, alphabets: int, characters: int, drawers: int = 20,
    first_id: int = 1, size: int = 105,
) -> int:
    """Write ``root/<set_name>/Alphabet_a/characterNN/<id>_<nn>.png``; returns the next id."""
    char_id = first_id
    for a in range(alphabets):
        for c in range(characters):
            alphabet = f"{set_name[7:10].title()}_Alphabet_{a}"  # Bac_... or Eva_...
            folder = root / set_name / alphabet / f"character{c + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for d in range(drawers):
                img = Image.fromarray(glyph(char_id * 100 + d, size)).convert("1")
                img.save(folder / f"{char_id:04d}_{d + 1:02d}.png")
            char_id += 1
    return char_id


def make_omniglot(
    root: Path, background: tuple[int, int] = (3, 4), evaluation: tuple[int, int] = (2, 4),
    drawers: int = 20, size: int = 105,
) -> Path:
    """An Omniglot-like folder: (alphabets, characters per alphabet) per set."""
    next_id = write_omniglot_set(root, "images_background", *background, drawers, 1, size)
    write_omniglot_set(root, "images_evaluation", *evaluation, drawers, next_id, size)
    return root


def make_miniimagenet(
    root: Path, classes: dict[str, int] | None = None, per_class: int = 6, size: int = 84,
) -> dict[str, list[str]]:
    """``root/images/*.jpg`` + ``{train,val,test}.csv`` (``filename,label``).

    Each class is a solid colour (``COLOURS`` in order over all splits). Returns
    the class labels per split.
    """
    classes = classes or {"train": 6, "val": 5, "test": 5}
    (root / "images").mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[str]] = {}
    k = 0
    for split, n in classes.items():
        labels[split] = []
        rows = []
        for _ in range(n):
            wnid = f"n{1000000 + k:08d}"
            colour = np.array(COLOURS[k], dtype=np.uint8)
            for i in range(per_class):
                name = f"{wnid}{i + 1:08d}.jpg"
                pixels = np.broadcast_to(colour, (size, size, 3)).copy()
                Image.fromarray(pixels).save(root / "images" / name, quality=95)
                rows.append((name, wnid))
            labels[split].append(wnid)
            k += 1
        with open(root / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filename", "label"])
            writer.writerows(rows)
    return labels


def make_image_folder(
    root: Path, splits: dict[str, int] | None = None, per_class: int = 5, size: int = 20,
    ext: str = "png",
) -> Path:
    """``root/<split>/class_k/img_i.<ext>``, class ``k`` a solid colour from ``COLOURS``."""
    splits = splits if splits is not None else {"train": 5, "val": 3, "test": 4}
    k = 0
    for split, n in splits.items():
        for _ in range(n):
            folder = root / split / f"class_{k:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(COLOURS[k], dtype=np.uint8)
            for i in range(per_class):
                pixels = np.broadcast_to(colour, (size, size + i, 3)).copy()
                Image.fromarray(pixels).save(folder / f"img_{i}.{ext}")
            k += 1
    return root
