"""`bloodcell data export`: the repaired labels as CSV, COCO, YOLO or TFRecord, one file or folder per split.

Table-driven: each format is a ``write(datasets, out) -> list[Path]`` in ``bloodcell.data.exports``. Every
file and folder appears whole or not at all (``bloodcell.atomic``); split files written before a failure stay.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bloodcell.data.exports import coco, csvfile, tfrecord, yolo
from bloodcell.data.sources import ALL_SPLIT, available_splits, load_dataset
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


def export_dataset(
    root: str | Path,
    fmt: str,
    out: str | Path,
    splits: list[str] | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
    on_read: Callable[[VOCDataset], None] | None = None,
) -> list[Path]:
    """Write each split of the VOC folder or dataset YAML at ``root`` to ``out`` in format ``fmt`` (a
    YAML's sources merged, later ones overriding earlier ones); return the paths written.
    ``on_read``: called with each split's dataset before anything is written (the CLI reports findings)."""
    writer = FORMATS.get(fmt)
    if writer is None:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: export destination exists and is not a folder")
    # Read every split before writing anything, so a missing split file fails with no output at all.
    # Default: the standard splits the dataset has (a lab's own folder may have no test split), or
    # every annotation as "all" when it has no split files.
    names = dict.fromkeys(splits or available_splits(root) or [None])  # drops repeats, keeps order
    datasets = {split or ALL_SPLIT: load_dataset(root, split=split, class_names=class_names) for split in names}
    for dataset in datasets.values() if on_read else ():
        on_read(dataset)
    return writer(datasets, out)
