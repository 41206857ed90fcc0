"""Decode and resize an image data set once, keep it as a uint8 tensor, cache it on disk.

An :class:`ImageSet` is every image of a data set (or of one split) stacked as
``uint8 [N, C, H, W]`` with an int64 class label per image. :func:`load_image_set`
builds it from a list of classes and their files, and saves it with
``torch.save`` in the cache folder (``task.cache_dir``, else ``$FEWSHOT_CACHE``,
else ``~/.cache/fewshot``) under a name that hashes

* the absolute source root,
* every file's path (relative to the root), size and modification time,
* the class structure (class names and which files belong to which), and
* the preprocessing (image size, PIL mode, inversion, resampling, format version).

Any change to one of these gives a new name, so the set is decoded again; a
cache file that cannot be read or does not match is decoded again too, never
an error. Files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..files import atomic_write, cache_root

log = logging.getLogger("fewshot")

#: Bump when the stored layout or the decoding changes: old cache files then miss.
FORMAT_VERSION = 1

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Files larger than this on average are decoded on a thread pool (PIL releases
# the GIL while decoding and resizing big images); tiny files such as Omniglot's
# 1-bit PNGs are decoded faster on one thread, where Python overhead dominates.
_THREADED_MIN_AVG_BYTES = 8 * 1024

#: Told how many more images are decoded; called from the thread that loads the set.
Advance = Callable[[int], None]
#: ``start(tag, total)`` when a set begins decoding (its cache file's ``tag``); the
#: :data:`Advance` it returns is told as images are done (None: nothing to tell).
DecodeProgress = Callable[[str, int], Advance | None]
_decode_progress: ContextVar[DecodeProgress | None] = ContextVar("decode_progress",
                                                                 default=None)
# Images decoded on one thread between two reports: the bar moves several times a second
# even for Omniglot's tiny files, and a report (a counter under a lock) costs nothing there.
_PROGRESS_BLOCK = 256


@contextmanager
def decode_progress(start: DecodeProgress) -> Iterator[None]:
    """Within the block, every image set decoded (not read from the cache) reports its
    progress through ``start``: the commands show a bar with it, this module prints
    nothing itself."""
    token = _decode_progress.set(start)
    try:
        yield
    finally:
        _decode_progress.reset(token)


@dataclass(frozen=True)
class ImageFile:
    """One source image and the stat fields that key the cache."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Preprocess:
    """How each image becomes a ``uint8 [C, H, W]`` array.

    ``mode`` is the PIL mode the image is converted to before resizing: ``"L"``
    (1 channel), ``"RGB"`` (3 channels) or ``"1"`` (1-bit, stored as 0/255;
    Pillow resizes 1-bit images with nearest-neighbour whatever ``resample``
    says). ``invert`` stores ``255 - value`` (Omniglot: strokes become 255).
    Images are resized to ``image_size x image_size`` without cropping.
    """

    image_size: int
    mode: str = "RGB"
    invert: bool = False
    resample: str = "lanczos"

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def describe(self) -> str:
        return (
            f"v{FORMAT_VERSION}|size={self.image_size}|mode={self.mode}|"
            f"invert={int(self.invert)}|resample={self.resample}"
        )


@dataclass
class ImageSet:
    """All images of a set: ``images uint8 [N, C, H, W]``, ``labels int64 [N]``.

    ``labels[i]`` indexes ``class_names``; ``files[i]`` is image ``i``'s path
    relative to the source root. ``from_cache`` tells whether it was read from
    the cache (True) or decoded (False); ``cache_file`` is where it is stored
    (None when the cache folder was not writable).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    files: list[str]
    from_cache: bool = False
    cache_file: Path | None = field(default=None, repr=False)

    def class_indices(self) -> list[torch.Tensor]:
        """Per class, the int64 indices of its images (in file order)."""
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
        return list(torch.split(order, counts))


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def list_images(folder: Path) -> list[ImageFile]:
    """The image files directly in ``folder`` (by extension, case-insensitive), sorted by name."""
    out = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(
            f"{folder}: expected a readable folder of images, found {one_line(e)}"
        ) from None
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if not entry.is_file():
            continue
        st = entry.stat()
        out.append(ImageFile(entry.path, st.st_size, st.st_mtime_ns))
    return out


def list_subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: expected a readable folder, found {one_line(e)}") from None
    return [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]


def _relative(path: str, root: Path) -> str:
    """``path`` relative to ``root`` (a cheap prefix strip for files listed under it)."""
    prefix = os.path.join(str(root), "")
    if path.startswith(prefix):
        return path[len(prefix):]
    return os.path.relpath(path, root)


def cache_key(
    root: Path, classes: Sequence[tuple[str, Sequence[ImageFile]]], prep: Preprocess
) -> str:
    """SHA-256 of the source root, file list with stats, class structure and preprocessing."""
    h = hashlib.sha256()
    h.update(f"{prep.describe()}\n{os.path.abspath(root)}\n".encode())
    for name, files in classes:
        parts = [f"class\t{name}\t{len(files)}"]
        for f in files:
            parts.append(f"{_relative(f.path, root)}\t{f.size}\t{f.mtime_ns}")
        h.update(("\n".join(parts) + "\n").encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class ConversionError(ValueError):
    """An image whose pixels cannot be converted to the mode a :class:`Preprocess` asks."""


def decode_image(path: str, prep: Preprocess) -> np.ndarray:
    """Decode one image file into ``uint8 [C, H, W]`` following ``prep``."""
    try:
        with Image.open(path) as im:
            return prepare_image(im, prep)
    except ConversionError as e:
        raise DataError(f"{path}: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: expected a readable image, found {one_line(e)}") from None


def prepare_image(im: Image.Image, prep: Preprocess) -> np.ndarray:
    """An opened image as ``uint8 [C, H, W]`` following ``prep`` (PIL's errors propagate)."""
    size = (prep.image_size, prep.image_size)
    if im.mode != prep.mode:
        # A plain threshold at 128 for 1-bit output, not dithering.
        try:
            im = im.convert(prep.mode, dither=Image.Dither.NONE)
        except ValueError as e:
            raise ConversionError(f"cannot convert its {im.mode} pixels to {prep.mode} "
                                  f"({prep.channels} channel(s)) as the images were: "
                                  f"{one_line(e)}") from None
    if im.size != size:
        im = im.resize(size, resample=_RESAMPLE[prep.resample])
    arr = np.asarray(im)
    if prep.mode == "1":
        arr = arr.astype(np.uint8) * 255
    if prep.invert:
        arr = 255 - arr
    if arr.ndim == 2:
        return arr[None]
    return arr.transpose(2, 0, 1)


def _decode_all(
    paths: list[str], sizes: list[int], prep: Preprocess, workers: int | None,
    advance: Advance | None = None,
) -> np.ndarray:
    n = len(paths)
    out = np.empty((n, prep.channels, prep.image_size, prep.image_size), dtype=np.uint8)

    def run(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            out[i] = decode_image(paths[i], prep)
        return hi - lo

    if workers is None:
        workers = 1
        if n > 64 and sum(sizes) / n >= _THREADED_MIN_AVG_BYTES:
            workers = min(8, os.cpu_count() or 1)
    if workers <= 1:
        for lo in range(0, n, _PROGRESS_BLOCK):
            done = run(lo, min(lo + _PROGRESS_BLOCK, n))
            if advance is not None:
                advance(done)
        return out
    step = max(16, n // (workers * 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, lo, min(lo + step, n)) for lo in range(0, n, step)]
        if advance is not None:
            for fut in as_completed(futures):  # on this thread, as blocks finish
                if fut.exception() is None:
                    advance(fut.result())
        for fut in futures:
            fut.result()  # the first unreadable image in file order is the one reported
    return out


def _read_cache(path: Path, key: str, n: int, prep: Preprocess) -> ImageSet | None:
    """The cached set at ``path`` if it exists and matches; None otherwise."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = data["images"], data["labels"]
        names, files = list(data["class_names"]), _split_files(data["files"])
        shape = (n, prep.channels, prep.image_size, prep.image_size)
        ok = (
            data.get("version") == FORMAT_VERSION
            and data.get("key") == key
            and isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and tuple(images.shape) == shape
            and isinstance(labels, torch.Tensor)
            and labels.dtype == torch.int64
            and tuple(labels.shape) == (n,)
            and len(files) == n
        )
    except Exception as e:  # any unreadable cache file is rebuilt
        log.warning("cache file %s is unreadable (%s); decoding the images again", path,
                    one_line(e))
        return None
    if not ok:
        log.warning("cache file %s does not match its data set; decoding the images again", path)
        return None
    return ImageSet(images, labels, names, files, from_cache=True, cache_file=path)


def _split_files(joined: str) -> list[str]:
    return joined.split("\0") if joined else []


def _write_cache(path: Path, key: str, data: ImageSet) -> bool:
    """Save atomically; False (with a warning) when the cache folder is not writable."""
    payload = {
        "version": FORMAT_VERSION,
        "key": key,
        "images": data.images,
        "labels": data.labels,
        "class_names": data.class_names,
        "files": "\0".join(data.files),  # one string: much faster to unpickle than a list
    }
    try:
        atomic_write(path, lambda fh: torch.save(payload, fh))
        return True
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        warnings.warn(
            f"{path.parent}: cannot write the image cache ({one_line(e)}); "
            "images will be decoded again next time (set task.cache_dir or $FEWSHOT_CACHE)",
            stacklevel=3,
        )
        return False


def load_image_set(
    root: Path,
    classes: Sequence[tuple[str, Sequence[ImageFile]]],
    prep: Preprocess,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    tag: str = "images",
    workers: int | None = None,
) -> ImageSet:
    """Load ``classes`` (``(name, files)`` pairs, in order) from the cache or by decoding.

    ``tag`` starts the cache file's name (e.g. ``"omniglot"``). ``workers``
    overrides the number of decoding threads (default: one thread for small
    files, up to 8 for large ones).
    """
    key = cache_key(root, classes, prep)
    n = sum(len(files) for _, files in classes)
    path = cache_root(cache_dir) / f"{tag}-{prep.image_size}px-{key[:20]}.pt"
    cached = _read_cache(path, key, n, prep)
    if cached is not None:
        return cached

    paths = [f.path for _, files in classes for f in files]
    sizes = [f.size for _, files in classes for f in files]
    log.info("decoding %d images from %s (cached in %s afterwards)", n, root, path.parent)
    start = _decode_progress.get()
    advance = start(tag, n) if start is not None and n else None
    images = torch.from_numpy(_decode_all(paths, sizes, prep, workers, advance))
    labels = torch.repeat_interleave(
        torch.arange(len(classes), dtype=torch.int64),
        torch.tensor([len(files) for _, files in classes], dtype=torch.int64),
    )
    data = ImageSet(
        images=images,
        labels=labels,
        class_names=[name for name, _ in classes],
        files=[_relative(p, root) for p in paths],
    )
    if _write_cache(path, key, data):
        data.cache_file = path
    return data
