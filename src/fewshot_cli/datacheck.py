"""What a task's data folder holds against what the config and the published data set
expect, without decoding the images or training.

``check(cfg)`` takes a loaded :class:`~fewshot_cli.config.Config` or its ``task``
section and returns a :class:`DataReport`; a ``fewshot data check CONFIG``
command only prints ``report.lines()`` and exits with ``0 if report.ok else 1``.

Each finding has a level that says what loading the task would do:

``error``
    loading or sampling would fail (a missing folder, too few classes or images
    for the configured tasks, a mini-ImageNet copy that differs from Ravi &
    Larochelle's split, a character of the vinyals split that is absent);
``warning``
    it would load, but the data differ from the published data set (Omniglot
    with other counts than 964 + 659 characters of 20 drawings, a csv file
    whose bytes differ from the reference) or something else deserves a look;
``ok`` / ``info``
    what matches, and what was found.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from .errors import ConfigError, DataError, FewshotError
from .tasks import miniimagenet, omniglot, reference
from .tasks.episodic import SPLITS, check_classes
from .tasks.image_cache import list_images, list_subfolders, one_line

Level = Literal["ok", "info", "warning", "error"]

#: Omniglot as published: characters per set, drawings per character, image size and mode.
OMNIGLOT_CHARACTERS = {omniglot.BACKGROUND: 964, omniglot.EVALUATION: 659}
OMNIGLOT_DRAWINGS = 20
OMNIGLOT_IMAGE = ((105, 105), "1")


@dataclass(frozen=True)
class Finding:
    """One line of a report."""

    level: Level
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


@dataclass
class DataReport:
    """The findings of :func:`check` for one task; ``ok`` when none is an error."""

    task: str
    root: str | None
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, text: str) -> None:
        self.findings.append(Finding(level, text))

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def count(self, level: Level) -> int:
        return sum(f.level == level for f in self.findings)

    def lines(self) -> list[str]:
        """The findings, one per line, and a closing verdict."""
        errors, warns = self.count("error"), self.count("warning")
        where = f" at {self.root}" if self.root else ""
        if errors:
            verdict = f"{self.task}{where}: {errors} error(s), {warns} warning(s)"
        elif warns:
            verdict = f"{self.task}{where}: usable, {warns} warning(s)"
        else:
            verdict = f"{self.task}{where}: as expected"
        return [str(f) for f in self.findings] + [verdict]


def check(cfg: Any, *, every_image: bool = False) -> DataReport:
    """Check the data of ``cfg`` (a Config or its task section) without training.

    Image headers are read for the first image of each class, or for every image
    with ``every_image``.
    """
    task = getattr(cfg, "task", cfg)
    kind = getattr(task, "kind", type(task).__name__)
    report = DataReport(task=kind, root=getattr(task, "root", None))
    checker = _CHECKERS.get(kind)
    if checker is None:
        report.add("info", f"{kind} tasks are generated: there is no data to check")
        return report
    try:
        checker(task, report, every_image)
    except FewshotError as e:  # a problem that stops the check; earlier findings stay
        report.add("error", str(e))
    return report


# --------------------------------------------------------------------------- helpers
def _image_headers(report: DataReport, paths: Sequence[str], what: str, every_image: bool,
                   expected: tuple[tuple[int, int], str] | None = None) -> None:
    """One finding on the sizes and modes of ``paths`` (headers only; the first image of
    each class unless ``every_image``); errors for unreadable files (the first, and how
    many more)."""
    found: Counter[tuple[tuple[int, int], str]] = Counter()
    bad: list[str] = []
    for path in paths:
        try:
            with Image.open(path) as im:
                found[(im.size, im.mode)] += 1
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            bad.append(f"{path}: expected a readable image, found {one_line(e)}")
    if bad:
        more = f" (and {len(bad) - 1} more unreadable)" if len(bad) > 1 else ""
        report.add("error", bad[0] + more)
    if not found:
        return
    shown = ", ".join(f"{n} of {w}x{h}, PIL mode {mode}"
                      for ((w, h), mode), n in found.most_common(4))
    if len(found) > 4:
        shown += f", {len(found) - 4} more kinds"
    which = "" if every_image else " (the first of each class)"
    text = f"{what}: {sum(found.values())} images read{which}: {shown}"
    if expected is None:
        report.add("info", text)
    elif set(found) == {expected}:
        report.add("ok", f"{text} (as published)")
    else:
        (w, h), mode = expected
        report.add("warning", f"{text}; expected {w}x{h}, PIL mode {mode} as published")


def _size_line(counts: Sequence[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo} images each" if lo == hi else f"{lo} to {hi} images per class"


def _fits(report: DataReport, folder: str, paths: Sequence[str], counts: Sequence[int],
          task: Any, per_split: str) -> None:
    """An error when ``ways``-way tasks of ``shots + queries`` images cannot be drawn."""
    try:
        check_classes(folder, paths, counts, task.ways, task.shots, task.queries)
    except DataError as e:
        report.add("error", str(e))
    else:
        shots = f"{task.shots} shot{'s' if task.shots != 1 else ''}"
        queries = f"{task.queries} quer{'ies' if task.queries != 1 else 'y'}"
        report.add("ok", f"{per_split}: {task.ways}-way tasks of {shots} + {queries} per class "
                         "can be drawn")


# --------------------------------------------------------------------------- omniglot
def _check_omniglot(task: Any, report: DataReport, every_image: bool) -> None:
    try:
        folder = omniglot.locate(task.root, allow_download=False)
    except DataError as e:
        if getattr(task, "download", False):
            report.add("warning", f"{task.root}: not downloaded yet (task.download is on, so "
                                  f"loading fetches it): {e}")
            return
        raise
    report.root = str(folder)
    classes, names, paths = omniglot.scan(folder)
    n_background = 0
    for set_name, want in OMNIGLOT_CHARACTERS.items():
        chars = [(key, files) for key, files in classes if key.startswith(set_name + "/")]
        if set_name == omniglot.BACKGROUND:
            n_background = len(chars)
        alphabets = len({key.split("/")[1] for key, _ in chars})
        text = f"{folder / set_name}: {alphabets} alphabets, {len(chars)} characters"
        if len(chars) == want:
            report.add("ok", f"{text} (as published)")
        else:
            report.add("warning", f"{text}; expected {want} characters as published")
        off = [(key, len(files)) for key, files in chars if len(files) != OMNIGLOT_DRAWINGS]
        if off:
            key, n = off[0]
            more = f" ({len(off) - 1} other characters too)" if len(off) > 1 else ""
            report.add("warning", f"{folder / key}: expected {OMNIGLOT_DRAWINGS} drawings as "
                                  f"published, found {n}{more}")
        elif chars:
            report.add("ok", f"{folder / set_name}: {OMNIGLOT_DRAWINGS} drawings per character")
        files = [f.path for _, fs in chars for f in (fs if every_image else fs[:1])]
        _image_headers(report, files, str(folder / set_name), every_image, OMNIGLOT_IMAGE)
    if not classes:
        report.add("error", f"{folder}: expected Omniglot character folders, found none")
        return
    report.add("info", f"images become {task.image_size}x{task.image_size}, strokes 1")
    try:
        split = omniglot.split_classes(task, names, n_background)
    except (ConfigError, DataError) as e:
        report.add("error", str(e))
        return
    if task.split == "vinyals":
        report.add("ok", f"every character of the vinyals split is present "
                         f"({reference.vinyals_split().source})")
    counts = [len(fs) for _, fs in classes]
    for name in SPLITS:
        chars = split[name]
        turns = 4 if omniglot.rotated(task, name) else 1
        n = len(chars) * turns
        rot = f" ({len(chars)} characters x 4 rotations)" if turns > 1 else ""
        where = f"{task.split} split, {name}"
        report.add("info", f"{where}: {n} classes{rot}")
        _fits(report, f"{task.root} ({where})", [paths[c] for c in chars for _ in range(turns)],
              [counts[c] for c in chars for _ in range(turns)], task, where)


# --------------------------------------------------------------------------- mini-ImageNet
def _check_miniimagenet(task: Any, report: DataReport, every_image: bool) -> None:
    root = Path(task.root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: expected the mini-ImageNet folder (images/, train.csv, "
                        "val.csv, test.csv), found no such folder")
    images_dir = root / "images"
    try:
        present = {e.name: e.path for e in os.scandir(images_dir)}
    except OSError as e:
        present = {}
        report.add("error", f"{images_dir}: expected the mini-ImageNet image folder, found "
                            f"{'no such folder' if not images_dir.exists() else one_line(e)}")
    listed: dict[str, list[tuple[str, list[str]]]] = {}
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        try:
            rows = miniimagenet.read_split_csv(csv_path)
        except DataError as e:
            report.add("error", str(e))
            continue
        by_class: dict[str, list[str]] = {}
        for filename, label in rows:
            by_class.setdefault(label, []).append(filename)
        listed[split] = list(by_class.items())
        counts = [len(f) for f in by_class.values()]
        report.add("info", f"{csv_path}: {len(by_class)} classes, {_size_line(counts)}")
        if present:
            absent = [f for f, _ in rows if f not in present]
            if absent:
                more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
                report.add("error", f"{images_dir / absent[0]}: expected the image listed in "
                                    f"{csv_path}, found no such file{more}")
            files = [present[f] for fs in by_class.values()
                     for f in (fs if every_image else fs[:1]) if f in present]
            _image_headers(report, files, f"{split} images", every_image)
        _fits(report, str(csv_path), [f"{csv_path} (label {c})" for c in by_class], counts,
              task, split)
    if present:
        named = {f for classes in listed.values() for _, fs in classes for f in fs}
        extra = len(set(present) - named)
        if extra:
            report.add("info", f"{images_dir}: {extra} files no csv lists (unused)")
    report.add("info", f"images become {task.image_size}x{task.image_size} RGB")
    if len(listed) < len(SPLITS):
        return
    labels = [label for classes in listed.values() for label, _ in classes]
    ref = reference.ravi_split()
    if not miniimagenet.ravi_check_wanted(task, labels):
        report.add("info", "no label is a WordNet id of the Ravi & Larochelle split: a custom "
                           "copy, loaded as it is (the split check is skipped)")
        return
    found = miniimagenet.compare_to_ravi(root, listed)
    for m in found:
        report.add(m.level, m.text)
    if not found:
        report.add("ok", f"the Ravi & Larochelle split exactly: 64 + 16 + 20 classes of "
                         f"{ref.images_per_class} images, csv files equal to {ref.source}")
    elif not any(m.level == "error" for m in found):
        report.add("ok", "the Ravi & Larochelle split's classes and image counts")


# --------------------------------------------------------------------------- image folder
def _check_image_folder(task: Any, report: DataReport, every_image: bool) -> None:
    root = Path(task.root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: expected an image folder with train/ and test/ (and "
                        "optionally val/), found no such folder")
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            if split == "val":
                report.add("info", f"{folder}: absent (optional; validation is not possible)")
            else:
                report.add("error", f"{folder}: expected a folder of {split} classes "
                                    "(<class>/*.png|jpg|jpeg), found no such folder")
            continue
        class_dirs = list_subfolders(folder)
        files = [list_images(d) for d in class_dirs]
        counts = [len(f) for f in files]
        shown = f", {_size_line(counts)}" if counts else ""
        report.add("info", f"{folder}: {len(class_dirs)} classes{shown}")
        paths = [f.path for fs in files for f in (fs if every_image else fs[:1])]
        _image_headers(report, paths, f"{split} images", every_image)
        _fits(report, str(folder), [str(d) for d in class_dirs], counts, task, split)
    mode = "grey" if getattr(task, "channels", 3) == 1 else "RGB"
    report.add("info", f"images become {task.image_size}x{task.image_size} {mode}")


_CHECKERS = {
    "omniglot": _check_omniglot,
    "miniimagenet": _check_miniimagenet,
    "image_folder": _check_image_folder,
}
