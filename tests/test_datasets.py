"""Published splits: the shipped reference data, mini-ImageNet's split check, the pickle
converter, Omniglot's vinyals split and the data check."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from image_fixtures import (
    make_image_folder,
    make_miniimagenet,
    make_miniimagenet_pickles,
    make_omniglot,
    make_ravi_miniimagenet,
    write_miniimagenet,
    write_omniglot_characters,
)
from PIL import Image
from test_image_tasks import REAL_OMNIGLOT, real_cache  # noqa: F401 - the shared skip fixture

from fewshot_cli import datacheck
from fewshot_cli.config import ImageFolderTask, MiniImagenetTask, OmniglotTask
from fewshot_cli.errors import DataError
from fewshot_cli.tasks import convert, miniimagenet, omniglot, reference

SPLITS = ("train", "val", "test")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def omni_task(**kw: object) -> OmniglotTask:
    """An Omniglot task section; ``split="vinyals"`` bypasses validation until the schema
    accepts it."""
    values = {**OmniglotTask().model_dump(), "ways": 3, **kw}
    return OmniglotTask.model_construct(**values)


class MiniTask(MiniImagenetTask):
    """MiniImagenetTask with the proposed ``split_check`` key."""

    split_check: str = "auto"


# --------------------------------------------------------------------------- shipped data
def test_shipped_ravi_split_rebuilds_the_reference_csv_files() -> None:
    ref = reference.ravi_split()
    assert [len(ref.classes[s]) for s in SPLITS] == [64, 16, 20]
    assert len(set().union(*ref.classes.values())) == 100
    assert ref.images_per_class == 600
    assert ref.source == "twitter-research/meta-learning-lstm@0cffa24"
    assert ref.csv_paths["train"] == "data/miniImagenet/train.csv"
    for split in SPLITS:
        rows = reference.ravi_csv_rows(split)
        assert len(rows) == 600 * len(ref.classes[split])
        text = "filename,label\n" + "".join(f"{f},{label}\n" for f, label in rows)
        assert sha(text.encode()) == ref.csv_sha256[split]
        # and the converter's csv writer produces the same bytes
        assert sha(convert.csv_bytes(rows)) == ref.csv_sha256[split]
    assert reference.ravi_filenames("n01532829")[:2] == [
        "n0153282900000005.jpg", "n0153282900000006.jpg"]
    assert reference.ravi_filenames("n00000000") is None


def test_shipped_vinyals_lists_rebuild_the_reference_files() -> None:
    ref = reference.vinyals_split()
    chars = ref.characters
    assert [len(chars[s]) for s in SPLITS] == [1028, 172, 423]
    assert len(set().union(*chars.values())) == 1623
    assert ref.rotations == ("rot000", "rot090", "rot180", "rot270")
    for split in (*SPLITS, "trainval"):
        lines = reference.vinyals_lines(split)
        assert sha("".join(f"{line}\n" for line in lines).encode()) == ref.txt_sha256[split]
    assert reference.vinyals_lines("test")[:2] == [
        "Gurmukhi/character42/rot000", "Gurmukhi/character42/rot090"]


# --------------------------------------------------------------------------- mini-ImageNet check
def reference_copy(root: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """The reference csv files (no images) in ``root``; returns the split listing."""
    root.mkdir(parents=True, exist_ok=True)
    listed = {}
    for split in SPLITS:
        rows = reference.ravi_csv_rows(split)
        (root / f"{split}.csv").write_bytes(convert.csv_bytes(rows))
        listed[split] = listing(rows)
    return listed


def listing(rows: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    by: dict[str, list[str]] = {}
    for f, label in rows:
        by.setdefault(label, []).append(f)
    return list(by.items())


def write_rows(path: Path, rows: list[tuple[str, str]], newline: str = "\n") -> None:
    path.write_bytes(("filename,label" + newline + "".join(
        f"{f},{label}{newline}" for f, label in rows)).encode())


def test_compare_to_ravi(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    listed = reference_copy(root)
    assert miniimagenet.compare_to_ravi(root, listed) == []

    # Same rows, other line endings: a warning naming the reference.
    write_rows(root / "val.csv", reference.ravi_csv_rows("val"), "\r\n")
    (m,) = miniimagenet.compare_to_ravi(root, listed)
    assert m.level == "warning" and str(root / "val.csv") in m.text
    assert "same rows as other bytes" in m.text
    assert "twitter-research/meta-learning-lstm@0cffa24:data/miniImagenet/val.csv" in m.text

    # Other file names, same classes and counts (a converted copy): a warning.
    renamed = [(f"{label}{i % 600 + 1:08d}.jpg", label)
               for i, (_, label) in enumerate(reference.ravi_csv_rows("val"))]
    write_rows(root / "val.csv", renamed)
    listed["val"] = listing(renamed)
    (m,) = miniimagenet.compare_to_ravi(root, listed)
    assert m.level == "warning" and "other file names" in m.text
    reference_copy(root)

    # A test class moved into train: errors in both files, no hash warning.
    train = reference.ravi_csv_rows("train")
    test = reference.ravi_csv_rows("test")
    moved = [r for r in test if r[1] == "n01930112"]
    write_rows(root / "train.csv", train + moved)
    write_rows(root / "test.csv", [r for r in test if r[1] != "n01930112"])
    listed = {"train": listing(train + moved), "val": listing(reference.ravi_csv_rows("val")),
              "test": listing([r for r in test if r[1] != "n01930112"])}
    found = miniimagenet.compare_to_ravi(root, listed)
    assert [m.level for m in found] == ["error", "error"]
    assert found[0].text == (
        f"{root / 'train.csv'}: expected only the 64 train classes of the Ravi & Larochelle "
        "split, found class n01930112 (a test class)")
    assert found[1].text == (
        f"{root / 'test.csv'}: expected class n01930112 of the Ravi & Larochelle test split, "
        "found no rows of it (it is in train.csv)")

    # Too few images, a repeated file, a made-up class.
    listed = reference_copy(root)
    listed["train"][0] = (listed["train"][0][0], listed["train"][0][1][:599])
    files = listed["val"][1][1]
    listed["val"][1] = (listed["val"][1][0], [*files[:599], files[0]])
    listed["test"].append(("n99999999", ["x.jpg"]))
    found = miniimagenet.compare_to_ravi(root, listed)
    assert [m.text.split(": ", 1)[1] for m in found] == [
        "expected 600 images of class n01532829, found 599",
        "expected 600 distinct images of class n02091244, found 599 (some rows repeat a file)",
        "expected only the 20 test classes of the Ravi & Larochelle split, found class "
        "n99999999 (not a class of mini-ImageNet)",
    ]
    assert all(m.level == "error" for m in found)


def test_made_up_labels_load_without_the_check(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    make_miniimagenet(root)
    cfg = MiniImagenetTask(root=str(root), cache_dir=str(tmp_path / "c"), ways=5, shots=1,
                           queries=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src = miniimagenet.build(cfg)
    assert src.num_classes("train") == 6
    # split_check: on checks a copy whatever its labels.
    forced = MiniTask(**{**cfg.model_dump(), "split_check": "on"})
    with pytest.raises(DataError, match=r"train\.csv: expected class n01532829 .* \(and \d+ more"):
        miniimagenet.build(forced)


def test_real_named_copy_with_few_images_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ravi"
    make_ravi_miniimagenet(root, per_class=2, size=8)
    cfg = MiniImagenetTask(root=str(root), cache_dir=str(tmp_path / "c"), ways=2, shots=1,
                           queries=1, image_size=8)
    with pytest.raises(DataError) as e:
        miniimagenet.build(cfg)
    assert str(e.value) == (
        f"{root / 'train.csv'}: expected 600 images of class n01532829, found 2 (and 99 more "
        "differences from the Ravi & Larochelle split; fewshot data check lists them all)")
    # split_check: off loads it as it is.
    off = MiniTask(**{**cfg.model_dump(), "split_check": "off"})
    assert miniimagenet.build(off).num_classes("test") == 20


def tiny_reference(monkeypatch: pytest.MonkeyPatch, root: Path,
                   labels: dict[str, list[str]]) -> None:
    """Make the fixture copy at ``root`` the reference split."""
    rows = {s: miniimagenet.read_split_csv(root / f"{s}.csv") for s in SPLITS}
    ref = reference.RaviSplit(
        classes={s: tuple(labels[s]) for s in SPLITS}, images_per_class=3,
        csv_sha256={s: sha((root / f"{s}.csv").read_bytes()) for s in SPLITS},
        csv_paths={s: f"{s}.csv" for s in SPLITS}, source="tiny@0000000")
    monkeypatch.setattr(reference, "ravi_split", lambda: ref)
    monkeypatch.setattr(reference, "ravi_csv_rows", lambda split: rows[split])


def test_split_check_in_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "mini"
    labels = write_miniimagenet(root, {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"],
                                       "test": ["n06", "n07"]}, per_class=3, size=8)
    tiny_reference(monkeypatch, root, labels)
    cfg = MiniImagenetTask(root=str(root), cache_dir=str(tmp_path / "c"), ways=2, shots=1,
                           queries=2, image_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert miniimagenet.build(cfg).class_names("val") == ["n04", "n05"]
    # A re-saved file (CRLF) warns once and loads.
    write_rows(root / "test.csv", miniimagenet.read_split_csv(root / "test.csv"), "\r\n")
    with pytest.warns(UserWarning) as record:
        miniimagenet.build(cfg)
    assert len(record) == 1 and "test.csv: expected SHA-256" in str(record[0].message)
    assert "same rows as other bytes" in str(record[0].message)
    # One image too few is an error, before anything is decoded.
    rows = miniimagenet.read_split_csv(root / "train.csv")
    write_rows(root / "train.csv", rows[1:])
    with pytest.raises(DataError, match=r"train\.csv: expected 3 images of class n01, found 2$"):
        miniimagenet.build(cfg)


# --------------------------------------------------------------------------- converter
FAKE = {"train": ["n90000001", "n90000002", "n90000003"], "val": ["n90000004", "n90000005"],
        "test": ["n90000006", "n90000007"]}


@pytest.mark.parametrize("py2", [False, True])
def test_convert_pickles_exactly_as_png(tmp_path: Path, py2: bool) -> None:
    data = make_miniimagenet_pickles(tmp_path / "pkl", FAKE, per_class=4, py2=py2)
    dest = tmp_path / "out"
    lines = convert.convert_miniimagenet(tmp_path / "pkl", dest, image_format="png")
    assert lines[0] == f"train: 3 classes, 12 images (84x84) -> {dest / 'train.csv'}"
    for split in SPLITS:
        rows = miniimagenet.read_split_csv(dest / f"{split}.csv")
        assert [r[1] for r in rows] == [w for w in FAKE[split] for _ in range(4)]
        assert rows[1][0] == f"{FAKE[split][0]}00000002.png"
        class_dict = data[split]["class_dict"]
        for k, (name, wnid) in enumerate(rows):
            index = class_dict[wnid][k % 4]
            got = np.asarray(Image.open(dest / "images" / name))
            assert np.array_equal(got, data[split]["image_data"][index])
    cfg = MiniImagenetTask(root=str(dest), cache_dir=str(tmp_path / "c"), ways=2, shots=2,
                           queries=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src = miniimagenet.build(cfg)
    assert src.input_shape == (3, 84, 84) and src.class_names("train") == FAKE["train"]


def test_convert_jpeg_and_reference_names(tmp_path: Path) -> None:
    data = make_miniimagenet_pickles(tmp_path / "pkl", FAKE, per_class=3)
    dest = tmp_path / "out"
    convert.convert_miniimagenet(tmp_path / "pkl", dest, workers=1)
    name, wnid = miniimagenet.read_split_csv(dest / "val.csv")[0]
    assert name == "n9000000400000001.jpg" and wnid == "n90000004"
    got = np.asarray(Image.open(dest / "images" / name)).astype(int)
    want = data["val"]["image_data"][data["val"]["class_dict"][wnid][0]].astype(int)
    assert np.abs(got - want).mean() < 2.0
    with pytest.raises(DataError, match=r"out: expected a new or empty folder, found train\.csv, "
                                        r"val\.csv, test\.csv"):
        convert.convert_miniimagenet(tmp_path / "pkl", dest)
    convert.convert_miniimagenet(tmp_path / "pkl", dest, overwrite=True)
    # A class of the reference with its 600 images gets the reference's file names, so a
    # full split's csv file is the reference's, byte for byte.
    ref = reference.ravi_split()
    classes = {w: list(range(k * 600, (k + 1) * 600)) for k, w in enumerate(ref.classes["val"])}
    rows, jobs = convert.split_rows(dict(reversed(classes.items())))
    assert sha(convert.csv_bytes(rows)) == ref.csv_sha256["val"]
    assert jobs[0] == (0, "n0185567200000003.jpg")
    # ... and with fewer images, names by position.
    rows, _ = convert.split_rows({"n01855672": [5, 6]})
    assert rows == [("n0185567200000001.jpg", "n01855672"), ("n0185567200000002.jpg", "n01855672")]


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch pwned",))


def test_convert_refuses_wrong_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "pkl"
    make_miniimagenet_pickles(src, FAKE, per_class=2, size=8)
    path = src / "mini-imagenet-cache-val.pkl"
    dest = tmp_path / "out"
    monkeypatch.chdir(tmp_path)

    def fails(match: str) -> None:
        with pytest.raises(DataError, match=match) as e:
            convert.convert_miniimagenet(src, dest)
        assert "\n" not in str(e.value)
        assert not (dest / "train.csv").exists()

    path.write_bytes(pickle.dumps({"image_data": Exploit(), "class_dict": {}}))
    fails(r"val\.pkl: expected a mini-ImageNet pickle .* holding only numpy arrays, found a "
          r"reference to posix\.system \(refused: unpickling it could run code\)")
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(pickle.dumps([1, 2]))
    fails(r"val\.pkl: expected a mini-ImageNet pickle .*, found a list$")
    path.write_bytes(pickle.dumps({"images": 1}))
    fails(r"found a dict with keys images$")
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 8, 8, 3)), "class_dict": {"a": [0]}}))
    fails(r"expected image_data a uint8 array \[N, H, W, 3\], found float64 \[2, 8, 8, 3\]")
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 8, 8, 3), np.uint8),
                                   "class_dict": {"a": [0, 5]}}))
    fails(r"expected class_dict\['a'\] to hold distinct indices below 2, found index 5 "
          r"\(out of range\)")
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 8, 8, 3), np.uint8),
                                   "class_dict": {"a": [0], "b": [1, 0]}}))
    fails(r"expected class_dict\['b'\] to hold distinct indices below 2, found index 0 "
          r"\(used twice\)")
    path.write_bytes(b"\x80\x04garbage")
    fails(r"val\.pkl: expected a mini-ImageNet pickle .*, found pickle data was truncated$")
    path.unlink()
    fails(r"pkl: expected mini-imagenet-cache-train\.pkl, .*, found no mini-imagenet-cache-val")
    with pytest.raises(DataError, match="found no such folder"):
        convert.convert_miniimagenet(tmp_path / "absent", dest)
    # Pickles whose classes are another split's (swapped files): refused.
    ref = reference.ravi_split()
    make_miniimagenet_pickles(src, {"train": list(ref.classes["train"])[:3],
                                    "val": list(ref.classes["test"]),
                                    "test": list(ref.classes["val"])}, per_class=1, size=4)
    fails(r"val\.pkl: expected the 16 val classes of the Ravi & Larochelle split, found exactly "
          r"its 20 test classes \(the file names are swapped; rename the file to "
          r"mini-imagenet-cache-test\.pkl\)")


# --------------------------------------------------------------------------- vinyals split
def small_vinyals(monkeypatch: pytest.MonkeyPatch, characters: dict[str, list[str]]) -> None:
    ref = reference.VinyalsSplit(
        characters={s: tuple(characters[s]) for s in SPLITS},
        rotations=("rot000", "rot090", "rot180", "rot270"), txt_sha256={}, source="tiny@0")
    monkeypatch.setattr(reference, "vinyals_split", lambda: ref)


def test_vinyals_split_on_a_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_omniglot_characters(tmp_path / "omni", {
        "images_background": ["Bac_A/character01", "Bac_A/character02", "Bac_B/character01",
                              "Bac_B/character02"],
        "images_evaluation": ["Eva_C/character01", "Eva_C/character02", "Eva_C/character03"],
    }, drawers=3)
    split = {"train": ["Bac_B/character02", "Eva_C/character03", "Bac_A/character01"],
             "val": ["Bac_A/character02", "Eva_C/character01"],
             "test": ["Eva_C/character02", "Bac_B/character01"]}
    small_vinyals(monkeypatch, split)
    cfg = omni_task(root=str(root), cache_dir=str(tmp_path / "c"), split="vinyals", ways=2,
                    shots=1, queries=2)
    src = omniglot.build(cfg)
    # Every split in four rotations, in the lists' order.
    assert src.class_names("train")[:5] == [
        "Bac_B/character02", "Bac_B/character02@rot90", "Bac_B/character02@rot180",
        "Bac_B/character02@rot270", "Eva_C/character03"]
    assert [src.num_classes(s) for s in SPLITS] == [12, 8, 8]
    assert src.class_names("test")[4] == "Bac_B/character01"
    # Rotated classes really are rotations of their character, in val and test too.
    data, names, _, _, _ = omniglot.load(cfg)
    per_class = data.class_indices()
    b = src.sample(40, torch.Generator().manual_seed(0), "test")
    for t in range(40):
        for j, c in enumerate(b.info["classes"][t].tolist()):
            base, _, rot = src.class_names("test")[c].partition("@rot")
            want = torch.rot90(data.images[per_class[names.index(base)]].float() / 255,
                               int(rot or 0) // 90, dims=(-2, -1))
            img = b.support_x[t, j]
            assert any(torch.equal(img, w) for w in want)
    norot = omniglot.build(cfg.model_copy(update={"rotations": False}))
    assert [norot.num_classes(s) for s in SPLITS] == [3, 2, 2]
    assert norot.class_names("val") == split["val"]
    # The data check agrees.
    report = datacheck.check(cfg)
    assert report.ok
    assert "info: vinyals split, test: 8 classes (2 characters x 4 rotations)" in report.lines()
    # A missing character is a DataError naming it.
    small_vinyals(monkeypatch, {**split, "test": ["Eva_C/character02", "Eva_D/character01",
                                                  "Eva_D/character02"]})
    with pytest.raises(DataError) as e:
        omniglot.build(cfg)
    assert str(e.value) == (f"{root}: expected the 3 test characters of the vinyals split "
                            "(tiny@0), found no Eva_D/character01 (and 1 more)")
    report = datacheck.check(cfg)
    assert not report.ok and str(e.value) in "\n".join(report.lines())


def test_real_omniglot_vinyals_split(real_cache: Path) -> None:  # noqa: F811
    cfg = omni_task(root=str(REAL_OMNIGLOT), cache_dir=str(real_cache), split="vinyals", ways=5)
    _, names, _ = omniglot.scan(omniglot.locate(cfg.root))
    split = omniglot.split_classes(cfg, names, 964)
    assert [len(split[s]) for s in SPLITS] == [1028, 172, 423]
    assert sorted(i for s in SPLITS for i in split[s]) == list(range(1623))
    # Test characters all come from images_evaluation; train draws on both folders.
    assert min(split["test"]) >= 964
    assert any(i < 964 for i in split["train"]) and any(i >= 964 for i in split["train"])
    src = omniglot.build(cfg)
    assert [src.num_classes(s) for s in SPLITS] == [4112, 688, 1692]
    for s in SPLITS:  # the class list is the published list, line by line
        as_lines = [n.replace("@rot", "/rot") for n in src.class_names(s)]
        want = [line.replace("/rot000", "").replace("/rot0", "/rot")
                for line in reference.vinyals_lines(s)]
        assert as_lines == want
    b = src.sample(8, torch.Generator().manual_seed(0), "test", shots=1, queries=1)
    assert b.support_x.shape == (8, 5, 1, 28, 28)


# --------------------------------------------------------------------------- data check
def test_datacheck_real_omniglot(real_cache: Path) -> None:  # noqa: F811
    report = datacheck.check(OmniglotTask(root=str(REAL_OMNIGLOT)))
    assert report.ok and report.count("warning") == 0, report.lines()
    lines = report.lines()
    assert f"ok: {REAL_OMNIGLOT / 'images_background'}: 30 alphabets, 964 characters " \
           "(as published)" in lines
    assert f"ok: {REAL_OMNIGLOT / 'images_evaluation'}: 20 drawings per character" in lines
    assert lines[-1] == f"omniglot at {REAL_OMNIGLOT}: as expected"


def test_datacheck_omniglot_fixture(tmp_path: Path) -> None:
    root = make_omniglot(tmp_path / "omni", drawers=4, size=30)
    task = OmniglotTask(root=str(root), train_classes=14, val_classes=4, ways=5, shots=2,
                        queries=3)
    report = datacheck.check(task)
    lines = report.lines()
    assert not report.ok
    assert f"warning: {root / 'images_background'}: 3 alphabets, 12 characters; expected 964 " \
           "characters as published" in lines
    assert any(line.startswith("warning: ") and "expected 20 drawings as published, found 4 "
               "(11 other characters too)" in line for line in lines)
    assert any("12 of 30x30, PIL mode 1; expected 105x105, PIL mode 1 as published" in line
               for line in lines)
    assert any(line.startswith("error: ") and "expected at least 5 images per class" in line
               for line in lines)
    assert lines[-1].startswith(f"omniglot at {root}: ") and "error(s)" in lines[-1]
    # A missing folder: an error, or a warning when task.download would fetch it.
    gone = OmniglotTask(root=str(tmp_path / "none"))
    assert not datacheck.check(gone).ok
    later = datacheck.check(gone.model_copy(update={"download": True}))
    assert later.ok and later.count("warning") == 1


def test_datacheck_miniimagenet(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    make_miniimagenet(root, per_class=6)
    cfg = MiniImagenetTask(root=str(root), ways=5, shots=1, queries=5)
    report = datacheck.check(cfg)
    assert report.ok, report.lines()
    assert f"info: {root / 'train.csv'}: 6 classes, 6 images each" in report.lines()
    assert any("split check is skipped" in line for line in report.lines())
    assert not datacheck.check(cfg.model_copy(update={"ways": 6})).ok  # val has 5 classes

    ravi = tmp_path / "ravi"
    make_ravi_miniimagenet(ravi, per_class=2, size=8)
    (ravi / "images" / "n0153282900000001.jpg").unlink()
    report = datacheck.check(MiniImagenetTask(root=str(ravi), ways=5, shots=1, queries=1))
    errors = [line for line in report.lines() if line.startswith("error: ")]
    assert errors[0] == (f"error: {ravi / 'images' / 'n0153282900000001.jpg'}: expected the "
                         f"image listed in {ravi / 'train.csv'}, found no such file")
    assert f"error: {ravi / 'test.csv'}: expected 600 images of class n01930112, found 2" in errors
    assert len(errors) == 1 + 100  # the missing image, one line per class short of 600

    assert not datacheck.check(MiniImagenetTask(root=str(tmp_path / "absent"))).ok


def test_datacheck_image_folder_and_sinusoid(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", {"train": 4, "test": 3}, per_class=3)
    report = datacheck.check(ImageFolderTask(root=str(root), ways=3, shots=1, queries=2))
    assert report.ok
    lines = report.lines()
    assert f"info: {root / 'val'}: absent (optional; validation is not possible)" in lines
    assert f"info: {root / 'train'}: 4 classes, 3 images each" in lines
    assert ("info: train images: 4 images read (the first of each class): 4 of 20x20, "
            "PIL mode RGB") in lines
    every = datacheck.check(ImageFolderTask(root=str(root)), every_image=True).lines()
    assert ("info: train images: 12 images read: 4 of 20x20, PIL mode RGB, 4 of 21x20, "
            "PIL mode RGB, 4 of 22x20, PIL mode RGB") in every
    bad = datacheck.check(ImageFolderTask(root=str(root), ways=4, shots=1, queries=1))
    assert [line for line in bad.lines() if line.startswith("error")] == [
        f"error: {root / 'test'}: expected at least 4 classes for 4-way tasks, found 3"]
    (root / "test" / "class_04" / "img_0.png").write_bytes(b"broken")
    broken = datacheck.check(ImageFolderTask(root=str(root), ways=2, shots=1, queries=1))
    assert any("img_0.png: expected a readable image" in line for line in broken.lines())

    class Sine:
        kind = "sinusoid"

    assert datacheck.check(Sine()).lines() == [
        "info: sinusoid tasks are generated: there is no data to check", "sinusoid: as expected"]
