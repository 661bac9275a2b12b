"""`bloodcell report`: one self-contained HTML page for a slide (all records of a `predict --json` file,
or the rows of a counts CSV: `watch`'s counts.csv, `predict --csv`).

One slide = every record in the JSON file, each record one field of view. The page shows per-class
totals and means per field, WBC and platelets per 100 RBC, a per-field table and a grid of
thumbnails with boxes. Everything is inline (CSS, JPEG thumbnails as base64 data URIs): no
external URL, no script, so the file can be mailed or archived as it is.

Which boxes are drawn: a record lists every detection at or above ``--min-score`` but counts only
those at or above the model's counting threshold, which the record does not carry. Since the
counted detections of a class are exactly its top-scoring ones, a thumbnail shows, for each class,
the ``counts[label]`` highest-scoring detections of that label: the boxes that were counted.
"""

from __future__ import annotations

import base64
import codecs
import csv
import html
import io
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.app.sinks import annotated_path, from_spreadsheet_text
from bloodcell.atomic import write_text
from bloodcell.errors import ConfigError, DatasetError, ImageError, first_of
from bloodcell.palette import class_hex
from bloodcell.runtime.images import IMAGE_SUFFIXES, load_image
from bloodcell.runtime.sources import printable
from bloodcell.types import Detections

RBC, WBC, PLATELETS = "RBC", "WBC", "Platelets"


@dataclass(frozen=True)
class ReportSummary:
    """What a slide report says, as numbers; ratios are None when the slide has no RBC."""

    classes: tuple[str, ...]
    totals: dict[str, int]
    mean_per_field: dict[str, float]
    wbc_per_100_rbc: float | None
    platelets_per_100_rbc: float | None
    fields: int
    intervals: dict[str, tuple[int, int]] | None = None  # 90% interval of each total (None: records have none)
    missing_images: tuple[str, ...] = ()  # record names whose image was missing or unreadable
    failed_images: tuple[str, ...] = ()  # fields the results say failed to process: not counted
    doubtful_images: tuple[str, ...] = ()  # counted fields with warnings (grayscale, scale not measured...)
    models: tuple[str, ...] = ()  # the models the records name (predict --json), in order of first appearance
    unnamed_model: int = 0  # records that name no model, in a slide where others do
    operating_points: tuple[tuple[float, ...], ...] = ()  # the per-class points the records were counted at
    repeated_images: tuple[str, ...] = ()  # fields the results list more than once: counted once, the last record
    path: Path | None = None  # the HTML file written

    def __str__(self) -> str:
        lines = [f"{self.fields} field{'' if self.fields == 1 else 's'} of view"]
        lines += [
            f"{c}: {self.totals[c]} total{_interval_text(self.intervals, c)}, {self.mean_per_field[c]:.1f} per field"
            for c in self.classes
        ]
        lines.append(f"WBC per 100 RBC: {_ratio(self.wbc_per_100_rbc)}")
        lines.append(f"Platelets per 100 RBC: {_ratio(self.platelets_per_100_rbc)}")
        if self.missing_images:
            lines.append(f"{_images(len(self.missing_images))} missing or unreadable")
        if self.failed_images:
            names = _some(self.failed_images)
            lines.append(f"{_fields(len(self.failed_images))} failed to process, not counted: {names}")
        if self.doubtful_images:
            names = _some(self.doubtful_images)
            lines.append(f"{_fields(len(self.doubtful_images))} counted with warnings (doubtful counts): {names}")
        if len(self.models) > 1:
            lines.append(f"warning: {MIXED_MODELS % (len(self.models), ', '.join(self.models))}")
        elif self.models and self.unnamed_model:
            lines.append(f"warning: {UNNAMED_MODEL % (self.unnamed_model, self.models[0])}")
        elif self.models:
            lines.append(f"counted by {self.models[0]}")
        if len(self.operating_points) > 1:
            lines.append(f"warning: {mixed_points(self.operating_points)}")
        if self.repeated_images:
            lines.append(f"note: {repeated_note(self.repeated_images)}")
        return "\n".join(lines)


# fields counted by other models (or refits) are counts at other operating points: their sum is no one count
MIXED_MODELS = "fields counted by %d models (%s): the totals mix their counts; count the slide again with one"
UNNAMED_MODEL = "%d fields do not say which model counted them (the others: %s); the totals may mix models"


def repeated_note(names: tuple[str, ...]) -> str:
    return (
        f"{_fields(len(names))} listed more than once (results files joined?), each counted once, by its last "
        f"record: {_some(names)}"
    )


def mixed_points(points: tuple[tuple[float, ...], ...]) -> str:
    """Fields counted at other operating points (--conf, or the page's slider) mix two kinds of count."""
    shown = "; ".join("/".join(f"{v:g}" for v in p) for p in points)
    return (
        f"fields counted at {len(points)} sets of operating points ({shown}): the totals mix their counts; count "
        "the slide again at one"
    )


def _warnings(record: dict) -> list[str]:
    return [w for w in record.get("warnings") or [] if w.strip()]


def _some(names: tuple[str, ...], shown: int = 5) -> str:
    """The first names, for a terminal (the HTML lists them all)."""
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _fields(n: int) -> str:
    return f"{n} field{'' if n == 1 else 's'}"


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def _interval_text(intervals: dict[str, tuple[int, int]] | None, name: str) -> str:
    if not intervals or name not in intervals:
        return ""
    lo, hi = intervals[name]
    return f" (90% interval {lo}–{hi})"


def total_intervals(records: list[dict], classes: tuple[str, ...], z: float = 1.645) -> dict | None:
    """90% interval of each slide total from the fields' intervals. Fields are independent; each
    field's count is taken as normal with its interval's midpoint and half-width / z (a sum of many
    Poisson-binomials is close to normal), so the total's half-width is z * sqrt(sum of variances).
    A field's count need not be its interval's midpoint (the interval is the calibrated expectation's,
    the count the operating point's); over many fields the offsets add up faster than the half-width,
    so the interval is stretched to hold the total, as each field's is to hold its count."""
    if not records or not all(isinstance(r.get("count_intervals"), dict) for r in records):
        return None
    out = {}
    for c in classes:
        pairs = [r["count_intervals"].get(c) for r in records]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            return None
        mid = sum((lo + hi) / 2 for lo, hi in pairs)
        half = z * float(np.sqrt(sum(((hi - lo) / (2 * z)) ** 2 for lo, hi in pairs)))
        total = sum(int(r.get("counts", {}).get(c, 0)) for r in records)
        out[c] = (min(total, max(0, int(np.floor(mid - half)))), max(total, int(np.ceil(mid + half))))
    return out


def _points_text(records: list[dict], classes: tuple[str, ...]) -> str:
    """Which operating points the counts used: the records' own (predict, watch and the page write them)."""
    points = {tuple(r["conf"]) for r in records if isinstance(r.get("conf"), list) and len(r["conf"]) == len(classes)}
    if len(points) == 1:
        [conf] = points
        return "at operating points " + ", ".join(f"{c} {t:.2f}" for c, t in zip(classes, conf, strict=True))
    # a counts CSV of predict or watch does not record them: the model's unless --conf was given
    return "at each field's operating points" if points else "at operating points the results do not record"


def _model_text(summary: ReportSummary) -> str:
    """Which model counted, where every record says (predict --json does; a counts CSV does not)."""
    one = len(summary.models) == 1 and not summary.unnamed_model
    return f" by {html.escape(summary.models[0])}" if one else ""


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def build_report(
    results_json_path: str | Path,
    images_dir: str | Path | None = None,
    out: str | Path = "report.html",
    title: str | None = None,
    thumb_px: int = 320,
) -> ReportSummary:
    """Write the HTML report of a slide to ``out``; missing images get a placeholder and a stderr warning."""
    if thumb_px < 16:
        raise ConfigError(f"thumb_px {thumb_px}: must be at least 16")
    results_json_path = Path(results_json_path)
    records, failed, repeated = read_slide(results_json_path)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise ConfigError(f"--images {images_dir}: not a folder")
    summary = replace(summarize(records), failed_images=tuple(failed), repeated_images=repeated)
    annotator = BoxAnnotator(summary.classes, thickness=2, show_scores=False)
    tiles, missing = [], []
    for record in records:
        try:
            uri = thumbnail_uri(record, source_image(record, results_json_path, images_dir), annotator, thumb_px)
        except ImageError as e:
            print(f"warning: {e} (placeholder in the report)", file=sys.stderr)
            missing.append(record["image"])
            uri = None
        tiles.append(uri)
    title = title or f"Slide report: {results_json_path.name}"
    write_text(out, render_html(title, summary, records, tiles, thumb_px))
    return replace(summary, missing_images=tuple(missing), path=Path(out))


def _last_of_each(records: list[dict]) -> tuple[list[dict], tuple[str, ...]]:
    """One record per image (by its path, else its name), the last, as a counts CSV keeps an image's last row:
    results files joined together would count a field twice. Also the names that were listed more than once."""
    last: dict[str, dict] = {}
    repeated: dict[str, None] = {}
    for record in records:
        key = str(record.get("path") or record.get("image"))
        if key in last:
            repeated[str(record.get("image"))] = None
            del last[key]  # in the order of its last appearance
        last[key] = record
    return list(last.values()), tuple(repeated)


class Slide(NamedTuple):
    """What a results file says of a slide: its counted fields, the names of those that failed, and the names
    listed more than once (each taken once, by its last record, as a counts CSV keeps an image's last row)."""

    records: list[dict]
    failed: list[str]
    repeated: tuple[str, ...] = ()


def read_slide(path: Path) -> Slide:
    """The records of a `predict --json` file, the web page's results.json, or a counts CSV (`watch`'s
    counts.csv, `predict --csv`, the page's counts.csv), checked (any fault is one DatasetError naming the
    file), and apart from them the names of the images that the results say failed to process."""
    if path.suffix.lower() == ".parquet" or path.parent.name == "_runs" or any(path.glob("part-*.parquet")):
        raise DatasetError(
            f"{path}: a slide report reads one slide's `predict --json`/`--csv`, `watch` or web-page results; "
            "`bloodcell batch`'s Parquet archive is not one (count the slide's folder with `bloodcell predict "
            "FOLDER --json results.json`, then report that)"
        )
    if path.is_dir():
        watched = path / "bloodcell" / "counts.csv"
        hint = f"its watch results are {watched}" if watched.is_file() else "give `bloodcell predict --json` output"
        raise DatasetError(f"{path}: a folder, not a results file; {hint}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise DatasetError(
            f"{path}: an image, not a results file; count the slide's images first "
            "(`bloodcell predict FOLDER --json results.json`) and report that"
        )
    if path.suffix.lower() == ".csv":
        return Slide(*_csv_records(path))
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):  # the web page's results.json
        data = data["images"]
    if not isinstance(data, list):
        raise DatasetError(
            f"{path}: expected a list of records (from `bloodcell predict --json`) or the web page's results.json"
        )
    for i, record in enumerate(data):
        problem = None if _failed(record) else _record_problem(record)
        if problem:
            raise DatasetError(f"{path}: record {i}: {problem}")
    data, repeated = _last_of_each(data)  # a field failed in one joined file and counted in another: the last
    # an image that failed (predict's and the page's records with an "error"): named, not counted
    failed = [str(r.get("image")) for r in data if _failed(r)]
    data = [r for r in data if not _failed(r)]
    if not data:
        raise DatasetError(f"{path}: no records (fields of view){_all_failed(failed)}")
    return Slide(data, failed, repeated)


def _read_text(path: Path) -> str:
    """The file's UTF-8 text, without a byte-order mark (Excel's "CSV UTF-8", Notepad); a DatasetError
    naming the line and byte where it is not UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data.count(b"\n", 0, at) + 1
        raise DatasetError(
            f"{path}: not UTF-8 text: line {line}, byte {at} is 0x{data[at]:02x}; save it as UTF-8"
        ) from None


def _csv_records(path: Path) -> tuple[list[dict], list[str]]:
    """A counts CSV as records without detections (its rows hold counts, not boxes): one per image, the
    last row of an image that was counted again (watch appends a row when a file is rewritten)."""
    rows = list(csv.reader(io.StringIO(_read_text(path), newline="")))
    if not any(rows):  # (a watch that never counted writes its header: this one never got that far)
        raise DatasetError(f"{path}: empty file; expected a counts CSV (watch, predict --csv)")
    if rows and rows[0] and rows[0][0].lower().startswith("sep="):  # Excel's separator line
        rows = rows[1:]
    if not rows or not rows[0] or rows[0][0] != "image":
        first = rows[0][0] if rows and rows[0] else ""
        separator = next((sep for sep in ";\t|" if first.startswith(f"image{sep}")), None)
        if separator:  # a spreadsheet saved it back with its own separator (European Excel: ;)
            shown = {"\t": "tabs"}.get(separator, repr(separator))
            raise DatasetError(
                f"{path}: its columns are separated by {shown}, not commas (a spreadsheet saved it so); export "
                "it as CSV with commas, or use the counts.csv bloodcell wrote"
            )
        raise DatasetError(f"{path}: expected a counts CSV whose first column is 'image' (watch, predict --csv)")
    header = rows[0]
    classes = [c for c in header if f"{c}_lo90" in header and f"{c}_hi90" in header]
    if not classes:
        raise DatasetError(f"{path}: no class columns (CLASS, CLASS_lo90, CLASS_hi90)")
    # the web page's counts.csv: per-class thresholds
    page = all(f"{c}_threshold" in header for c in classes)
    name = from_spreadsheet_text  # text cells are escaped against spreadsheet formulas (app.sinks)
    records: dict[str, dict] = {}
    failed: dict[str, None] = {}  # by name, in order: the images whose last row is an error
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetError(f"{path}: line {line}: {len(row)} columns, the header has {len(header)}")
        values = dict(zip(header, row, strict=True))
        if values.get("error"):  # an image that failed (predict's, watch's or the page's row): no counts
            failed[name(values["image"])] = None
            records.pop(name(values["image"]), None)  # watch: a good file rewritten into a broken one
            continue
        record: dict = {"image": name(values["image"]), "counts": {}, "count_intervals": {}, "detections": []}
        try:
            for key in ("width", "height"):
                if values.get(key):
                    record[key] = int(values[key])
            for c in classes:
                record["counts"][c] = int(values[c])
                if values[f"{c}_lo90"] != "":
                    record["count_intervals"][c] = [int(values[f"{c}_lo90"]), int(values[f"{c}_hi90"])]
        except ValueError as e:
            raise DatasetError(f"{path}: line {line}: not a whole number ({e})") from None
        if page:  # the operating points the page counted with (its slider may have moved them)
            try:
                record["conf"] = [float(values[f"{c}_threshold"]) for c in classes]
            except ValueError as e:
                raise DatasetError(f"{path}: line {line}: a threshold is not a number ({e})") from None
        if values.get("warnings"):  # a CSV with a warnings column: its warnings joined by "; "
            record["warnings"] = from_spreadsheet_text(values["warnings"]).split("; ")
        record["annotated"] = True  # its thumbnail comes from the annotated copy: the boxes are drawn on it
        problem = _record_problem(record)
        if problem:
            raise DatasetError(f"{path}: line {line}: {problem}")
        records.pop(record["image"], None)
        records[record["image"]] = record
        failed.pop(record["image"], None)  # a failed file rewritten into a good image
    if not records:
        raise DatasetError(f"{path}: no records (fields of view){_all_failed(list(failed))}")
    return list(records.values()), list(failed)


def _all_failed(failed: list[str]) -> str:
    if not failed:
        return ""
    names = first_of(failed, 5)
    return f": every field failed to process ({names})"


def _failed(record: object) -> bool:
    return isinstance(record, dict) and bool(record.get("error"))


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def _record_problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "expected an object"
    if not isinstance(record.get("image"), str) or not record["image"]:
        return "'image' must be a non-empty string"
    counts = record.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(k, str) and _is_count(v) for k, v in counts.items()):
        return "'counts' must map class names to non-negative integers"
    for key in ("width", "height"):
        if key in record and not _is_count(record[key]):
            return f"'{key}' must be a non-negative integer"
    intervals = record.get("count_intervals")
    if intervals is not None and not (
        isinstance(intervals, dict)
        and all(
            isinstance(v, list) and len(v) == 2 and all(_is_count(x) for x in v) and v[0] <= v[1]
            for v in intervals.values()
        )
    ):
        return "'count_intervals' must map class names to [low, high] non-negative integers"
    warnings = record.get("warnings")
    if warnings is not None and not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
        return "'warnings' must be a list of strings"
    detections = record.get("detections")
    if not isinstance(detections, list):
        return "'detections' must be a list"
    for j, d in enumerate(detections):
        ok = (
            isinstance(d, dict)
            and isinstance(d.get("label"), str)
            and _is_number(d.get("score"))
            and isinstance(d.get("box"), list)
            and len(d["box"]) == 4
            and all(_is_number(v) for v in d["box"])
        )
        if not ok:
            return f"detection {j}: expected {{'label': str, 'score': number, 'box': [x1, y1, x2, y2]}}"
        x1, y1, x2, y2 = d["box"]
        if x1 > x2 or y1 > y2:
            return f"detection {j}: box {d['box']} has x1 > x2 or y1 > y2 (expected [x1, y1, x2, y2], top-left first)"
    return None


def summarize(records: list[dict]) -> ReportSummary:
    """Totals from each record's counts (classes in order of first appearance; absent classes count 0)."""
    classes: list[str] = []
    for record in records:
        classes += [c for c in record["counts"] if c not in classes]
    totals = {c: sum(r["counts"].get(c, 0) for r in records) for c in classes}
    n = len(records)
    rbc = totals.get(RBC, 0)
    named = [r["model"] for r in records if isinstance(r.get("model"), str)]
    return ReportSummary(
        classes=tuple(classes),
        totals=totals,
        mean_per_field={c: totals[c] / n for c in classes},
        wbc_per_100_rbc=100 * totals.get(WBC, 0) / rbc if rbc else None,
        platelets_per_100_rbc=100 * totals.get(PLATELETS, 0) / rbc if rbc else None,
        fields=n,
        intervals=total_intervals(records, tuple(classes)),
        doubtful_images=tuple(r["image"] for r in records if _warnings(r)),
        models=tuple(dict.fromkeys(named)),
        unnamed_model=len(records) - len(named) if named else 0,
        operating_points=tuple(dict.fromkeys(p for r in records if (p := _points(r)) is not None)),
    )


def _points(record: dict) -> tuple[float, ...] | None:
    """The per-class operating points a record was counted at (``conf``), when it says them."""
    conf = record.get("conf")
    if not isinstance(conf, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in conf):
        return None
    return tuple(round(float(v), 4) for v in conf)  # the page writes its points unrounded (0.6499999999999999)


def counted_detections(record: dict, classes: tuple[str, ...]) -> Detections:
    """For each class, its ``counts[label]`` top-scoring detections: the ones the record counted."""
    boxes, labels, scores = [], [], []
    for index, name in enumerate(classes):
        mine = sorted((d for d in record["detections"] if d["label"] == name), key=lambda d: -d["score"])
        for d in mine[: record["counts"].get(name, 0)]:
            boxes.append(d["box"])
            labels.append(index)
            scores.append(d["score"])
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64), np.array(scores))


def source_image(record: dict, results_json: Path, images_dir: str | Path | None) -> Path:
    """Where a record's image lies. With ``--images``: its name under that folder, keeping the subfolder
    predict gives to inputs that share a file name (a/s.jpg, b/s.jpg), never reaching outside it.
    Without: the input path predict recorded, when that file is still there, else the name beside the JSON.
    A counts CSV's record: its annotated copy (``annotated/`` beside the CSV, as watch writes it, or in
    ``--images``; or the web page's ``<name>_annotated.png``), else the plain image in ``--images``."""
    if record.get("annotated"):
        folder = Path(images_dir) if images_dir is not None else results_json.parent / "annotated"
        inside = _inside(record["image"])
        copy = annotated_path(folder, inside.as_posix())
        if copy.is_file():
            return copy
        # the page's PNG: f.jpg_annotated.png (an older page wrote f_annotated.png, which f.png shared)
        for png_name in (f"{inside.name}_annotated.png", f"{inside.stem}_annotated.png"):
            if (page_png := folder / inside.with_name(png_name)).is_file():
                return page_png
        return copy if images_dir is None else _named(folder / inside)
    if images_dir is None:
        recorded = record.get("path")
        if isinstance(recorded, str) and Path(recorded).is_file():
            return Path(recorded)
        images_dir = results_json.parent
    return _named(Path(images_dir) / _inside(record["image"]))


def _named(path: Path) -> Path:
    """``path``, or the file its name stands for: a name that is not UTF-8 is recorded with its bytes escaped
    (``caf\\xe9.jpg``, runtime.sources.printable), the file on disk keeps them."""
    if "\\" not in path.name or path.exists() or not path.parent.is_dir():
        return path
    return next((entry for entry in path.parent.iterdir() if printable(entry.name) == path.name), path)


def _inside(name: str) -> Path:
    """A record's image name as a path that stays inside the folder it is looked up in."""
    relative = Path(name)
    return Path(relative.name) if relative.is_absolute() or ".." in relative.parts else relative


def thumbnail_uri(record: dict, path: Path, annotator: BoxAnnotator, thumb_px: int) -> str:
    """The image at ``path``, shrunk to ``thumb_px`` on its long side, the record's counted boxes drawn,
    as a JPEG data URI."""
    image = Image.fromarray(load_image(path))
    # Boxes are in the pixels of the image the record was made from (its width x height).
    src_w, src_h = record.get("width") or image.width, record.get("height") or image.height
    if (src_w, src_h) != image.size and record.get("detections"):  # a resized copy, or another picture
        print(
            f"warning: {path}: {image.width}x{image.height}, but {record['image']} was counted at {src_w}x{src_h}; "
            "its boxes are scaled to it (wrong if this is another picture)",
            file=sys.stderr,
        )
    image.thumbnail((thumb_px, thumb_px))
    dets = counted_detections(record, annotator.class_names)
    dets.boxes = dets.boxes * np.array([image.width / src_w, image.height / src_h] * 2, np.float32)
    drawn = annotator.annotate(np.asarray(image), dets)
    buffer = io.BytesIO()
    drawn.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; vertical-align: middle; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: %(px)dpx; }
figure img { display: block; max-width: 100%%; }
figcaption { font-size: 0.8em; overflow-wrap: anywhere; }
.missing { width: %(px)dpx; height: %(ph)dpx; background: #eee; border: 2px dashed #c33; color: #c33;
  display: flex; align-items: center; justify-content: center; text-align: center; font-size: 0.9em; }
.note { font-size: 0.8em; color: #666; }
.warn { color: #a35a00; }
"""


def _interval_cell(intervals: dict[str, tuple[int, int]] | None, name: str) -> str:
    if not intervals or name not in intervals:
        return "n/a"
    lo, hi = intervals[name]
    return f"{lo}–{hi}"


def _intervals_note(summary: ReportSummary, records: list[dict]) -> str:
    if summary.intervals:
        return "Intervals: 90% intervals from the model's calibrated scores (fields) and their sum (totals)."
    # e.g. counts the web page made at shifted operating points: intervals hold at the model's own only
    if any(r.get("count_intervals") for r in records):
        return (
            "Intervals: 90% intervals from the model's calibrated scores, for the fields that carry one; the "
            "totals have none, as not every field does (they hold at the model's own operating points)."
        )
    return "No 90% intervals: the results carry none (they hold at the model's own operating points)."


def _field_count(record: dict, name: str) -> str:
    count = record["counts"].get(name, 0)
    iv = (record.get("count_intervals") or {}).get(name)
    return f"{count} ({iv[0]}–{iv[1]})" if iv else f"{count}"


def render_html(
    title: str, summary: ReportSummary, records: list[dict], tiles: list[str | None], thumb_px: int = 320
) -> str:
    """The page; every string from the JSON or the user goes through ``html.escape``."""
    e = html.escape
    classes = summary.classes
    swatch = {c: class_hex(c, i) for i, c in enumerate(classes)}
    head = "".join(f"<th>{e(c)}</th>" for c in classes)
    totals = "".join(
        f'<tr><td><span class="swatch" style="background:{swatch[c]}"></span>{e(c)}</td>'
        f"<td>{summary.totals[c]}</td><td>{_interval_cell(summary.intervals, c)}</td>"
        f"<td>{summary.mean_per_field[c]:.1f}</td></tr>"
        for c in classes
    )
    warned = bool(summary.doubtful_images)
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{e(r['image'])}{' (image missing)' if tile is None else ''}</td>"
        + "".join(f"<td>{_field_count(r, c)}</td>" for c in classes)
        + (f'<td class="warn">{e("; ".join(_warnings(r)))}</td>' if warned else "")
        + "</tr>"
        for i, (r, tile) in enumerate(zip(records, tiles, strict=True))
    )
    if warned:
        head += "<th>Warnings</th>"
    figures = []
    for r, tile in zip(records, tiles, strict=True):
        counts = ", ".join(f"{r['counts'].get(c, 0)} {c}" for c in classes)
        flag = " ⚠ " + "; ".join(warnings) if (warnings := _warnings(r)) else ""
        caption = f"<figcaption>{e(r['image'])}: {e(counts)}{e(flag)}</figcaption>"
        if tile is None:
            body = f'<div class="missing">image not found or unreadable:<br>{e(r["image"])}</div>'
        else:
            body = f'<img src="{tile}" alt="{e(r["image"])}">'
        figures.append(f"<figure>{body}{caption}</figure>")
    css = CSS % {"px": thumb_px, "ph": thumb_px * 3 // 4}
    failed = ""
    if summary.failed_images:
        names = ", ".join(e(n) for n in summary.failed_images)
        failed = f'<p class="warn">{_fields(len(summary.failed_images))} failed to process, not counted: {names}</p>\n'
    if len(summary.models) > 1:
        failed += f'<p class="warn">{e(MIXED_MODELS % (len(summary.models), ", ".join(summary.models)))}.</p>\n'
    elif summary.unnamed_model:
        failed += f'<p class="warn">{e(UNNAMED_MODEL % (summary.unnamed_model, summary.models[0]))}.</p>\n'
    if len(summary.operating_points) > 1:
        failed += f'<p class="warn">{e(mixed_points(summary.operating_points))}.</p>\n'
    if summary.repeated_images:
        failed += f'<p class="warn">{e(repeated_note(summary.repeated_images))}.</p>\n'
    if summary.doubtful_images:
        names = ", ".join(e(n) for n in summary.doubtful_images)
        failed += (
            f'<p class="warn">{_fields(len(summary.doubtful_images))} counted with warnings (their counts are '
            f"doubtful; see the table): {names}</p>\n"
        )

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(title)}</title>
<style>{css}</style>
</head>
<body>
<h1>{e(title)}</h1>
<p>{summary.fields} field{"" if summary.fields == 1 else "s"} of view</p>
{failed}<table>
<tr><th>Class</th><th>Total</th><th>90% interval</th><th>Mean per field</th></tr>
{totals}
</table>
<table>
<tr><td>WBC per 100 RBC</td><td>{_ratio(summary.wbc_per_100_rbc)}</td></tr>
<tr><td>Platelets per 100 RBC</td><td>{_ratio(summary.platelets_per_100_rbc)}</td></tr>
</table>
<h2>Fields of view</h2>
<table>
<tr><th>#</th><th>Image</th>{head}</tr>
{rows}
</table>
<div class="grid">
{"".join(figures)}
</div>
<p class="note">Boxes: for each class, the top-scoring detections up to that field's count,
i.e. the detections counted {_points_text(records, summary.classes)}{_model_text(summary)}.
{_intervals_note(summary, records)}</p>
</body>
</html>
"""
