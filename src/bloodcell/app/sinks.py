"""Small writers for prediction results: JSON list, counts CSV, annotated images, VOC annotations (all atomic)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.atomic import write_bytes, write_text
from bloodcell.data.voc import voc_annotation
from bloodcell.runtime.predict import ImageResult
from bloodcell.runtime.sources import printable


def write_json(results: list[ImageResult], path: str | Path, model: str | None = None) -> Path:
    """predict's --json: one record per image, with the input's absolute path (``bloodcell report`` finds
    the original there; the folder of annotated copies beside the JSON would show boxes twice) and the
    ``model`` that counted it (``model_ref``). An image that failed is a record with its ``error`` and no
    counts, so the results name every input."""
    records = []
    for r in results:
        record = r.to_record()
        named = {"model": model} if model else {}
        records.append({"image": record.pop("image"), "path": str(r.path.absolute()), **named, **record})
    write_text(path, json.dumps(records, indent=1) + "\n")
    return Path(path)


def format_counts(result: ImageResult) -> str:
    """'21 RBC (19–24), 1 WBC (1–1), 2 Platelets (1–3)': counts with their 90% intervals, for terminals."""
    intervals = result.intervals or {}
    parts = []
    for name, n in result.counts.items():
        iv = intervals.get(name)
        parts.append(f"{n} {name}" + (f" ({iv[0]}–{iv[1]})" if iv else ""))
    scale = f" at scale {result.scale:.2f}" if result.scale != 1.0 else ""
    return ", ".join(parts) + scale


#: A CSV cell beginning with one of these is a formula to a spreadsheet (CSV injection; OWASP's list: tab and
#: carriage return too): a ' before it keeps it text. A file may be named "=HYPERLINK(...).jpg"; the web page's
#: counts.csv escapes the same way.
FORMULA_START = "=+-@\t\r"


def spreadsheet_text(value: str) -> str:
    """``value`` as a CSV cell that spreadsheets show, never run: a leading = + - @ gets a ' (and so does a '
    already before one, so ``from_spreadsheet_text`` restores every value exactly)."""
    escape = value[:1] in tuple(FORMULA_START) or (value[:1] == "'" and value[1:2] in tuple(FORMULA_START + "'"))
    return "'" + value if escape else value


def from_spreadsheet_text(cell: str) -> str:
    """The value that ``spreadsheet_text`` (or the web page) wrote as ``cell``."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in tuple(FORMULA_START + "'") else cell


def _class_columns(class_names: tuple[str, ...]) -> list[str]:
    cols = ["width", "height", "scale"]
    for c in class_names:
        cols += [c, f"{c}_lo90", f"{c}_hi90"]
    return cols


def _class_values(result: ImageResult, class_names: tuple[str, ...]) -> list:
    counts, intervals = result.counts, result.intervals or {}
    row: list = [result.width, result.height, round(result.scale, 4)]
    for c in class_names:
        lo, hi = intervals.get(c, ("", ""))
        row += [counts[c], lo, hi]
    return row


def counts_header(class_names: tuple[str, ...]) -> list[str]:
    """Columns of every per-image counts CSV (predict --csv, watch): a count and its 90% interval per class,
    what makes the counts doubtful ("; "-joined, as the web page's CSV), and why an image has no counts."""
    return ["image", *_class_columns(class_names), "warnings", "error"]


def counts_row(result: ImageResult, class_names: tuple[str, ...]) -> list:
    """An image's row: its counts, or (a failed image) empty counts and its error."""
    label = spreadsheet_text(result.label)
    if result.error is not None:
        return [label, *[""] * len(_class_columns(class_names)), "", spreadsheet_text(printable(result.error))]
    return [label, *_class_values(result, class_names), spreadsheet_text("; ".join(result.warnings)), ""]


def frame_counts_header(class_names: tuple[str, ...]) -> list[str]:
    """Columns of the per-frame counts CSV (predict --source): the frame and its time, then the same
    count and warnings columns as ``counts_header`` (a frame that cannot be read ends the video)."""
    return ["frame", "time_s", *_class_columns(class_names), "warnings"]


def frame_counts_row(index: int, time_s: float, result: ImageResult, class_names: tuple[str, ...]) -> list:
    return [index, f"{time_s:.3f}", *_class_values(result, class_names), spreadsheet_text("; ".join(result.warnings))]


def write_counts_csv(results: list[ImageResult], class_names: tuple[str, ...], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(counts_header(class_names))
    for r in results:
        writer.writerow(counts_row(r, class_names))
    write_text(path, buffer.getvalue())
    return Path(path)


def save_annotated(result: ImageResult, annotator: BoxAnnotator, out_dir: str | Path) -> Path:
    """Writes <out_dir>/<name> as JPEG, or PNG for PNG/TIFF sources (lossless), where <name> is the
    result's label (a relative path when file names repeat); a source suffix that is not the output's
    is kept before it (s.jpeg -> s.jpeg.jpg), so a/s.jpg and a/s.jpeg do not overwrite each other."""
    im = annotator.annotate(result.image, result.counted, result.counts)
    path = annotated_path(out_dir, result.label)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG" if path.suffix.lower() == ".png" else "JPEG", quality=92)
    write_bytes(path, buffer.getvalue())
    return path


def write_voc(result: ImageResult, folder: str | Path) -> tuple[Path, bool]:
    """``voc_path`` and whether it was written: the image's counted boxes as Pascal VOC XML, labels to correct in
    a labelling tool (LabelImg, CVAT) and train on. A file already there is kept, never overwritten (someone may
    have corrected it)."""
    path = voc_path(folder, result.path)
    if path.exists():
        return path, False
    names = tuple(result.class_names)
    write_bytes(path, voc_annotation(Path(result.label).name, result.width, result.height, result.counted, names))
    return path, True


def voc_path(folder: str | Path, image: str | Path) -> Path:
    """<folder>/<image id>.xml: VOC names an image's annotation by its file name without the suffix (the
    file's own bytes, which the reader looks the image up by, even where they are not UTF-8)."""
    return Path(folder) / f"{Path(image).stem}.xml"


def kept_voc_mismatch(path: Path, result: ImageResult) -> str | None:
    """Why an annotation kept at ``path`` may not be this image's: its <filename> names another image, or its
    <size> is not this image's (labels from elsewhere, or a field re-shot). None when it looks like this image's."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return f"cannot be read as XML ({e})"
    filename = (root.findtext("filename") or "").strip()
    if filename and Path(filename).stem != Path(result.path).stem:
        return f"its <filename> is {filename}"
    size = (root.findtext("size/width"), root.findtext("size/height"))
    if all(size) and size != (str(result.width), str(result.height)):
        return f"its <size> is {size[0]}x{size[1]}, the image {result.width}x{result.height}"
    return None


def annotated_path(out_dir: str | Path, label: str) -> Path:
    """Where ``save_annotated`` puts the annotated copy of the image ``label`` names (a counts CSV's "image")."""
    label_path = Path(label)
    suffix = ".png" if label_path.suffix.lower() in (".png", ".tif", ".tiff") else ".jpg"
    name = label_path if label_path.suffix.lower() == suffix else label_path.with_name(label_path.name + suffix)
    return Path(out_dir) / name
