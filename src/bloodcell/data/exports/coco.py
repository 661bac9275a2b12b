"""COCO instances JSON (``<out>/<split>.json``): ids from 1, bbox as xywh, category ids 1..K."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bloodcell import __version__
from bloodcell import boxes as box_ops
from bloodcell.atomic import write_text
from bloodcell.data.exports import plain_number
from bloodcell.data.voc import VOCDataset, VOCRecord


def _annotations(record: VOCRecord, image_id: int, first_id: int) -> list[dict[str, Any]]:
    xywh = box_ops.xyxy_to_xywh(record.boxes)
    areas = box_ops.area(record.boxes)
    return [
        {
            "id": first_id + i,
            "image_id": image_id,
            "category_id": int(label) + 1,  # COCO reserves 0 (background in most detectors)
            "bbox": [plain_number(v) for v in box],
            "area": plain_number(area),
            "iscrowd": 0,
        }
        for i, (box, area, label) in enumerate(zip(xywh, areas, record.labels, strict=True))
    ]


def instances(dataset: VOCDataset) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    # file_name is relative to info.image_root: the images' folder, or (a dataset YAML's several) their common one
    paths = [Path(os.path.abspath(r.image_path)) for r in dataset.records]
    try:
        image_root = Path(os.path.commonpath({p.parent for p in paths})) if paths else None
    except ValueError:  # folders on different Windows drives: no common one, so file names are absolute
        image_root = None
    for image_id, (record, path) in enumerate(zip(dataset.records, paths, strict=True), start=1):
        name = path.as_posix() if image_root is None else path.relative_to(image_root).as_posix()
        images.append({"id": image_id, "file_name": name, "width": record.width, "height": record.height})
        annotations += _annotations(record, image_id, first_id=len(annotations) + 1)
    categories = [{"id": i + 1, "name": name, "supercategory": "cell"} for i, name in enumerate(dataset.class_names)]
    info = {
        "description": f"{dataset.root.name} {dataset.split or 'all'}, repaired labels, exported by bloodcell "
        f"{__version__}",
        "image_root": None if image_root is None else str(image_root),
    }
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write(datasets: dict[str, VOCDataset], out: Path) -> list[Path]:
    paths = []
    for split, dataset in datasets.items():
        path = out / f"{split}.json"
        write_text(path, json.dumps(instances(dataset)))
        paths.append(path)
    return paths
