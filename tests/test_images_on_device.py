"""``task.images_on_device``: a placed episodic source draws the same tasks (the draw stays
on the CPU generator; only indices move), and the engine places it only on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from fewshot_cli.config import validate
from fewshot_cli.engine import setup
from fewshot_cli.tasks.episodic import EpisodicTasks, SplitData


def _source(rotations: bool = True) -> EpisodicTasks:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 6, 6), generator=gen, dtype=torch.uint8)
    per_class = [torch.arange(c * 6, c * 6 + 6 - (c % 2)) for c in range(10)]  # padded table
    turns = torch.arange(10) % 4 if rotations else None
    split = SplitData(images, per_class, [f"c{c}" for c in range(10)], "mem", rotations=turns)
    test = SplitData(images, per_class[:6], [f"c{c}" for c in range(6)], "mem")
    return EpisodicTasks({"train": split, "test": test}, ways=3, shots=1, queries=2)


@pytest.mark.parametrize("rotations", [False, True])
def test_placed_source_draws_the_same_tasks(rotations: bool) -> None:
    plain, placed = _source(rotations), _source(rotations)
    placed.place("cpu")
    for split in ("train", "test"):
        a = plain.sample(4, torch.Generator().manual_seed(3), split)
        b = placed.sample(4, torch.Generator().manual_seed(3), split)
        for x, y in ((a.support_x, b.support_x), (a.query_x, b.query_x),
                     (a.support_y, b.support_y), (a.query_y, b.query_y)):
            assert torch.equal(x, y)
        assert torch.equal(a.info["classes"], b.info["classes"])


def test_splits_sharing_images_share_one_copy() -> None:
    source = _source()
    source.place("cpu")
    tables = list(source._tables.values())
    assert tables[0].images is tables[1].images
    assert source.image_bytes == 60 * 36


class _OneDevicePerOp(TorchFunctionMode):
    """Records every torch call whose tensor arguments sit on more than one device (a GPU
    would refuse most of them; the meta device does not)."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0]
                   if isinstance(t, torch.Tensor) and t.dim() > 0]
        if len({t.device for t in tensors}) > 1:
            self.mixed.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def test_the_batch_is_built_where_the_images_are() -> None:
    """Every tensor the sampled batch is made of lives on the images' device: indices and
    turns are moved there before gathering, and no op mixes devices (the meta device has
    no values, but keeps track of where each tensor is)."""
    source = _source()
    source.place("meta")
    with _OneDevicePerOp() as mode:
        batch = source.sample(2, torch.Generator().manual_seed(0))
    assert mode.mixed == []
    for t in (batch.support_x, batch.query_x, batch.support_y, batch.query_y):
        assert t.device.type == "meta"
    assert batch.support_x.dtype == torch.float32
    assert batch.info["classes"].device.type == "cpu"  # for plots, as before


def _cfg(setting: str):
    return validate({"task": {"kind": "omniglot", "images_on_device": setting},
                     "model": {"kind": "conv4"}}, "test")


def test_images_on_device_placement_rule(monkeypatch) -> None:
    source = _source()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not setup.images_on_device(_cfg("on"), source, cpu)
    assert not setup.images_on_device(_cfg("off"), source, gpu)
    assert setup.images_on_device(_cfg("on"), source, gpu)

    class Props:
        total_memory = 4 * source.image_bytes

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    assert setup.images_on_device(_cfg("auto"), source, gpu)
    Props.total_memory -= 1
    assert not setup.images_on_device(_cfg("auto"), source, gpu)
    sine = validate({}, "test")
    assert not setup.images_on_device(sine, object(), gpu)


def test_yaml_booleans_are_accepted() -> None:
    assert _cfg(True).task.images_on_device == "on"
    assert _cfg(False).task.images_on_device == "off"
