"""`bloodcell data export`: the repaired labels as CSV, COCO, YOLO or TFRecord, one file or folder per split.

Table-driven: each format is a ``write(datasets, out) -> list[Path]`` in ``bloodcell.data.exports``. Every
file and folder appears whole or not at all (``bloodcell.atomic``); split files written before a failure stay.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bloodcell.data.exports import coco, csvfile, tfrecord, yolo
from bloodcell.data.sources import load_dataset
from bloodcell.data.voc import VOCDataset
from bloodcell.errors import ConfigError
from bloodcell.types import CLASS_NAMES

Writer = Callable[[dict[str, VOCDataset], Path], list[Path]]

FORMATS: dict[str, Writer] = {
    "csv": csvfile.write,
    "coco": coco.write,
    "yolo": yolo.write,
    "tfrecord": tfrecord.write,
}
DEFAULT_SPLITS = ("train", "val", "test")


def export_dataset(
    root: str | Path,
    fmt: str,
    out: str | Path,
    splits: list[str] | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> list[Path]:
    """Write each split of the VOC folder or dataset YAML at ``root`` to ``out`` in format ``fmt`` (a
    YAML's sources merged, later ones overriding earlier ones); return the paths written."""
    writer = FORMATS.get(fmt)
    if writer is None:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: export destination exists and is not a folder")
    # Read every split before writing anything, so a missing split file fails with no output at all.
    names = dict.fromkeys(splits or DEFAULT_SPLITS)  # drops repeats, keeps order
    datasets = {split: load_dataset(root, split=split, class_names=class_names) for split in names}
    return writer(datasets, out)
