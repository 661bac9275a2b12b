"""Exports of the repaired labels: every box of every split, atomic writes, the CLI, and a TensorFlow read-back."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO
from voc_factory import VOCFolder

from bloodcell import boxes as box_ops
from bloodcell.cli import main
from bloodcell.data import export as export_module
from bloodcell.data.export import FORMATS, MARK, export_dataset
from bloodcell.data.exports import csvfile, tfrecord
from bloodcell.data.voc import VOCDataset, load_voc
from bloodcell.errors import ConfigError, DatasetError
from bloodcell.types import CLASS_NAMES

SPLITS = ("train", "val", "test")
BCCD_IMAGES = {"train": 205, "val": 87, "test": 72}
BCCD_BOXES = {"RBC": 4146, "WBC": 372, "Platelets": 361}  # all three splits, after repair
READBACK = Path(__file__).with_name("tfrecord_readback.py")


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bccd(bccd_root: Path) -> dict[str, VOCDataset]:
    datasets = {split: load_voc(bccd_root, split=split) for split in SPLITS}
    assert {s: len(d) for s, d in datasets.items()} == BCCD_IMAGES
    assert sum((Counter(d.box_counts()) for d in datasets.values()), Counter()) == BCCD_BOXES
    return datasets


@pytest.fixture(scope="module")
def exported(bccd_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Export BCCD once per format for the whole module (each export reads all 364 images)."""
    outs: dict[str, Path] = {}

    def get(fmt: str) -> Path:
        if fmt not in outs:
            outs[fmt] = tmp_path_factory.mktemp(fmt)
            export_dataset(bccd_root, fmt, outs[fmt])
        return outs[fmt]

    return get


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """Non-integral coordinates, an image without boxes; train/val hold two images so a failure can hit mid-split."""
    voc = VOCFolder(tmp_path / "voc")
    voc.add("a", [("RBC", (10.5, 2, 30.25, 20)), ("Platelets", (1, 1, 5, 5))])
    voc.add("b", [("WBC", (20, 10, 60, 44))])
    voc.add("empty", [])
    voc.write_split("train", ["a", "b"])
    voc.write_split("val", ["a", "empty"])
    voc.write_split("test", ["empty"])
    return voc.root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- csv ------------------------------------------------------------------------------------------------------


def test_csv_has_one_row_per_box_with_the_xml_numbers(exported: Callable[[str], Path], bccd: dict) -> None:
    out = exported("csv")
    assert sorted(p.name for p in out.iterdir()) == [MARK, "test.csv", "train.csv", "val.csv"]
    totals: Counter[str] = Counter()
    for split, dataset in bccd.items():
        with (out / f"{split}.csv").open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            assert tuple(next(reader)) == csvfile.HEADER
            rows = list(reader)
        expected = [
            [r.image_path.name, "640", "480", CLASS_NAMES[label], *(str(int(v)) for v in box)]  # BCCD: whole pixels
            for r in dataset.records
            for box, label in zip(r.boxes, r.labels, strict=True)
        ]
        assert rows == expected
        assert len({row[0] for row in rows}) == BCCD_IMAGES[split]
        totals.update(row[3] for row in rows)
    assert totals == BCCD_BOXES


def test_csv_writes_fractions_only_where_the_xml_has_them(tiny_voc: Path, tmp_path: Path) -> None:
    export_dataset(tiny_voc, "csv", tmp_path / "out", splits=["train"])
    text = (tmp_path / "out" / "train.csv").read_text(encoding="utf-8")
    assert text.splitlines()[1:] == [
        "a.jpg,64,48,RBC,10.5,2,30.25,20",
        "a.jpg,64,48,Platelets,1,1,5,5",
        "b.jpg,64,48,WBC,20,10,60,44",
    ]


# --- coco -----------------------------------------------------------------------------------------------------


def test_coco_loads_in_pycocotools_with_every_box(exported: Callable[[str], Path], bccd: dict) -> None:
    out = exported("coco")
    totals: Counter[str] = Counter()
    for split, dataset in bccd.items():
        coco = COCO(str(out / f"{split}.json"))
        assert len(coco.getImgIds()) == BCCD_IMAGES[split]
        categories = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"]) for c in categories] == [(1, "RBC"), (2, "WBC"), (3, "Platelets")]
        for record, image in zip(dataset.records, coco.loadImgs(coco.getImgIds()), strict=True):
            assert (image["file_name"], image["width"], image["height"]) == (record.image_path.name, 640, 480)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            np.testing.assert_allclose(box_ops.xywh_to_xyxy([a["bbox"] for a in anns]), record.boxes.reshape(-1, 4))
            np.testing.assert_allclose([a["area"] for a in anns], box_ops.area(record.boxes))
            assert [a["category_id"] - 1 for a in anns] == record.labels.tolist()
            assert all(a["iscrowd"] == 0 for a in anns)
        totals.update(CLASS_NAMES[a["category_id"] - 1] for a in coco.dataset["annotations"])
    assert totals == BCCD_BOXES


def test_coco_keeps_images_without_boxes(tiny_voc: Path, tmp_path: Path) -> None:
    export_dataset(tiny_voc, "coco", tmp_path, splits=["val"])
    data = json.loads((tmp_path / "val.json").read_text(encoding="utf-8"))
    assert [i["file_name"] for i in data["images"]] == ["a.jpg", "empty.jpg"]
    assert [a["bbox"] for a in data["annotations"]] == [[10.5, 2, 19.75, 18], [1, 1, 4, 4]]
    assert {a["image_id"] for a in data["annotations"]} == {1}


# --- yolo -----------------------------------------------------------------------------------------------------


def _yolo_boxes(label_file: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(label_file, ndmin=2).reshape(-1, 5)
    xyxy = box_ops.cxcywh_to_xyxy(box_ops.denormalize(rows[:, 1:], width, height))
    return xyxy, rows[:, 0].astype(np.int64)


def test_yolo_layout_labels_and_data_yaml(exported: Callable[[str], Path], bccd: dict) -> None:
    out = exported("yolo")
    data = yaml.safe_load((out / "data.yaml").read_text(encoding="utf-8"))
    assert data == {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": {0: "RBC", 1: "WBC", 2: "Platelets"},
    }
    totals: Counter[str] = Counter()
    for split, dataset in bccd.items():
        assert len(list((out / "images" / split).iterdir())) == BCCD_IMAGES[split]
        assert len(list((out / "labels" / split).iterdir())) == BCCD_IMAGES[split]
        for record in dataset.records:
            image = out / "images" / split / f"{record.image_id}.jpg"
            assert image.read_bytes() == record.image_path.read_bytes()
            boxes, labels = _yolo_boxes(out / "labels" / split / f"{record.image_id}.txt", 640, 480)
            np.testing.assert_allclose(boxes, record.boxes, atol=1e-3)  # 6 decimals of 640 px
            assert labels.tolist() == record.labels.tolist()
            totals.update(CLASS_NAMES[i] for i in labels)
    assert totals == BCCD_BOXES


def test_yolo_line_format_and_empty_label_file(tiny_voc: Path, tmp_path: Path) -> None:
    export_dataset(tiny_voc, "yolo", tmp_path, splits=["val"])
    assert (tmp_path / "labels" / "val" / "a.txt").read_text(encoding="utf-8").splitlines() == [
        "0 0.318359 0.229167 0.308594 0.375000",
        "2 0.046875 0.062500 0.062500 0.083333",
    ]
    assert (tmp_path / "labels" / "val" / "empty.txt").read_text(encoding="utf-8") == ""


def test_yolo_images_of_symlinked_jpegs_are_the_files_themselves(tmp_path: Path) -> None:
    """JPEGImages/x.jpg -> ../../pool/x.jpg (relative): the export's image is the pooled file, not a
    link to the symlink (which dangles once it sits in another folder)."""
    voc = VOCFolder(tmp_path / "ds")
    voc.add("a", [("RBC", (10, 10, 40, 40))])
    pool = tmp_path / "pool"
    pool.mkdir()
    image = voc.root / "JPEGImages" / "a.jpg"
    image.rename(pool / "a.jpg")
    image.symlink_to(Path("../../pool/a.jpg"))
    export_dataset(voc.root, "yolo", tmp_path / "out")
    exported = tmp_path / "out" / "images" / "all" / "a.jpg"
    assert not exported.is_symlink() and exported.read_bytes() == (pool / "a.jpg").read_bytes()
    Image.open(exported).verify()


def test_yolo_data_yaml_of_a_folder_without_splits_names_train_and_val(tmp_path: Path) -> None:
    voc = VOCFolder(tmp_path / "voc")
    voc.add("a")
    export_dataset(voc.root, "yolo", tmp_path / "out")
    data = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text(encoding="utf-8"))
    # Ultralytics' check_det_dataset requires both keys; without split lists both are every image
    assert (data["train"], data["val"], data["all"]) == ("images/all", "images/all", "images/all")
    assert (tmp_path / "out" / "labels" / "all" / "a.txt").is_file()


def test_yolo_reexport_of_one_split_keeps_the_others_and_the_source(tiny_voc: Path, tmp_path: Path) -> None:
    export_dataset(tiny_voc, "yolo", tmp_path)
    export_dataset(tiny_voc, "yolo", tmp_path, splits=["val"])  # replaces images/val: links go, sources stay
    data = yaml.safe_load((tmp_path / "data.yaml").read_text(encoding="utf-8"))
    assert [k for k in data if k.startswith(("train", "val", "test"))] == ["train", "val", "test"]
    assert sorted(p.name for p in (tiny_voc / "JPEGImages").iterdir()) == ["a.jpg", "b.jpg", "empty.jpg"]
    assert (tmp_path / "images" / "val" / "a.jpg").read_bytes() == (tiny_voc / "JPEGImages" / "a.jpg").read_bytes()


# --- tfrecord -------------------------------------------------------------------------------------------------


def _read_frames(path: Path) -> list[bytes]:
    """Split a TFRecord file into messages, checking both masked CRCs of each record."""
    data, pos, messages = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[pos + 8 : pos + 12])
        message = data[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert (length_crc, data_crc) == (tfrecord.masked_crc32c(header), tfrecord.masked_crc32c(message))
        messages.append(message)
        pos += 16 + length
    return messages


@pytest.mark.parametrize("crc32c", [tfrecord.crc32c, tfrecord.crc32c_python], ids=["default", "python"])
def test_crc32c_matches_published_check_values(crc32c) -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43


def test_crc32c_with_google_crc32c_gives_identical_bytes(tiny_voc: Path, tmp_path: Path, monkeypatch) -> None:
    """google-crc32c (C) is used when installed; the plain-Python fallback must write the very same files."""
    pytest.importorskip("google_crc32c")
    assert tfrecord._native is not None
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 63, 64, 4095, 100_003):
        data = rng.bytes(n)
        assert tfrecord.crc32c(data) == tfrecord.crc32c_python(data), n
    native = export_dataset(tiny_voc, "tfrecord", tmp_path / "native", splits=["train", "val"])
    monkeypatch.setattr(tfrecord, "_native", None)
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    python = export_dataset(tiny_voc, "tfrecord", tmp_path / "python", splits=["train", "val"])
    assert [p.name for p in native] == [p.name for p in python]
    for a, b in zip(native, python, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_tfrecord_one_framed_example_per_image_and_label_map(exported: Callable[[str], Path]) -> None:
    out = exported("tfrecord")
    expected = [MARK, "label_map.pbtxt", *(f"{s}.tfrecord" for s in sorted(SPLITS))]
    assert sorted(p.name for p in out.iterdir()) == expected
    for split, n_images in BCCD_IMAGES.items():
        assert len(_read_frames(out / f"{split}.tfrecord")) == n_images
    assert (out / "label_map.pbtxt").read_text(encoding="utf-8").splitlines() == [
        *("item {", "  id: 1", "  name: 'RBC'", "}"),
        *("item {", "  id: 2", "  name: 'WBC'", "}"),
        *("item {", "  id: 3", "  name: 'Platelets'", "}"),
    ]


def test_tfrecord_image_is_the_file_or_lossless_png(tmp_path: Path) -> None:
    Image.new("RGB", (4, 3), (1, 2, 3)).save(tmp_path / "x.bmp")
    Image.new("RGB", (4, 3), (1, 2, 3)).save(tmp_path / "x.jpg")
    data, fmt = tfrecord.encoded_image(tmp_path / "x.bmp")
    assert fmt == b"png"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.bmp")), np.asarray(Image.open(io.BytesIO(data))))
    assert tfrecord.encoded_image(tmp_path / "x.jpg") == ((tmp_path / "x.jpg").read_bytes(), b"jpeg")


def test_tfrecord_image_of_a_turned_photo_is_its_pixels_as_shown(tmp_path: Path) -> None:
    """TensorFlow's decoders ignore EXIF; the boxes are in the turned frame: the record holds the turned pixels."""
    from bloodcell.runtime.images import load_image

    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90°
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :16] = (200, 30, 40)  # a band that says which way up it is
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    data, fmt = tfrecord.encoded_image(tmp_path / "turned.jpg")
    assert fmt == b"png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), load_image(tmp_path / "turned.jpg"))


def _tensorflow_python() -> str:
    """The interpreter that has TensorFlow (``make setup-dev`` installs the ``tf`` extra into the venv)."""
    if importlib.util.find_spec("tensorflow") is None:
        reason = "tensorflow is not installed; `make setup-dev` installs it (extra 'tf')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: the TFRecord read-back must run in CI")
        pytest.skip(reason)
    return sys.executable


def _assert_matches(parsed: list[dict], dataset: VOCDataset) -> Counter[str]:
    assert len(parsed) == len(dataset.records)
    totals: Counter[str] = Counter()
    for row, record in zip(parsed, dataset.records, strict=True):
        name = record.image_path.name
        assert (row["image/filename"], row["image/source_id"], row["image/format"]) == (name, name, "jpeg")
        assert (row["image/height"], row["image/width"]) == (record.height, record.width)
        assert row["decoded_shape"] == [record.height, record.width, 3]
        assert row["encoded_sha256"] == hashlib.sha256(record.image_path.read_bytes()).hexdigest()
        normalized = np.array([row[f"image/object/bbox/{k}"] for k in ("xmin", "ymin", "xmax", "ymax")]).T
        boxes = box_ops.denormalize(normalized, record.width, record.height)
        np.testing.assert_allclose(boxes, record.boxes.reshape(-1, 4), atol=1e-3)
        assert row["image/object/class/label"] == (record.labels + 1).tolist()
        assert row["image/object/class/text"] == [dataset.class_names[i] for i in record.labels]
        assert row["image/object/difficult"] == record.difficult.astype(int).tolist()
        totals.update(row["image/object/class/text"])
    return totals


def test_tfrecord_reads_back_with_tensorflow(
    exported: Callable[[str], Path], bccd: dict, tiny_voc: Path, tmp_path: Path
) -> None:
    python = _tensorflow_python()
    out = exported("tfrecord")
    export_dataset(tiny_voc, "tfrecord", tmp_path, splits=["val"])  # an image with no boxes: empty lists
    files = [out / f"{split}.tfrecord" for split in SPLITS] + [tmp_path / "val.tfrecord"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [python, str(READBACK), *map(str, files)], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout)
    totals = sum((_assert_matches(parsed[str(out / f"{s}.tfrecord")], bccd[s]) for s in SPLITS), Counter())
    assert totals == BCCD_BOXES
    _assert_matches(parsed[str(tmp_path / "val.tfrecord")], load_voc(tiny_voc, split="val"))


# --- export_dataset and the CLI ---------------------------------------------------------------------------------


def test_unknown_format_is_a_config_error_and_writes_nothing(tiny_voc: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown export format 'parquet'; choose one of: csv, coco, yolo, tfrecord"):
        export_dataset(tiny_voc, "parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_split_fails_before_anything_is_written(tiny_voc: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nosuch\.txt"):
        export_dataset(tiny_voc, "csv", tmp_path / "out", splits=["val", "nosuch"])
    assert not (tmp_path / "out").exists()


def test_default_splits_are_those_the_dataset_has(tiny_voc: Path, tmp_path: Path) -> None:
    """A lab's own folder with train and val only exports both; one without split files exports "all"."""
    (tiny_voc / "ImageSets" / "Main" / "test.txt").unlink()
    assert export_dataset(tiny_voc, "coco", tmp_path / "out") == [
        tmp_path / "out" / f"{s}.json" for s in ("train", "val")
    ]
    shutil.rmtree(tiny_voc / "ImageSets")
    [everything] = export_dataset(tiny_voc, "coco", tmp_path / "all")
    assert everything == tmp_path / "all" / "all.json"
    assert len(json.loads(everything.read_text())["images"]) == 3


def test_export_into_an_existing_folder_keeps_other_files(tiny_voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    paths = export_dataset(tiny_voc, "coco", out, splits=["test", "test"])
    assert paths == [out / "test.json"]
    assert sorted(p.name for p in out.iterdir()) == [MARK, "notes.txt", "test.json"]
    with pytest.raises(ConfigError, match="not a folder"):
        export_dataset(tiny_voc, "coco", out / "notes.txt")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_an_export_never_mixes_two_datasets_splits(fmt: str, tiny_voc: Path, tmp_path: Path) -> None:
    """Another dataset's export in the same format (its test split would stay, and a YOLO data.yaml list it as
    this one's) is refused before anything is written; the same data's adds splits; other formats coexist."""
    other = VOCFolder(tmp_path / "other")
    other.add("x")
    other.write_split("val", ["x"])
    out = tmp_path / "out"
    export_dataset(tiny_voc, fmt, out)  # train, val, test
    before = _files(out)
    with pytest.raises(ConfigError, match=f"holds an export of {tiny_voc.resolve()} in {fmt} format") as info:
        export_dataset(other.root, fmt, out)
    assert "into a new or empty folder" in str(info.value) and _files(out) == before
    export_dataset(tiny_voc, fmt, out, splits=["val"])  # the same data: fine
    another = "csv" if fmt != "csv" else "coco"
    export_dataset(other.root, another, out)  # another format beside it: fine
    assert json.loads((out / MARK).read_text(encoding="utf-8")) == {
        fmt: {"source": str(tiny_voc.resolve()), "splits": ["test", "train", "val"]},
        another: {"source": str(other.root.resolve()), "splits": ["val"]},
    }
    folds = tmp_path / "folds"  # a split of any name that an export recorded counts as that data's too
    export_dataset(tiny_voc, fmt, folds, splits=["val"])
    (folds / MARK).write_text(json.dumps({fmt: {"source": "/elsewhere", "splits": ["fold[1]", "val"]}}))
    with pytest.raises(ConfigError, match="holds an export of /elsewhere"):
        export_dataset(tiny_voc, fmt, folds, splits=["train"])
    unknown = tmp_path / "unknown"  # a split's file of the format that no export recorded: whose, unknown
    unknown.mkdir()
    (unknown / {"csv": "test.csv", "coco": "val.json", "yolo": "data.yaml", "tfrecord": "test.tfrecord"}[fmt]).touch()
    with pytest.raises(ConfigError, match="holds files with no record of their data"):
        export_dataset(tiny_voc, fmt, unknown)
    mine = tmp_path / "mine"  # a lab's own files named otherwise (a predict CSV, a val --json) are no export
    mine.mkdir()
    (mine / "counts.csv").touch(), (mine / "results.json").touch()
    export_dataset(tiny_voc, fmt, mine)


class _Exploding:
    """A record whose every attribute fails, as a full disk or unreadable image would mid-export."""

    def __getattr__(self, name: str) -> None:
        raise OSError("simulated failure mid-export")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_failure_mid_export_leaves_no_partial_file(
    fmt: str, tiny_voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load_with_a_bad_val_record(root: Path, split: str, class_names: tuple[str, ...]) -> VOCDataset:
        dataset = load_voc(root, split=split, class_names=class_names)
        if split == "val":
            dataset.records.insert(1, _Exploding())  # type: ignore[arg-type]  # after one good record
        return dataset

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(export_module, "load_dataset", load_with_a_bad_val_record)
        with pytest.raises(OSError, match="simulated"):
            export_dataset(tiny_voc, fmt, out)
    written = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    assert any("train" in name for name in written), "train is written before val fails"
    assert not [name for name in written if "/." in f"/{name}"], f"temporary files left: {written}"
    assert not [name for name in written if "val" in name or "test" in name], written
    assert json.loads((out / MARK).read_text(encoding="utf-8")) == {  # the splits it finished, no more
        fmt: {"source": str(tiny_voc.resolve()), "splits": ["train"]}
    }
    if fmt in ("yolo", "tfrecord"):  # the files that go with each split come with the first one
        assert {"yolo": "data.yaml", "tfrecord": "label_map.pbtxt"}[fmt] in written

    export_dataset(tiny_voc, fmt, out)  # a complete export, then the same failure must not touch it
    before = _files(out)
    with monkeypatch.context() as m:
        m.setattr(export_module, "load_dataset", load_with_a_bad_val_record)
        with pytest.raises(OSError, match="simulated"):
            export_dataset(tiny_voc, fmt, out)
    assert _files(out) == before
    assert not [p for p in out.rglob(".*")], "temporary files or folders left"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("csv", ["val.csv"]),
        ("coco", ["val.json"]),
        ("yolo", ["data.yaml", "images", "labels"]),
        ("tfrecord", ["label_map.pbtxt", "val.tfrecord"]),
    ],
)
def test_cli_exports_one_split(
    fmt: str, expected: list[str], bccd_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "export", str(bccd_root), "--format", fmt, "--out", str(tmp_path), "--split", "val"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MARK, *expected])
    out, err = capsys.readouterr()
    printed = out.splitlines()
    assert printed and all(line.startswith("wrote ") and Path(line[6:]).exists() for line in printed)
    if fmt == "yolo":
        assert [p.name for p in (tmp_path / "labels").iterdir()] == ["val"]
        assert len(list((tmp_path / "images" / "val").iterdir())) == BCCD_IMAGES["val"]
        # a data.yaml Ultralytics refuses until train is exported beside it: said, with how
        said = f"warning: {tmp_path / 'data.yaml'} names no train split yet; Ultralytics needs both: export train"
        assert said in err
        assert (
            main(["data", "export", str(bccd_root), "--format", fmt, "--out", str(tmp_path), "--split", "train"]) == 0
        )
        assert "names no" not in capsys.readouterr().err


def test_a_stopped_export_leaves_no_temporary_file(tiny_voc: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import signal

    from bloodcell.cli import main

    fsync = os.fsync

    def stopped(fd: int) -> None:  # a scheduler's SIGTERM while the first file is being written
        os.kill(os.getpid(), signal.SIGTERM)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", stopped)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["data", "export", str(tiny_voc), "--format", "csv", "--out", str(tmp_path / "out")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no hidden .train.csv.*.tmp
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stopped_export_has_named_the_splits_it_finished(tiny_voc: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from bloodcell.cli import main

    write = csvfile.write

    def stopped_at_val(datasets, out):
        if "val" in datasets:
            raise KeyboardInterrupt  # Ctrl-C while val is written
        return write(datasets, out)

    monkeypatch.setitem(export_module.FORMATS, "csv", stopped_at_val)
    out = tmp_path / "out"
    assert main(["data", "export", str(tiny_voc), "--format", "csv", "--out", str(out)]) == 130
    said = capsys.readouterr()
    assert said.out == f"wrote {out / 'train.csv'}\n"  # train, then val: said as it finished
    assert json.loads((out / MARK).read_text(encoding="utf-8"))["csv"]["splits"] == ["train"]
    assert sorted(p.name for p in out.iterdir()) == [MARK, "train.csv"]


def test_coco_of_several_folders_names_images_under_one_root_and_the_cli_warns_of_partial_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dataset YAML's images live in several folders: file_name is relative to info.image_root, so each
    resolves; and an export that cannot carry 'exhaustive' says which classes a detector would mislearn."""
    a, b = VOCFolder(tmp_path / "a"), VOCFolder(tmp_path / "b")
    a.add("x"), b.add("y")
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {a.root}\n    exhaustive: [WBC]\n  - path: {b.root}\n", encoding="utf-8")
    assert main(["data", "export", str(spec), "--format", "coco", "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "all.json").read_text(encoding="utf-8"))
    root = Path(data["info"]["image_root"])
    assert [i["file_name"] for i in data["images"]] == ["a/JPEGImages/x.jpg", "b/JPEGImages/y.jpg"]
    assert all((root / i["file_name"]).is_file() for i in data["images"])
    err = capsys.readouterr().err
    assert "warning: split all: RBC is not boxed exhaustively in 1 of 2 images; the coco files cannot mark" in err
    assert "Platelets is not boxed exhaustively in 1 of 2" in err and "WBC is not" not in err


def test_an_export_of_images_with_unknown_classes_says_once_what_it_teaches(tmp_path: Path, capsys) -> None:
    """A Neutrophil box is left out of the export, which cannot mark its image as partly boxed: one line names
    the class and the fix (aliases), not one line per class blaming completeness."""
    voc = VOCFolder(tmp_path / "voc")
    voc.add("x"), voc.add("y", (("RBC", (10, 10, 30, 30)), ("Neutrophil", (30, 10, 50, 40))))
    assert main(["data", "export", str(voc.root), "--format", "csv", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 images have boxes of classes that are none of RBC, WBC, Platelets (Neutrophil 1): the export " in err
    assert "a detector trained on it learns those cells as background; name those classes in a dataset YAML" in err
    assert "not boxed exhaustively" not in err


def test_an_export_that_left_images_out_says_so_with_its_exit_code(tmp_path: Path, capsys) -> None:
    voc = VOCFolder(tmp_path / "voc")
    for name in ("a", "b"):
        voc.add(name)
    voc.xml_path("a").write_text("<annotation><object>")  # left out of the export
    voc.write_split("train", ["a", "b"])
    out = tmp_path / "out"
    assert main(["data", "export", str(voc.root), "--format", "coco", "--out", str(out)]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    said = "1 listed images left out (1 malformed-xml: a.xml); the export holds the other 1"
    assert last == f"error: {voc.root} split train: {said}"
    assert [i["file_name"] for i in json.loads((out / "train.json").read_text())["images"]] == ["b.jpg"]
