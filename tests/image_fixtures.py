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


def write_miniimagenet(
    root: Path, labels: dict[str, list[str]], per_class: int = 2, size: int = 16,
) -> dict[str, list[str]]:
    """``root/images/*.jpg`` + ``{split}.csv`` for the given class labels per split
    (e.g. the real WordNet ids), ``per_class`` images each, colours cycling ``COLOURS``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    k = 0
    for split, wnids in labels.items():
        rows = []
        for wnid in wnids:
            colour = np.array(COLOURS[k % len(COLOURS)], dtype=np.uint8)
            pixels = np.broadcast_to(colour, (size, size, 3)).copy()
            for i in range(per_class):
                name = f"{wnid}{i + 1:08d}.jpg"
                Image.fromarray(pixels).save(root / "images" / name, quality=95)
                rows.append((name, wnid))
            k += 1
        with open(root / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["filename", "label"])
            writer.writerows(rows)
    return labels


def make_ravi_miniimagenet(root: Path, per_class: int = 2, size: int = 16) -> dict[str, list[str]]:
    """A copy named like Ravi & Larochelle's split (its 64/16/20 WordNet ids) but with
    only ``per_class`` tiny images per class instead of 600."""
    from fewshot_cli.tasks.reference import ravi_split

    labels = {split: list(names) for split, names in ravi_split().classes.items()}
    return write_miniimagenet(root, labels, per_class, size)


def mini_pixels(class_index: int, image_index: int, size: int = 84) -> np.ndarray:
    """A distinct ``uint8 [size, size, 3]`` image: a class colour with a gradient and a
    bright square whose place encodes ``image_index``."""
    colour = np.array(COLOURS[class_index % len(COLOURS)], dtype=np.int32)
    ramp = np.linspace(0, 40, size, dtype=np.int32)[None, :, None]
    img = np.clip(colour[None, None, :] // 2 + ramp, 0, 255).astype(np.uint8)
    img = np.broadcast_to(img, (size, size, 3)).copy()
    cell = max(size // 8, 1)
    r, c = divmod(image_index % 64, 8)
    img[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = 250
    return img


def make_miniimagenet_pickles(
    root: Path, classes: dict[str, list[str]], per_class: int = 3, size: int = 84,
    protocol: int = 4, py2: bool = False,
) -> dict[str, dict[str, object]]:
    """``root/mini-imagenet-cache-{split}.pkl``: ``{"image_data": uint8 [N, size, size, 3],
    "class_dict": {wnid: [indices]}}`` with images from :func:`mini_pixels` (classes
    interleaved, so class_dict's indices are not contiguous). ``py2`` writes them as
    Python 2 did (byte strings as str, ``numpy.core`` paths, protocol 2). Returns the dicts."""
    import io
    import pickle
    import struct

    class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
        """Byte strings and str as Python 2's ``str`` (BINSTRING)."""

        dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

        def save_raw(self, obj: bytes | str) -> None:
            raw = obj.encode("latin1") if isinstance(obj, str) else obj
            if len(raw) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
            else:
                self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
            self.memoize(obj)

        dispatch[bytes] = save_raw
        dispatch[str] = save_raw

    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, object]] = {}
    k0 = 0
    for split, wnids in classes.items():
        n = len(wnids) * per_class
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        class_dict: dict[str, list[int]] = {w: [] for w in wnids}
        for i in range(per_class):
            for c, wnid in enumerate(wnids):
                index = i * len(wnids) + c
                images[index] = mini_pixels(k0 + c, i, size)
                class_dict[wnid].append(index)
        k0 += len(wnids)
        data = {"image_data": images, "class_dict": class_dict}
        path = root / f"mini-imagenet-cache-{split}.pkl"
        if py2:
            buf = io.BytesIO()
            Py2Pickler(buf, protocol=2).dump(data)
            path.write_bytes(buf.getvalue().replace(b"numpy._core.", b"numpy.core."))
        else:
            path.write_bytes(pickle.dumps(data, protocol=protocol))
        out[split] = data
    return out


def write_omniglot_characters(
    root: Path, characters: dict[str, list[str]], drawers: int = 2, size: int = 28,
) -> Path:
    """``root/<set_name>/<Alphabet>/<characterNN>/<id>_<nn>.png`` for named characters
    (``Alphabet/characterNN``) per set (``images_background``, ``images_evaluation``)."""
    char_id = 1
    for set_name, names in characters.items():
        (root / set_name).mkdir(parents=True, exist_ok=True)
        for name in names:
            folder = root / set_name / name
            folder.mkdir(parents=True, exist_ok=True)
            for d in range(drawers):
                img = Image.fromarray(glyph(char_id * 100 + d, size, cell=4)).convert("1")
                img.save(folder / f"{char_id:04d}_{d + 1:02d}.png")
            char_id += 1
    return root
