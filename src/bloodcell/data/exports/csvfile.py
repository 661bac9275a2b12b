"""CSV: one row per box, in the layout of the seed's xml_to_csv (``<out>/<split>.csv``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from bloodcell.atomic import atomic_open
from bloodcell.data.exports import plain_number
from bloodcell.data.voc import VOCDataset

HEADER = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")


def rows(dataset: VOCDataset) -> Iterator[list[str | int | float]]:
    for record in dataset.records:
        for box, label in zip(record.boxes, record.labels, strict=True):
            name = dataset.class_names[label]
            yield [record.image_path.name, record.width, record.height, name, *(plain_number(v) for v in box)]


def write(datasets: dict[str, VOCDataset], out: Path) -> list[Path]:
    paths = []
    for split, dataset in datasets.items():
        path = out / f"{split}.csv"
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(rows(dataset))
        paths.append(path)
    return paths
