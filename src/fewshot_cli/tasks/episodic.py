"""N-way K-shot episodic sampling over class-labelled images (Vinyals et al. 2016;
Finn et al. 2017).

A task draws ``ways`` distinct classes of a split and ``shots + queries``
distinct images of each. Labels ``0..ways-1`` are the positions of the classes
in the task's random draw, so they are in random order per task and the same
in support and query. Layout, relied on by the evaluator: support position
``k * ways + j`` holds the ``k``-th support image of label ``j`` and query
position ``q * ways + j`` the ``q``-th query image of label ``j``.

Sampling is vectorised over tasks: classes are the top-``ways`` of one random
key per class, and images the top-``shots+queries`` of one random key per slot
of a padded ``[classes, max_images]`` index table (padding slots get key -1 and
are never drawn). Images stay ``uint8`` in memory; only the sampled batch is
converted to ``float32`` in ``[0, 1]``. All randomness comes from the caller's
(CPU) ``torch.Generator``.

:meth:`EpisodicTasks.place` keeps the images on a device (a GPU): the draw stays on
the CPU, with the same generator calls, and only its image indices cross to the
device, where the batch is gathered, rotated and converted. The tasks are the same
wherever the images are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError
from .base import Split, TaskBatch
from .fingerprint import classes_record

SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass
class SplitData:
    """The classes of one split.

    ``images`` is ``uint8 [M, C, H, W]`` (it may be shared by several splits);
    ``class_images[c]`` holds the indices into ``images`` of class ``c``'s
    images. ``rotations[c]`` (optional, int64) is the number of quarter turns,
    ``torch.rot90(x, r, dims=(-2, -1))``, applied to class ``c``'s images, which
    makes rotated copies of a class new classes without storing rotated images.
    ``class_names`` name the classes for plots; ``class_paths`` are the folders
    named in error messages; ``folder`` is the split's own location.
    """

    images: torch.Tensor
    class_images: Sequence[torch.Tensor]
    class_names: list[str]
    folder: str
    class_paths: list[str] | None = None
    rotations: torch.Tensor | None = None


class _Table:
    """A split ready for sampling: padded index table, per-class counts."""

    def __init__(self, data: SplitData, task_rotations: bool = False) -> None:
        counts = torch.tensor([len(ix) for ix in data.class_images], dtype=torch.int64)
        n_classes = len(data.class_images)
        width = int(counts.max()) if n_classes else 0
        table = torch.zeros(n_classes, max(width, 1), dtype=torch.int64)
        for c, ix in enumerate(data.class_images):
            table[c, : len(ix)] = torch.as_tensor(ix, dtype=torch.int64)
        self.data = data
        self.images = data.images
        self.table = table
        self.counts = counts
        self.pad = torch.arange(table.shape[1]) >= counts.unsqueeze(1)
        self.padded = bool(self.pad.any())
        self.n_classes = n_classes
        self.fewest = int(counts.min()) if n_classes else 0
        self.rotations = None
        turned = data.rotations is not None and bool((data.rotations % 4 != 0).any())
        if turned or task_rotations:
            h, w = self.images.shape[-2:]
            if turned and data.rotations.shape != (n_classes,):
                raise ValueError("rotations must hold one entry per class")
            if h != w:
                raise ValueError("rotated classes need square images")
            self.rotations = (data.rotations.to(torch.int64) % 4 if turned
                              else torch.zeros(n_classes, dtype=torch.int64))
            # Row r maps each output pixel to its source pixel under rot90(., r):
            # gathering with it rotates a whole batch at once (much faster than rot90 copies).
            grid = torch.arange(h * w).view(h, w)
            self.rot_pixels = torch.stack(
                [torch.rot90(grid, r, dims=(0, 1)).flatten() for r in range(4)]
            )

    def place(self, device: torch.device, moved: dict[int, torch.Tensor]) -> None:
        """Keep the images (and the rotation maps) on ``device``; ``moved`` maps the id of
        an image tensor already copied there (splits may share one) to its copy."""
        key = id(self.images)
        if key not in moved:
            moved[key] = self.images.to(device)
        self.images = moved[key]
        if self.rotations is not None:
            self.rot_pixels = self.rot_pixels.to(device)

    def class_path(self, c: int) -> str:
        if self.data.class_paths is not None:
            return self.data.class_paths[c]
        return f"{self.data.folder}/{self.data.class_names[c]}"

    def check(self, ways: int, per_class: int, shots: int, queries: int) -> None:
        """DataError unless every task can draw ``ways`` classes of ``per_class`` images."""
        if self.n_classes >= ways and per_class <= self.fewest:
            return
        paths = [self.class_path(c) for c in range(self.n_classes)]
        check_classes(self.data.folder, paths, self.counts.tolist(), ways, shots,
                      per_class - shots)


def check_classes(
    folder: str, class_paths: Sequence[str], counts: Sequence[int],
    ways: int, shots: int, queries: int,
) -> None:
    """DataError unless there are ``ways`` classes, each of at least ``shots + queries`` images.

    Loaders call it before decoding so that a too-small data set fails fast.
    """
    if len(counts) < ways:
        raise DataError(
            f"{folder}: expected at least {ways} classes for {ways}-way tasks, found {len(counts)}"
        )
    per_class = shots + queries
    short = [i for i, n in enumerate(counts) if n < per_class]
    if short:
        worst = min(short, key=lambda i: counts[i])
        others = f" ({len(short) - 1} other classes too)" if len(short) > 1 else ""
        raise DataError(
            f"{class_paths[worst]}: expected at least {per_class} images per class "
            f"(shots {shots} + queries {queries}), found {counts[worst]}{others}"
        )


class EpisodicTasks:
    """A :class:`~fewshot_cli.tasks.base.TaskSource` of N-way K-shot classification tasks.

    ``splits`` maps ``"train"``/``"val"``/``"test"`` to their :class:`SplitData`;
    ``missing`` maps an absent split to the one-line message raised (as
    :class:`DataError`) when it is sampled. Every present split is checked at
    construction for ``ways`` classes of at least ``shots + queries`` images.
    """

    problem = "classification"

    def __init__(
        self,
        splits: Mapping[str, SplitData],
        *,
        ways: int,
        shots: int,
        queries: int,
        name: str = "images",
        missing: Mapping[str, str] | None = None,
        files: Callable[[], Mapping[str, Any]] | None = None,
        task_rotations: bool = False,
    ) -> None:
        if not splits:
            raise ValueError("at least one split is needed")
        self.name = name
        #: How to record the files the splits were read from (computed when first asked:
        #: a fingerprint lists every file, and only starting or resuming a run needs it).
        self._files = files
        self._files_record: dict[str, Any] | None = None
        self.ways = ways
        self.shots = shots
        self.queries = queries
        self.output_dim = ways
        self._missing = dict(missing or {})
        #: Each class of every task drawn turned by its own random multiple of 90 degrees
        #: (the reference MAML's Omniglot tasks), rather than rotations as extra classes.
        self.task_rotations = task_rotations
        self._tables = {split: _Table(data, task_rotations) for split, data in splits.items()}
        shapes = {tuple(t.images.shape[1:]) for t in self._tables.values()}
        if len(shapes) != 1:
            raise ValueError(f"all splits must share one image shape, found {sorted(shapes)}")
        self.input_shape: tuple[int, ...] = shapes.pop()
        for table in self._tables.values():
            table.check(ways, shots + queries, shots, queries)

    # ------------------------------------------------------------------ queries
    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that can be sampled."""
        return tuple(s for s in SPLITS if s in self._tables)

    def num_classes(self, split: Split = "train") -> int:
        """Number of classes in ``split`` (rotated copies count as classes)."""
        return self._table(split).n_classes

    def class_names(self, split: Split = "train") -> list[str]:
        """Names of ``split``'s classes; ``info["classes"]`` indexes this list."""
        return list(self._table(split).data.class_names)

    def summary(self) -> str:
        """One line: classes per split and the image shape."""
        parts = [f"{s} {self._tables[s].n_classes}" for s in self.splits]
        c, h, w = self.input_shape
        return f"{self.name}: {', '.join(parts)} classes; images {c}x{h}x{w}"

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data (meta.json's ``provenance.data``): each split's class
        list and, where the builder gave it, the files read (:mod:`.fingerprint`)."""
        out: dict[str, Any] = {"kind": self.name, "splits": {
            s: classes_record(self._tables[s].data.class_names) for s in self.splits}}
        if self._files is not None:
            if self._files_record is None:
                self._files_record = dict(self._files())
            out["files"] = self._files_record
        return out

    @property
    def image_bytes(self) -> int:
        """Bytes of the decoded images of every split (shared tensors counted once)."""
        return sum({id(t.images): t.images.nbytes for t in self._tables.values()}.values())

    def place(self, device: torch.device | str) -> None:
        """Keep the images on ``device`` and build sampled tasks there (module docstring):
        :meth:`sample` then returns tensors on ``device``."""
        moved: dict[int, torch.Tensor] = {}
        for table in self._tables.values():
            table.place(torch.device(device), moved)

    def _table(self, split: str) -> _Table:
        if split in self._tables:
            return self._tables[split]
        if split in self._missing:
            raise DataError(self._missing[split])
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n_tasks: int,
        generator: torch.Generator,
        split: Split = "train",
        shots: int | None = None,
        queries: int | None = None,
    ) -> TaskBatch:
        """Draw ``n_tasks`` tasks from ``split`` (see the module docstring for the layout).

        ``shots``/``queries`` (per class) override the configured sizes.
        ``info["classes"]`` is int64 ``[n_tasks, ways]``: the class id (index into
        :meth:`class_names`) behind each label.
        """
        t = self._table(split)
        k = self.shots if shots is None else int(shots)
        q = self.queries if queries is None else int(queries)
        if k < 1 or q < 0:
            raise ValueError(f"need shots >= 1 and queries >= 0, found {k} and {q}")
        per_class = k + q
        if shots is not None or queries is not None:
            t.check(self.ways, per_class, k, q)
        b, n = int(n_tasks), self.ways

        keys = torch.rand(b, t.n_classes, generator=generator)
        classes = keys.topk(n, dim=1).indices  # [B, N], random order = labels
        slot_keys = torch.rand(b, n, t.table.shape[1], generator=generator)
        if t.padded:
            slot_keys.masked_fill_(t.pad[classes], -1.0)
        slots = slot_keys.topk(per_class, dim=2).indices  # [B, N, K+Q], distinct
        index = t.table[classes.unsqueeze(-1), slots]
        device = t.images.device  # the draw above is on the CPU; the batch is built here
        index = index.to(device, non_blocking=True)
        shape = t.images.shape[1:]
        # index_select, not images[index]: it is an order of magnitude faster for uint8 rows.
        x = t.images.index_select(0, index.flatten()).view(b, n, per_class, *shape)
        if t.rotations is not None:
            turns = t.rotations[classes]  # [B, N] quarter turns
            if self.task_rotations:
                turns = (turns + torch.randint(0, 4, (b, n), generator=generator)) % 4
            turns = turns.to(device, non_blocking=True)
            hw = shape[-2] * shape[-1]
            flat = x.view(b, n, per_class * shape[0], hw)
            pixels = t.rot_pixels[turns].unsqueeze(2).expand(b, n, per_class * shape[0], hw)
            x = torch.gather(flat, 3, pixels).view(b, n, per_class, *shape)
        # [B, K+Q, N, ...] flattened: position p * N + j holds label j.
        x = x.transpose(1, 2).reshape(b, per_class * n, *x.shape[3:])
        labels = torch.arange(n, dtype=torch.int64, device=device)
        return TaskBatch(
            support_x=_to_unit_float(x[:, : k * n]),
            support_y=labels.repeat(k).expand(b, -1).contiguous(),
            query_x=_to_unit_float(x[:, k * n :]),
            query_y=labels.repeat(q).expand(b, -1).contiguous(),
            info={"classes": classes},
        )


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` in ``0..255`` to a contiguous ``float32`` in ``[0, 1]``."""
    return x.to(dtype=torch.float32, memory_format=torch.contiguous_format).div_(255.0)
