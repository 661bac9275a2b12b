"""Ultralytics layout: ``images/<split>/``, ``labels/<split>/<stem>.txt`` (class cx cy w h, normalized), data.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from bloodcell import boxes as box_ops
from bloodcell.atomic import atomic_dir, write_text
from bloodcell.data.sources import ALL_SPLIT
from bloodcell.data.voc import VOCDataset, VOCRecord

SPLIT_ORDER = ("train", "val", "test")


def label_lines(record: VOCRecord) -> list[str]:
    cxcywh = box_ops.normalize(box_ops.xyxy_to_cxcywh(record.boxes), record.width, record.height)
    return [
        f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
        for label, (cx, cy, w, h) in zip(record.labels, cxcywh, strict=True)
    ]


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link costs no space or time and leaves the source's bytes alone; across filesystems, copy.
    # Linked to the file a symlink points at: os.link on Linux links the symlink itself (dangling when relative).
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)  # (a full disk: atomic_dir names the folder)


def _write_split(dataset: VOCDataset, images: Path, labels: Path) -> None:
    # Files are named after the annotation, not the image: annotation stems are unique, image names need not be.
    with atomic_dir(labels) as tmp:
        for record in dataset.records:
            lines = label_lines(record)
            (tmp / f"{record.image_id}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    with atomic_dir(images) as tmp:
        for record in dataset.records:
            _link_or_copy(record.image_path, tmp / f"{record.image_id}{record.image_path.suffix}")


def data_yaml(out: Path, splits: list[str], class_names: tuple[str, ...]) -> str:
    folders = {s: f"images/{s}" for s in splits}
    if "train" not in folders and "val" not in folders and ALL_SPLIT in folders:
        # A folder without split lists: Ultralytics refuses a data.yaml without train and val, so both are all of it.
        folders = {"train": folders[ALL_SPLIT], "val": folders[ALL_SPLIT], **folders}
    doc = {"path": str(out.resolve()), **folders, "names": dict(enumerate(class_names))}
    return yaml.safe_dump(doc, sort_keys=False)


def write(datasets: dict[str, VOCDataset], out: Path) -> list[Path]:
    paths = []
    for split, dataset in datasets.items():
        images, labels = out / "images" / split, out / "labels" / split
        _write_split(dataset, images, labels)
        paths += [images, labels]
    # List every split on disk, so exporting splits one at a time still builds a complete data.yaml.
    on_disk = [s for s in dict.fromkeys([*SPLIT_ORDER, *datasets]) if (out / "images" / s).is_dir()]
    class_names = next(iter(datasets.values())).class_names
    path = out / "data.yaml"
    write_text(path, data_yaml(out, on_disk, class_names))
    return [*paths, path]
