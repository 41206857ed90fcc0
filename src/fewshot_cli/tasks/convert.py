"""Convert the widely shared pickle copies of mini-ImageNet into the layout the loader reads.

The pickles (``mini-imagenet-cache-{train,val,test}.pkl``, one per split) each
hold a dict ``{"image_data": uint8 [N, 84, 84, 3], "class_dict": {wnid: [indices
into image_data]}}``, often written by Python 2. They are read with a
restricted unpickler that builds numpy arrays and nothing else, so a file from
the web cannot run code when it is opened.

:func:`convert_miniimagenet` writes ``dest/images/<name>.jpg`` and
``dest/{train,val,test}.csv`` (header ``filename,label``). The code that made
these pickles wrote each class's images in the order of the Ravi & Larochelle
csv rows, so when a class of the reference split has its 600 images, the k-th
image gets the reference's k-th file name (``n0153282900000005.jpg``: WordNet
id + the ImageNet image number) and the csv files come out byte for byte equal
to the reference (see :mod:`.reference`). Other classes get ``<wnid><k>.jpg``,
``k`` the 1-based position in the class, 8 digits.

Images are written as JPEG at quality 95 without chroma subsampling: the
reference layout and its file names are JPEG, and at that setting re-encoding
84x84 photo crops changes pixels by under 2 of 255 on average (4:2:0
subsampling, Pillow's default, nearly 3). ``image_format="png"`` keeps the
pickle's pixels exactly, at about twice the size, but its csv files name
``.png`` files and so no longer match the reference's bytes.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..errors import DataError
from ..files import atomic_write
from . import reference
from .image_cache import one_line

PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"
_EXPECTED = "a mini-ImageNet pickle (a dict of image_data, uint8 [N, H, W, 3], and class_dict)"


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The callables numpy's own pickles of arrays, dtypes and scalars refer to."""
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of protocol 2 spell bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _Refused(pickle.UnpicklingError):
    """A pickle refers to something other than numpy's array reconstruction."""


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that refuses every global but numpy's array reconstruction."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def load_pickle(path: Path) -> tuple[np.ndarray, dict[str, list[int]]]:
    """``(image_data, class_dict)`` of one mini-ImageNet pickle, read safely and checked."""
    try:
        with open(path, "rb") as fh:
            data = _ArraysOnly(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: expected {_EXPECTED}, found no such file") from None
    except _Refused as e:
        raise DataError(
            f"{path}: expected {_EXPECTED} holding only numpy arrays, found a reference to "
            f"{one_line(e)} (refused: unpickling it could run code)"
        ) from None
    except Exception as e:  # a truncated or foreign file can fail in many ways
        raise DataError(f"{path}: expected {_EXPECTED}, found {one_line(e)}") from None
    if isinstance(data, dict):
        data = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= data.keys():
        found = (f"a dict with keys {', '.join(map(str, data))}" if isinstance(data, dict)
                 else f"a {type(data).__name__}")
        raise DataError(f"{path}: expected {_EXPECTED}, found {found}")
    images, classes = data["image_data"], data["class_dict"]
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or images.shape[-1] != 3):
        found = (f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray)
                 else type(images).__name__)
        raise DataError(f"{path}: expected image_data a uint8 array [N, H, W, 3], found {found}")
    if not isinstance(classes, dict) or not classes:
        found = "an empty dict" if isinstance(classes, dict) else f"a {type(classes).__name__}"
        raise DataError(f"{path}: expected class_dict a non-empty dict of wnid: [indices], "
                        f"found {found}")
    n = len(images)
    out: dict[str, list[int]] = {}
    seen: set[int] = set()
    for key, indices in classes.items():
        wnid = key.decode("latin1") if isinstance(key, bytes) else str(key)
        try:
            ix = [int(i) for i in indices]
        except (TypeError, ValueError):
            raise DataError(f"{path}: expected class_dict[{wnid!r}] a list of image indices, "
                            f"found {type(indices).__name__}") from None
        what = "no indices" if not ix else None
        for i in ix:
            if not 0 <= i < n or i in seen:
                what = f"index {i} ({'used twice' if i in seen else 'out of range'})"
                break
            seen.add(i)
        if what:
            raise DataError(f"{path}: expected class_dict[{wnid!r}] to hold distinct indices "
                            f"below {n}, found {what}")
        out[wnid] = ix
    return images, out


def _file_names(wnid: str, count: int, ext: str) -> list[str]:
    """The reference's file names when ``wnid`` has its 600 images, else ``<wnid><k>``."""
    names = reference.ravi_filenames(wnid)
    if names is not None and len(names) == count:
        return [name[: -len(".jpg")] + ext for name in names]
    return [f"{wnid}{k + 1:08d}{ext}" for k in range(count)]


def split_rows(
    classes: dict[str, list[int]], ext: str = ".jpg"
) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    """The csv rows ``(filename, wnid)`` of one split, classes sorted (as in the
    reference), and the ``(image index, filename)`` pairs to write."""
    rows: list[tuple[str, str]] = []
    jobs: list[tuple[int, str]] = []
    for wnid in sorted(classes):
        files = _file_names(wnid, len(classes[wnid]), ext)
        rows.extend((name, wnid) for name in files)
        jobs.extend(zip(classes[wnid], files))
    return rows, jobs


def csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    """``filename,label`` csv text with LF line endings, as the reference files have."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "label"])
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _check_split(path: Path, split: str, wnids: set[str]) -> None:
    """DataError when a pickle holds exactly the classes of another reference split
    (the files were renamed or written under swapped names)."""
    ref = reference.ravi_split()
    for other, names in ref.classes.items():
        if other != split and wnids == set(names):
            raise DataError(
                f"{path}: expected the {len(ref.classes[split])} {split} classes of the "
                f"Ravi & Larochelle split, found exactly its {len(names)} {other} classes "
                f"(the file names are swapped; rename the file to "
                f"{PICKLE_NAME.format(split=other)})"
            )


def convert_miniimagenet(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    image_format: Literal["jpg", "png"] = "jpg",
    quality: int = 95,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Write ``src``'s pickles (``mini-imagenet-cache-{train,val,test}.pkl``) as
    ``dest/images/*`` + ``dest/{train,val,test}.csv`` (module docstring).

    Every pickle is checked before anything is written. ``overwrite`` allows a
    ``dest`` that already holds csv files. ``progress`` receives a line per split.
    Returns one summary line per split. DataError (one line) on a wrong file.
    """
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', not {image_format!r}")
    paths = {split: src / PICKLE_NAME.format(split=split) for split in reference.RAVI_SPLITS}
    names = [p.name for p in paths.values()]
    if not src.is_dir():
        raise DataError(f"{src}: expected a folder holding {', '.join(names)}, "
                        "found no such folder")
    absent = [p.name for p in paths.values() if not p.is_file()]
    if absent:
        raise DataError(f"{src}: expected {', '.join(names)}, found no {', '.join(absent)}")
    existing = [f"{s}.csv" for s in paths if (dest / f"{s}.csv").exists()]
    if existing and not overwrite:
        raise DataError(f"{dest}: expected a new or empty folder, found {', '.join(existing)} "
                        "(convert with overwrite to replace them)")
    # Read and check every file before writing anything.
    loaded = {split: load_pickle(path) for split, path in paths.items()}
    for split, (_, classes) in loaded.items():
        _check_split(paths[split], split, set(classes))
    images_dir = dest / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    ext = f".{image_format}"
    lines = []
    for split, (images, classes) in loaded.items():
        rows, jobs = split_rows(classes, ext)
        _write_images(images, jobs, images_dir, image_format, quality, workers)
        atomic_write(dest / f"{split}.csv", lambda fh, rows=rows: fh.write(csv_bytes(rows)))
        h, w = images.shape[1:3]
        line = (f"{split}: {len(classes)} classes, {len(rows)} images ({w}x{h}) "
                f"-> {dest / f'{split}.csv'}")
        lines.append(line)
        if progress is not None:
            progress(line)
    return lines


def _write_images(
    images: np.ndarray, jobs: list[tuple[int, str]], folder: Path, image_format: str,
    quality: int, workers: int | None,
) -> None:
    options: dict[str, Any] = (
        {"format": "JPEG", "quality": quality, "subsampling": 0} if image_format == "jpg"
        else {"format": "PNG"}
    )

    def write(lo: int, hi: int) -> None:
        for index, name in jobs[lo:hi]:
            path = folder / name
            try:
                Image.fromarray(images[index]).save(path, **options)
            except OSError as e:
                raise DataError(f"{path}: expected a writable file, found {one_line(e)}") from None

    n = len(jobs)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or n < 256:
        write(0, n)
        return
    step = max(64, n // (workers * 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(write, lo, min(lo + step, n)) for lo in range(0, n, step)]:
            fut.result()
