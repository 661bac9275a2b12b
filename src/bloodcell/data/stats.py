"""`bloodcell data stats`: per split and class, how many images and boxes, and how big the boxes are.

Counts are taken after the reader's repairs (see ``bloodcell.data.voc``), so they describe what
training sees; the README table of the raw XML differs by the dropped and merged boxes.
Plotting lives in plain functions below, apart from the records, so the records stay plain data.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bloodcell import atomic
from bloodcell import boxes as box_ops
from bloodcell.data.sources import (
    ALL_SPLIT,
    available_splits,
    is_spec_file,
    load_dataset,
    read_spec,
    unlisted_images,
)
from bloodcell.data.voc import VOCDataset
from bloodcell.errors import first_of
from bloodcell.palette import class_hex
from bloodcell.types import CLASS_NAMES

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Percentiles:
    p10: float
    p50: float
    p90: float

    @staticmethod
    def of(values: np.ndarray) -> Percentiles | None:
        if len(values) == 0:
            return None
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        return Percentiles(round(float(p10), 2), round(float(p50), 2), round(float(p90), 2))

    def __str__(self) -> str:
        return f"{self.p10:.0f}/{self.p50:.0f}/{self.p90:.0f}"


@dataclass(frozen=True)
class ClassStats:
    """One class in one split. Sizes are in pixels; ``size`` is sqrt(box area)."""

    name: str
    images: int  # images of the split with at least one box of this class
    boxes: int
    boxes_per_image: float  # mean over every image of the split, empty ones included
    size: Percentiles | None  # None when the class has no boxes
    width: Percentiles | None
    height: Percentiles | None
    # Raw sqrt(area) of every box, for histograms; left out of stats.json and comparisons.
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def to_dict(self) -> dict:
        def pct(p: Percentiles | None) -> dict | None:
            return None if p is None else {"p10": p.p10, "p50": p.p50, "p90": p.p90}

        return {
            "images": self.images,
            "boxes": self.boxes,
            "boxes_per_image": self.boxes_per_image,
            "size_sqrt_area": pct(self.size),
            "width": pct(self.width),
            "height": pct(self.height),
        }


@dataclass(frozen=True)
class SplitStats:
    name: str
    images: int
    boxes: int
    findings: int  # reader findings (repairs, skipped images) in this split
    classes: tuple[ClassStats, ...]
    skipped: int = 0  # images left out: their annotation or image could not be used
    same_as: str | None = None  # an earlier split a dataset YAML reads from the same list (splits: {val: test})

    @property
    def boxes_per_image(self) -> float:
        return round(self.boxes / self.images, 2) if self.images else 0.0

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "boxes": self.boxes,
            "boxes_per_image": self.boxes_per_image,
            "findings": self.findings,
            "skipped_images": self.skipped,
            "classes": {c.name: c.to_dict() for c in self.classes},
            **({"same_images_as": self.same_as} if self.same_as else {}),
        }


@dataclass(frozen=True)
class SampleImage:
    """The image drawn by ``plot_stats``: a path relative to the dataset root and its boxes."""

    image: str
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class DatasetStats:
    root: str
    class_names: tuple[str, ...]
    splits: tuple[SplitStats, ...]
    sample: SampleImage | None = None
    unlisted: tuple[str, ...] = ()  # labelled images in none of the split lists (not in any split's numbers)

    def to_dict(self) -> dict:
        sample = self.sample and {
            "image": self.sample.image,
            "boxes": [list(b) for b in self.sample.boxes],
            "labels": list(self.sample.labels),
        }
        return {
            "root": self.root,
            "class_names": list(self.class_names),
            "counts_after_repair": True,
            "splits": {s.name: s.to_dict() for s in self.splits},
            "unlisted_images": list(self.unlisted),
            "sample": sample,
        }

    @property
    def distinct(self) -> tuple[SplitStats, ...]:
        """The splits that are not another's images again: what tables, plots and warnings show."""
        return tuple(s for s in self.splits if s.same_as is None)

    def __str__(self) -> str:
        head = ("split", "class", "images", "boxes", "per image", "size p10/50/90", "width p10/50/90")
        rows = [(*head, "height p10/50/90")]
        for s in self.distinct:
            for c in s.classes:
                sizes = [str(p or "-") for p in (c.size, c.width, c.height)]
                rows.append((s.name, c.name, str(c.images), str(c.boxes), f"{c.boxes_per_image:.2f}", *sizes))
            rows.append((s.name, "all", str(s.images), str(s.boxes), f"{s.boxes_per_image:.2f}", "", "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        # Names left-aligned, numbers right-aligned.
        lines = [
            "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows
        ]
        title = f"{self.root} (box counts after repair; sizes in px, size = sqrt(area))"
        again = [
            f"{s.name}: the same images as {s.same_as} (the dataset YAML's splits read one list)"
            for s in self.splits
            if s.same_as
        ]
        return "\n".join([title, *(line.rstrip() for line in lines), *again])

    def unlisted_warning(self) -> str | None:
        if not self.unlisted:
            return None
        return (
            f"warning: {self.root}: {len(self.unlisted)} labelled images are in none of the split lists "
            f"({first_of(list(self.unlisted))}); these statistics leave them out"
        )

    def findings_warning(self) -> str | None:
        """One stderr line when the reader repaired or skipped anything (as train and val say it)."""
        found = [f"{s.name} {s.findings}" for s in self.distinct if s.findings]
        if not found:
            return None
        return (
            f"warning: {self.root}: label findings repaired or dropped ({', '.join(found)}); images are not decoded "
            "here, so one that cannot be decoded is still counted: "
            f"`bloodcell data check {shlex.quote(str(self.root))}` lists them"
        )


def image_base(root: Path) -> Path:
    """The folder that sample image paths are relative to: the VOC folder, or the dataset YAML's folder."""
    return root.parent if is_spec_file(root) else root


def _split_stats(name: str, dataset: VOCDataset) -> SplitStats:
    class_stats = []
    n_images = len(dataset.records)
    for index, class_name in enumerate(dataset.class_names):
        per_image = [r.boxes[r.labels == index] for r in dataset.records]
        boxes = np.concatenate(per_image).astype(np.float64) if per_image else np.zeros((0, 4))
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sizes = np.sqrt(box_ops.area(boxes))
        class_stats.append(
            ClassStats(
                name=class_name,
                images=sum(len(b) > 0 for b in per_image),
                boxes=len(boxes),
                boxes_per_image=round(len(boxes) / n_images, 2) if n_images else 0.0,
                size=Percentiles.of(sizes),
                width=Percentiles.of(w),
                height=Percentiles.of(h),
                sizes=sizes,
            )
        )
    return SplitStats(
        name=name,
        images=n_images,
        boxes=sum(c.boxes for c in class_stats),
        findings=len(dataset.findings),
        classes=tuple(class_stats),
        skipped=sum(f.skips_image for f in dataset.findings),
    )


def _pick_sample(root: Path, dataset: VOCDataset) -> SampleImage | None:
    """The first image showing the most classes, so the plot shows every colour when it can."""
    if not dataset.records:
        return None
    record = max(dataset.records, key=lambda r: len(set(r.labels.tolist())))
    return SampleImage(
        image=Path(os.path.relpath(record.image_path, image_base(root))).as_posix(),
        boxes=tuple(tuple(round(float(v), 2) for v in b) for b in record.boxes),  # type: ignore[misc]
        labels=tuple(dataset.class_names[i] for i in record.labels),
    )


def compute_stats(root: str | Path, class_names: tuple[str, ...] = CLASS_NAMES) -> DatasetStats:
    """Statistics per split (train/val/test from ImageSets/Main, else one split "all") and class."""
    root = Path(root)
    splits = []
    sample = None
    spec = read_spec(root, class_names)
    read: dict[str, SplitStats] = {}  # split file -> the first split read from it
    for split in available_splits(root) or [None]:
        if split is not None and (first := read.get(spec.split_file(split))) is not None:
            splits.append(replace(first, name=split, same_as=first.name))
            continue
        # Sizes come from the XML; decoding every JPEG is `data check`'s job, not this one's.
        dataset = load_dataset(root, split=split, class_names=class_names, decode_images=False)
        splits.append(_split_stats(split or ALL_SPLIT, dataset))
        if split is not None:
            read[spec.split_file(split)] = splits[-1]
        if sample is None:
            sample = _pick_sample(root, dataset)
    unlisted = unlisted_images(root, class_names)
    return DatasetStats(str(root), tuple(class_names), tuple(splits), sample, tuple(unlisted))


def write_stats(stats: DatasetStats, out_dir: str | Path) -> Path:
    """Write ``stats.json`` into ``out_dir`` (atomically) and return its path."""
    path = Path(out_dir) / "stats.json"
    atomic.write_text(path, json.dumps(stats.to_dict(), indent=2) + "\n")
    return path


# --- plots ---------------------------------------------------------------------------------------
# Figure objects (not pyplot) render through Agg and leave no global backend state behind;
# matplotlib is imported only here because it is slow to import and only plots need it.


def class_colour(name: str, class_names: tuple[str, ...]) -> str:
    """The class's colour from the one palette (``bloodcell.palette``), as in reports and the web page."""
    return class_hex(name, class_names.index(name))


def plot_stats(stats: DatasetStats, root: str | Path, out_dir: str | Path) -> list[Path]:
    """Write class_counts.png, box_sizes.png and (when there is one) sample.png; return their paths."""
    out_dir = Path(out_dir)
    paths = [_save(_plot_counts(stats), out_dir / "class_counts.png")]
    paths.append(_save(_plot_sizes(stats), out_dir / "box_sizes.png"))
    if stats.sample is not None:
        paths.append(_save(_plot_sample(stats.sample, Path(root), stats.class_names), out_dir / "sample.png"))
    return paths


def _save(fig: Figure, path: Path) -> Path:
    with atomic.atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return path


def _plot_counts(stats: DatasetStats) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(stats.class_names))
    splits = stats.distinct
    width = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        counts = [c.boxes for c in split.classes]
        bars = ax.bar(x + (k - (len(splits) - 1) / 2) * width, counts, width, label=split.name)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, stats.class_names)
    ax.set_ylabel("boxes (after repair)")
    ax.set_title("Boxes per class and split")
    ax.legend()
    return fig


def _plot_sizes(stats: DatasetStats) -> Figure:
    from matplotlib.figure import Figure

    n = len(stats.class_names)
    fig = Figure(figsize=(4 * n, 3.5), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for index, (ax, name) in enumerate(zip(axes, stats.class_names, strict=True)):
        per_split = [s.classes[index].sizes for s in stats.distinct]
        joined = np.concatenate(per_split)
        bins = np.histogram_bin_edges(joined, bins=30) if len(joined) else 10
        for split, sizes in zip(stats.distinct, per_split, strict=True):
            ax.hist(sizes, bins=bins, histtype="step", linewidth=1.5, label=split.name)
        ax.axvline(32, color="grey", linestyle=":", linewidth=1)  # COCO's "small object" limit
        ax.set_title(name, color=class_colour(name, stats.class_names))
        ax.set_xlabel("box size, sqrt(area) px")
        ax.set_ylabel("boxes")
        ax.legend(fontsize=8)
    return fig


def _plot_sample(sample: SampleImage, root: Path, class_names: tuple[str, ...]) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    from bloodcell.runtime.images import load_image

    pixels = load_image(image_base(root) / sample.image)  # as training reads it: EXIF-turned, as the boxes are
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(pixels)
    for (x1, y1, x2, y2), name in zip(sample.boxes, sample.labels, strict=True):
        ax.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=class_colour(name, class_names), linewidth=2)
        )
    handles = [Patch(edgecolor=class_colour(n, class_names), facecolor="none", label=n) for n in class_names]
    ax.legend(handles=handles, loc="upper right")
    ax.set_title(f"{Path(sample.image).name}: {len(sample.boxes)} boxes")
    ax.set_axis_off()
    return fig
