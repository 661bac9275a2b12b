"""Small writers for prediction results: JSON list, counts CSV, annotated images (all atomic)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.atomic import write_bytes, write_text
from bloodcell.runtime.predict import ImageResult


def write_json(results: list[ImageResult], path: str | Path) -> Path:
    write_text(path, json.dumps([r.to_record() for r in results if r.error is None], indent=1) + "\n")
    return Path(path)


def write_counts_csv(results: list[ImageResult], class_names: tuple[str, ...], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "width", "height", *class_names])
    for r in results:
        if r.error is None:
            counts = r.counts
            writer.writerow([r.path.name, r.width, r.height, *(counts[c] for c in class_names)])
    write_text(path, buffer.getvalue())
    return Path(path)


def save_annotated(result: ImageResult, annotator: BoxAnnotator, out_dir: str | Path) -> Path:
    """Writes <out_dir>/<stem>.jpg (PNG for PNG/TIFF sources, to stay lossless)."""
    im = annotator.annotate(result.image, result.detections.above(result.conf), result.counts)
    suffix = ".png" if result.path.suffix.lower() in (".png", ".tif", ".tiff") else ".jpg"
    buffer = io.BytesIO()
    im.save(buffer, format="PNG" if suffix == ".png" else "JPEG", quality=92)
    path = Path(out_dir) / f"{result.path.stem}{suffix}"
    write_bytes(path, buffer.getvalue())
    return path
