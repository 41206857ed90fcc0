"""Image task sources: episodic sampler, cache, Omniglot, mini-ImageNet, image folders."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from image_fixtures import COLOURS, make_image_folder, make_miniimagenet, make_omniglot

from fewshot_cli.config import ImageFolderTask, MiniImagenetTask, OmniglotTask
from fewshot_cli.errors import ConfigError, DataError
from fewshot_cli.tasks import image_cache, image_folder, miniimagenet, omniglot
from fewshot_cli.tasks.episodic import EpisodicTasks, SplitData

REAL_OMNIGLOT = Path(
    os.environ.get("FEWSHOT_OMNIGLOT")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- sampler
def coded_split(counts: list[int], first_class: int = 0) -> SplitData:
    """Images whose pixels encode (class, index in class): pixel 0 = class, pixel 1 = index."""
    images, members = [], []
    for c, n in enumerate(counts):
        start = len(images)
        for i in range(n):
            img = torch.zeros(1, 3, 3, dtype=torch.uint8)
            img[0, 0, 0] = first_class + c
            img[0, 0, 1] = i
            images.append(img)
        members.append(torch.arange(start, start + n))
    names = [f"class{first_class + c}" for c in range(len(counts))]
    return SplitData(torch.stack(images), members, names, folder="coded")


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class code, image index) of each image in a float batch [..., 1, 3, 3]."""
    v = (x * 255).round().long()
    return v[..., 0, 0, 0], v[..., 0, 0, 1]


def coded_source(ways: int = 4, shots: int = 2, queries: int = 3) -> EpisodicTasks:
    # Uneven class sizes (some exactly shots + queries) exercise the padded table.
    train = coded_split([5, 9, 5, 7, 12, 6, 5, 8])
    test = coded_split([5, 6, 7, 8, 9], first_class=100)
    return EpisodicTasks({"train": train, "test": test}, ways=ways, shots=shots,
                         queries=queries)


def test_episodic_layout_and_invariants() -> None:
    src = coded_source(ways=4, shots=2, queries=3)
    assert src.problem == "classification"
    assert src.input_shape == (1, 3, 3)
    assert src.output_dim == 4
    b = src.sample(64, gen(1))
    n, k, q = 4, 2, 3
    assert b.support_x.shape == (64, k * n, 1, 3, 3)
    assert b.query_x.shape == (64, q * n, 1, 3, 3)
    assert b.support_x.dtype == torch.float32 and b.support_y.dtype == torch.int64
    assert b.support_x.is_contiguous() and b.query_x.is_contiguous()
    assert torch.equal(b.support_y, torch.arange(n).repeat(k).expand(64, -1))
    assert torch.equal(b.query_y, torch.arange(n).repeat(q).expand(64, -1))
    classes = b.info["classes"]
    assert classes.shape == (64, n) and classes.dtype == torch.int64
    s_cls, s_idx = decode(b.support_x)
    q_cls, q_idx = decode(b.query_x)
    for t in range(64):
        assert len(set(classes[t].tolist())) == n  # N distinct classes
        # Position p * N + j holds label j, i.e. class classes[t, j], in support and query.
        assert torch.equal(s_cls[t].view(k, n), classes[t].expand(k, n))
        assert torch.equal(q_cls[t].view(q, n), classes[t].expand(q, n))
        for j in range(n):
            ids = torch.cat([s_idx[t].view(k, n)[:, j], q_idx[t].view(q, n)[:, j]]).tolist()
            assert len(set(ids)) == k + q  # K+Q distinct images of the class
    # Padding slots never leak: every index is inside its class.
    counts = torch.tensor([5, 9, 5, 7, 12, 6, 5, 8])
    assert bool((s_idx < counts[s_cls]).all()) and bool((q_idx < counts[q_cls]).all())


def test_episodic_labels_are_random_and_classes_cover_split() -> None:
    src = coded_source()
    b = src.sample(200, gen(2))
    first = b.info["classes"][:, 0]
    assert len(set(first.tolist())) == 8  # every class appears as label 0 somewhere
    assert not bool((b.info["classes"].diff(dim=1) > 0).all(dim=1).all())  # not sorted


def test_episodic_determinism_and_split_isolation() -> None:
    src = coded_source()
    a = src.sample(8, gen(5), split="test")
    b = src.sample(8, gen(5), split="test")
    c = src.sample(8, gen(6), split="test")
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert torch.equal(a.info["classes"], b.info["classes"])
    assert not torch.equal(a.support_x, c.support_x)
    g = gen(0)
    for _ in range(5):
        tr, te = src.sample(16, g, "train"), src.sample(16, g, "test")
        assert bool((decode(tr.query_x)[0] < 100).all())
        assert bool((decode(tr.support_x)[0] < 100).all())
        assert bool((decode(te.support_x)[0] >= 100).all())
    # The generator is the only source of randomness: global RNG state is irrelevant.
    torch.manual_seed(123)
    x1 = src.sample(4, gen(9)).support_x
    torch.manual_seed(456)
    assert torch.equal(x1, src.sample(4, gen(9)).support_x)


def test_episodic_overrides_and_errors() -> None:
    src = coded_source(ways=4, shots=1, queries=1)
    b = src.sample(3, gen(), shots=3, queries=2)
    assert b.support_x.shape[1] == 12 and b.query_x.shape[1] == 8
    with pytest.raises(DataError, match=r"expected at least 6 images per class .* found 5"):
        src.sample(2, gen(), shots=4, queries=2)
    with pytest.raises(DataError, match=r"coded: expected at least 9 classes .* found 8"):
        EpisodicTasks({"train": coded_split([5] * 8)}, ways=9, shots=1, queries=1)
    with pytest.raises(DataError, match="val is missing"):
        EpisodicTasks({"train": coded_split([5] * 8)}, ways=2, shots=1, queries=1,
                      missing={"val": "val is missing"}).sample(1, gen(), "val")


# --------------------------------------------------------------------------- cache
@pytest.fixture(scope="module")
def omni_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_omniglot(tmp_path_factory.mktemp("omniglot"))


def omni_cfg(root: Path, cache: Path, **kw: object) -> OmniglotTask:
    base = dict(root=str(root), cache_dir=str(cache), train_classes=14, val_classes=4, ways=3)
    base.update(kw)
    return OmniglotTask(**base)


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = image_cache.decode_image

    def counting(path: str, prep: image_cache.Preprocess) -> np.ndarray:
        calls.append(path)
        return real(path, prep)

    monkeypatch.setattr(image_cache, "decode_image", counting)
    return calls


def test_cache_reused_and_rebuilt_on_settings(
    omni_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_decodes(monkeypatch)
    first, *_ = omniglot.load(omni_cfg(omni_root, tmp_path))
    assert not first.from_cache and len(calls) == 20 * 20
    assert first.cache_file is not None and first.cache_file.parent == tmp_path
    mtime = first.cache_file.stat().st_mtime_ns
    second, *_ = omniglot.load(omni_cfg(omni_root, tmp_path))
    assert second.from_cache and len(calls) == 400  # nothing decoded again
    assert first.cache_file.stat().st_mtime_ns == mtime
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.files == first.files and second.class_names == first.class_names
    # Split settings are not part of the cache: one decode serves both splits.
    third, *_ = omniglot.load(omni_cfg(omni_root, tmp_path, split="background"))
    assert third.from_cache
    # A preprocessing change (image size) is a new cache file.
    small, *_ = omniglot.load(omni_cfg(omni_root, tmp_path, image_size=14))
    assert not small.from_cache and small.images.shape[-2:] == (14, 14)
    assert small.cache_file != first.cache_file
    assert len(list(tmp_path.glob("omniglot-*.pt"))) == 2
    assert omniglot.load(omni_cfg(omni_root, tmp_path))[0].from_cache


def test_cache_rebuilt_when_files_change(tmp_path: Path) -> None:
    root = make_omniglot(tmp_path / "data", background=(2, 2), evaluation=(1, 2), drawers=3)
    cfg = omni_cfg(root, tmp_path / "cache", train_classes=4, val_classes=1, ways=2)
    assert not omniglot.load(cfg)[0].from_cache
    assert omniglot.load(cfg)[0].from_cache
    png = next(root.rglob("*.png"))
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not omniglot.load(cfg)[0].from_cache
    next(root.rglob("*.png")).unlink()
    data = omniglot.load(cfg)[0]
    assert not data.from_cache and data.images.shape[0] == 6 * 3 - 1


def test_corrupt_cache_file_is_rebuilt(omni_root: Path, tmp_path: Path) -> None:
    cfg = omni_cfg(omni_root, tmp_path)
    good = omniglot.load(cfg)[0]
    path = good.cache_file
    assert path is not None
    path.write_bytes(b"not a torch file")
    again = omniglot.load(cfg)[0]
    assert not again.from_cache and torch.equal(again.images, good.images)
    assert omniglot.load(cfg)[0].from_cache
    # A readable file with the wrong content is rebuilt too.
    torch.save({"version": image_cache.FORMAT_VERSION, "key": "x", "images": torch.zeros(1)}, path)
    assert not omniglot.load(cfg)[0].from_cache
    assert not list(tmp_path.glob("*.tmp"))


def test_threaded_decode_matches_single_thread(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", {"train": 6}, per_class=12, ext="jpg")
    classes = [(d.name, image_cache.list_images(d)) for d in
               image_cache.list_subfolders(root / "train")]
    prep = image_cache.Preprocess(image_size=12, mode="RGB")
    one = image_cache.load_image_set(root, classes, prep, cache_dir=tmp_path / "a", workers=1)
    many = image_cache.load_image_set(root, classes, prep, cache_dir=tmp_path / "b", workers=3)
    assert torch.equal(one.images, many.images) and one.images.shape == (72, 3, 12, 12)
    assert one.class_names == [f"class_{k:02d}" for k in range(6)]
    assert [len(ix) for ix in one.class_indices()] == [12] * 6


def test_cache_folder_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "env"))
    assert image_cache.cache_root(None) == tmp_path / "env"
    assert image_cache.cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv("FEWSHOT_CACHE")
    assert image_cache.cache_root(None) == Path.home() / ".cache" / "fewshot"


def test_unwritable_cache_folder_warns_and_still_loads(omni_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="cannot write the image cache"):
        data = omniglot.load(omni_cfg(omni_root, blocker / "cache"))[0]
    assert data.cache_file is None and data.images.shape[0] == 400


# --------------------------------------------------------------------------- omniglot
def test_omniglot_maml_split_and_rotations(omni_root: Path, tmp_path: Path) -> None:
    cfg = omni_cfg(omni_root, tmp_path, shots=2, queries=3)
    src = omniglot.build(cfg)
    assert src.input_shape == (1, 28, 28) and src.output_dim == 3
    assert (src.num_classes("train"), src.num_classes("val"), src.num_classes("test")) == (40, 4, 6)
    train = {n.split("@")[0] for n in src.class_names("train")}
    val, test = set(src.class_names("val")), set(src.class_names("test"))
    assert len(train) == 10 and not (train & val or train & test or val & test)
    assert len(train | val | test) == 20
    # Deterministic in split_seed, and another seed gives another split.
    assert omniglot.build(cfg).class_names("test") == src.class_names("test")
    other = omniglot.build(omni_cfg(omni_root, tmp_path, split_seed=7))
    assert other.class_names("test") != src.class_names("test")

    data, names, _, _, _ = omniglot.load(cfg)
    per_class = data.class_indices()
    b = src.sample(32, gen(3))
    assert set(b.support_x.unique().tolist()) <= {0.0, 1.0}  # binary strokes
    ids = b.info["classes"]
    train_names = src.class_names("train")
    rotated = 0
    for t in range(32):
        for j in range(3):
            name = train_names[int(ids[t, j])]
            base, _, rot = name.partition("@rot")
            turns = int(rot) // 90 if rot else 0
            rotated += turns > 0
            base_imgs = data.images[per_class[names.index(base)]].float() / 255
            want = torch.rot90(base_imgs, turns, dims=(-2, -1))
            for img in b.support_x[t].view(2, 3, 1, 28, 28)[:, j]:
                assert any(torch.equal(img, w) for w in want)
    assert rotated > 0
    # No test image ever shows up in a training task, in any rotation.
    test_ids = [names.index(n) for n in test]
    test_imgs = {data.images[i].numpy().tobytes() for c in test_ids for i in per_class[c]}
    for _ in range(3):
        b = src.sample(32, gen(4))
        for img in torch.cat([b.support_x, b.query_x], 1).flatten(0, 1):
            assert (img * 255).to(torch.uint8).numpy().tobytes() not in test_imgs


def test_omniglot_rotated_class_equals_rot90_of_base(omni_root: Path, tmp_path: Path) -> None:
    src = omniglot.build(omni_cfg(omni_root, tmp_path))
    b = src.sample(100, gen(), shots=19, queries=1)  # each drawn class shows all 20 images
    names = src.class_names("train")
    by_class: dict[str, set[bytes]] = {}
    imgs = torch.cat([b.support_x.view(100, 19, 3, 28, 28), b.query_x.view(100, 1, 3, 28, 28)], 1)
    for t in range(100):
        for j, c in enumerate(b.info["classes"][t].tolist()):
            by_class[names[c]] = {i.numpy().tobytes() for i in imgs[t, :, j]}
    assert len(by_class) == 40
    for name in names:
        if "@rot" not in name:
            continue
        base, _, rot = name.partition("@rot")
        base_imgs = [torch.frombuffer(bytearray(x), dtype=torch.float32).view(28, 28)
                     for x in by_class[base]]
        turned = {torch.rot90(i, int(rot) // 90).contiguous().numpy().tobytes()
                  for i in base_imgs}
        assert turned == by_class[name]
        assert turned != by_class[base]


def test_omniglot_background_split(omni_root: Path, tmp_path: Path) -> None:
    src = omniglot.build(omni_cfg(omni_root, tmp_path, split="background", val_classes=3,
                                  rotations=False))
    assert src.num_classes("train") == 9 and src.num_classes("val") == 3
    test = src.class_names("test")
    assert len(test) == 8 and all(n.startswith("Eva_") for n in test)
    assert all(n.startswith("Bac_") for n in src.class_names("train") + src.class_names("val"))


def test_omniglot_errors(omni_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(DataError) as e:
        omniglot.build(omni_cfg(missing, tmp_path))
    msg = str(e.value)
    assert str(missing) in msg and "task.download: true" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="train_classes"):
        omniglot.build(omni_cfg(omni_root, tmp_path, train_classes=30))
    with pytest.raises(DataError, match=r"val\): expected at least 5 classes .* found 4"):
        omniglot.build(omni_cfg(omni_root, tmp_path, ways=5))
    with pytest.raises(DataError, match=r"character\d\d: expected at least 21 images .* found 20"):
        omniglot.build(omni_cfg(omni_root, tmp_path, shots=1, queries=20))


def test_omniglot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    calls: list[tuple[str, str, str | None]] = []

    def fake_download(url: str, download_root: str, filename: str | None = None,
                      md5: str | None = None, **_: object) -> None:
        calls.append((url, filename or "", md5))
        set_name = Path(url).stem
        make_omniglot_part(Path(download_root), set_name)

    def make_omniglot_part(root: Path, set_name: str) -> None:
        from image_fixtures import write_omniglot_set

        first = 1 if set_name == "images_background" else 100
        write_omniglot_set(root, set_name, 1, 4, drawers=4, first_id=first)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    root = tmp_path / "omni"
    cfg = omni_cfg(root, tmp_path / "cache", download=True, train_classes=6, val_classes=2,
                   ways=2)
    src = omniglot.build(cfg)
    assert [c[0] for c in calls] == [
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip",
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip",
    ]
    assert all(c[2] for c in calls)
    assert src.num_classes("test") == 2
    omniglot.build(cfg)
    assert len(calls) == 2  # present now: not downloaded again

    def failing(url: str, *args: object, **kw: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", failing)
    with pytest.raises(DataError, match=r"could not download Omniglot .*no network"):
        omniglot.build(omni_cfg(tmp_path / "other", tmp_path / "cache", download=True))


# --------------------------------------------------------------------------- mini-ImageNet
@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("mini")
    return root, make_miniimagenet(root)


def colour_class(x: torch.Tensor) -> torch.Tensor:
    """Index in COLOURS of each solid-colour float image [..., 3, H, W]."""
    mean = x.mean(dim=(-2, -1)) * 255
    ref = torch.tensor(COLOURS, dtype=torch.float32)
    return (mean.unsqueeze(-2) - ref).abs().sum(-1).argmin(-1)


def test_miniimagenet_loader(mini_root: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, labels = mini_root
    cfg = MiniImagenetTask(root=str(root), cache_dir=str(tmp_path), ways=5, shots=1, queries=5)
    src = miniimagenet.build(cfg)
    assert src.input_shape == (3, 84, 84) and src.output_dim == 5
    for split in ("train", "val", "test"):
        assert src.class_names(split) == labels[split]
        b = src.sample(4, gen(1), split=split)
        assert b.support_x.shape == (4, 5, 3, 84, 84) and b.query_x.shape == (4, 25, 3, 84, 84)
        assert 0.0 <= float(b.support_x.min()) and float(b.support_x.max()) <= 1.0
        offset = {"train": 0, "val": 6, "test": 11}[split]
        want = b.info["classes"] + offset  # colour index of each label's class
        assert torch.equal(colour_class(b.support_x), want)
        assert torch.equal(colour_class(b.query_x), want.repeat(1, 5))
    assert miniimagenet.build(cfg).sample(4, gen(1), "test").support_x.equal(b.support_x)
    small = miniimagenet.build(cfg.model_copy(update={"image_size": 32}))
    assert small.input_shape == (3, 32, 32)


def test_miniimagenet_errors(mini_root: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, _ = mini_root

    def build(r: Path, **kw: object) -> EpisodicTasks:
        base: dict[str, object] = dict(root=str(r), cache_dir=str(tmp_path), ways=2, shots=1,
                                       queries=1)
        base.update(kw)
        return miniimagenet.build(MiniImagenetTask(**base))

    with pytest.raises(DataError, match="no such folder"):
        build(tmp_path / "absent")
    with pytest.raises(DataError, match=r"val\.csv: expected at least 6 classes .* found 5"):
        build(root, ways=6)
    with pytest.raises(DataError, match=r"train\.csv \(label n\d+\): expected at least 7 images"):
        build(root, ways=5, shots=2, queries=5)

    broken = tmp_path / "broken"
    make_miniimagenet(broken, {"train": 5, "val": 5, "test": 5}, per_class=2, size=8)
    (broken / "test.csv").unlink()
    with pytest.raises(DataError, match=r"test\.csv: expected the mini-ImageNet split file"):
        build(broken)
    (broken / "test.csv").write_text("file,class\na.jpg,n1\n")
    with pytest.raises(DataError, match=r"test\.csv: expected the header 'filename,label', "
                                        r"found 'file,class'"):
        build(broken)
    (broken / "test.csv").write_text("filename,label\nmissing.jpg,n1\n")
    with pytest.raises(DataError, match=r"missing\.jpg: expected the image listed in .*test\.csv"):
        build(broken)
    bad, *others = sorted((broken / "images").iterdir())[:4]
    bad.write_bytes(b"garbage")
    rows = [f"{p.name},n{i // 2}" for i, p in enumerate([bad, *others])]
    (broken / "test.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"{bad.name}: expected a readable image"):
        build(broken)


# --------------------------------------------------------------------------- image folder
def test_image_folder_loader(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    cfg = ImageFolderTask(root=str(root), cache_dir=str(tmp_path / "c"), ways=3, shots=2,
                          queries=2, image_size=16)
    src = image_folder.build(cfg)
    assert src.input_shape == (3, 16, 16) and src.splits == ("train", "val", "test")
    assert src.class_names("val") == ["class_05", "class_06", "class_07"]
    b = src.sample(6, gen(2), "test")
    assert torch.equal(colour_class(b.support_x), (b.info["classes"] + 8).repeat(1, 2))
    grey = image_folder.build(cfg.model_copy(update={"channels": 1}))
    assert grey.input_shape == (1, 16, 16)
    assert grey.sample(2, gen(), "train").support_x.shape == (2, 6, 1, 16, 16)
    assert image_folder.build(cfg).sample(6, gen(2), "test").support_x.equal(b.support_x)

    jpg = make_image_folder(tmp_path / "jpg", {"train": 3, "test": 3}, ext="jpg")
    src = image_folder.build(cfg.model_copy(update={"root": str(jpg)}))
    assert src.splits == ("train", "test")
    src.sample(2, gen(), "train")
    with pytest.raises(DataError) as e:
        src.sample(2, gen(), "val")
    assert str(jpg / "val") in str(e.value) and "optional" in str(e.value)


def test_image_folder_errors(tmp_path: Path) -> None:
    def build(root: Path, **kw: object) -> EpisodicTasks:
        base = dict(root=str(root), cache_dir=str(tmp_path / "c"), image_size=8)
        base.update(kw)
        return image_folder.build(ImageFolderTask(**base))

    with pytest.raises(DataError, match="no such folder"):
        build(tmp_path / "absent")
    only_train = make_image_folder(tmp_path / "a", {"train": 3})
    with pytest.raises(DataError, match=rf"{only_train / 'test'}: expected a folder of test"):
        build(only_train)
    root = make_image_folder(tmp_path / "b", {"train": 4, "test": 2}, per_class=3)
    with pytest.raises(DataError) as e:
        build(root, ways=3, shots=1, queries=1)
    assert str(e.value) == f"{root / 'test'}: expected at least 3 classes for 3-way tasks, found 2"
    with pytest.raises(DataError) as e:
        build(root, ways=2, shots=2, queries=2)
    assert str(e.value).startswith(f"{root / 'train' / 'class_00'}: expected at least 4 images")
    assert "found 3 (3 other classes too)" in str(e.value)
    (root / "test" / "class_05" / "img_0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"img_0\.png: expected a readable image"):
        build(root, ways=2, shots=1, queries=1)


# --------------------------------------------------------------------------- real Omniglot
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (REAL_OMNIGLOT / "images_background").is_dir():
        pytest.skip(f"real Omniglot not found at {REAL_OMNIGLOT} (set FEWSHOT_OMNIGLOT)")
    return tmp_path_factory.mktemp("real-cache")


def test_real_omniglot_maml_split(real_cache: Path) -> None:
    cfg = OmniglotTask(root=str(REAL_OMNIGLOT), cache_dir=str(real_cache))
    src = omniglot.build(cfg)
    assert [src.num_classes(s) for s in ("train", "val", "test")] == [4400, 100, 423]
    data, names, _, n_background, _ = omniglot.load(cfg)
    assert data.from_cache  # the build above wrote it
    assert len(names) == 1623 and n_background == 964
    assert data.images.shape == (32460, 1, 28, 28) and data.images.dtype == torch.uint8
    assert all(len(ix) == 20 for ix in data.class_indices())
    assert set(data.images.unique().tolist()) == {0, 255}
    ink = float((data.images > 0).float().mean())
    assert 0.03 < ink < 0.25, ink  # mostly background 0, strokes 1
    norot = omniglot.build(cfg.model_copy(update={"rotations": False}))
    assert norot.num_classes("train") == 1100
    b = src.sample(32, gen(), shots=1, queries=1)
    assert b.support_x.shape == (32, 5, 1, 28, 28)
    assert set(b.query_x.unique().tolist()) == {0.0, 1.0}
    assert float(b.query_x.mean()) < 0.3


def test_real_omniglot_background_split(real_cache: Path) -> None:
    cfg = OmniglotTask(root=str(REAL_OMNIGLOT), cache_dir=str(real_cache), split="background")
    src = omniglot.build(cfg)
    assert [src.num_classes(s) for s in ("train", "val", "test")] == [4 * 864, 100, 659]


def test_omniglot_per_task_rotations_turn_each_class_of_every_task(
        omni_root: Path, tmp_path: Path) -> None:
    """``rotations: per_task`` (the reference MAML): the classes are the characters alone,
    and in every task, test tasks too, each class is one rotation of its character, chosen
    at random per task."""
    cfg = omni_cfg(omni_root, tmp_path, shots=2, queries=3).model_copy(
        update={"rotations": "per_task"})
    src = omniglot.build(cfg)
    assert (src.num_classes("train"), src.num_classes("test")) == (10, 6)
    assert not any("@rot" in n for n in src.class_names("train"))
    data, names, _, _, _ = omniglot.load(cfg)
    per_class = data.class_indices()
    for split in ("train", "test"):
        b = src.sample(16, gen(5), split=split)
        split_names = src.class_names(split)
        seen_turns = set()
        for t in range(16):
            for j in range(3):
                base = data.images[per_class[names.index(
                    split_names[int(b.info["classes"][t, j])])]].float() / 255
                imgs = b.support_x[t].view(2, 3, 1, 28, 28)[:, j]
                turns = [r for r in range(4) if all(
                    any(torch.equal(img, w) for w in torch.rot90(base, r, dims=(-2, -1)))
                    for img in imgs)]
                assert turns, (split, t, j)  # every image of the class turned alike
                seen_turns.update(turns)
        assert seen_turns == {0, 1, 2, 3}, split
    # the same seed draws the same tasks
    assert torch.equal(src.sample(4, gen(9)).support_x, src.sample(4, gen(9)).support_x)
