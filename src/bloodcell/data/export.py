"""`bloodcell data export`: the repaired labels as CSV, COCO, YOLO or TFRecord, one file or folder per split.

Table-driven: each format is a ``write(datasets, out) -> list[Path]`` in ``bloodcell.data.exports``. Every
file and folder appears whole or not at all (``bloodcell.atomic``); split files written before a failure stay.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from pathlib import Path

from bloodcell.atomic import write_text
from bloodcell.data.exports import coco, csvfile, tfrecord, yolo
from bloodcell.data.sources import ALL_SPLIT, STANDARD_SPLITS, available_splits, load_dataset, resolve_data_root
from bloodcell.data.voc import VOCDataset
from bloodcell.errors import ConfigError, first_of
from bloodcell.types import CLASS_NAMES

#: What an export folder holds beside the data: the dataset each format's files came from (JSON), so that
#: a later export adds splits to it or is refused, and never mixes two datasets.
MARK = "bloodcell-export.json"

#: What each format writes (globs in the export folder, per split name): an earlier export's files of these
#: names are checked before writing; other files (a val --json, a predict CSV) may share the folder.
OUTPUTS = {
    "csv": ("{split}.csv",),
    "coco": ("{split}.json",),
    "yolo": ("data.yaml", "images/*", "labels/*"),
    "tfrecord": ("{split}.tfrecord", "label_map.pbtxt"),
}

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
    on_written: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write each split of the VOC folder or dataset YAML at ``root`` to ``out`` in format ``fmt`` (a
    YAML's sources merged, later ones overriding earlier ones); return the paths written.
    ``on_read``: called with each split's dataset before anything is written (the CLI reports findings).
    ``on_written``: called once with each path when it is complete, split by split (a stopped export has said
    what it kept, and its record lists only the splits it finished)."""
    writer = FORMATS.get(fmt)
    if writer is None:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: export destination exists and is not a folder")
    source = str(resolve_data_root(root).resolve())
    # Read every split before writing anything, so a missing split file fails with no output at all.
    # Default: the standard splits the dataset has (a lab's own folder may have no test split), or
    # every annotation as "all" when it has no split files.
    names = dict.fromkeys(splits or available_splits(root) or [None])  # drops repeats, keeps order
    datasets = {split or ALL_SPLIT: load_dataset(root, split=split, class_names=class_names) for split in names}
    marks = _marks(out)
    earlier = marks.get(fmt, {})
    splits = [*STANDARD_SPLITS, ALL_SPLIT, *earlier.get("splits", []), *datasets]
    _check_destination(out, source, fmt, splits, earlier.get("source"))
    for dataset in datasets.values() if on_read else ():
        on_read(dataset)
    out.mkdir(parents=True, exist_ok=True)
    done = set(earlier.get("splits", []) if earlier.get("source") == source else [])

    def record() -> None:
        marks[fmt] = {"source": source, "splits": sorted(done)}
        write_text(out / MARK, json.dumps(marks, indent=2) + "\n")

    record()  # first: files of a split stopped half-way are this data's
    written: dict[Path, None] = {}  # data.yaml and label_map.pbtxt: rewritten with each split, named once
    for name, dataset in datasets.items():
        paths = writer({name: dataset}, out)
        done.add(name)
        record()
        for path in paths:
            if path not in written and on_written is not None:
                on_written(path)
            written[path] = None
    return list(written)


def _marks(out: Path) -> dict[str, dict]:
    """The folder's record: per format, the source and the splits written ({} where there is none)."""
    try:
        made = json.loads((out / MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(made, dict):
        return {}
    return {fmt: v for fmt, v in made.items() if isinstance(v, dict) and isinstance(v.get("source"), str)}


def _check_destination(out: Path, source: str, fmt: str, splits: list[str], made: str | None) -> None:
    """Other files may share the folder, and an export may add splits to an earlier export of the same data
    in the same format; but never mix two datasets' splits (a YOLO data.yaml would list the other's as
    this one's): files of this format from other data, or from an export with no record of its data, are
    refused. ``splits``: the names whose files count (the standard ones, the earlier export's, this one's);
    ``made``: the source the folder's record gives for this format (None: no record)."""
    patterns = {pattern.format(split=glob.escape(split)) for pattern in OUTPUTS[fmt] for split in splits}
    found = (p for pattern in sorted(patterns) for p in out.glob(pattern) if p.name != MARK)
    there = sorted(p.relative_to(out).as_posix() for p in found)
    if there and made != source:
        shown = first_of(there, 4)
        whose = f"an export of {made}" if made else "files with no record of their data"
        raise ConfigError(
            f"{out}: holds {whose} in {fmt} format ({shown}); export {source} into a new or empty folder, "
            "or remove those files"
        )
