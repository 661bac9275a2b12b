"""Pascal VOC reader that checks and repairs labels, reporting every finding.

Coordinate convention: the numbers in ``<bndbox>`` are kept exactly as written and read as
continuous pixel coordinates, x in [0, width] and y in [0, height]; a box covers
``xmax - xmin`` pixels. This is how the seed's xml_to_csv / generate_tfrecord pipeline and
the TF Object Detection API read BCCD, so exports reproduce the XML numbers unchanged.
(Classic VOC tools subtract 1 from the 1-based ``xmin``/``ymin``; that shift is below the
label noise of BCCD and is not applied.)
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import glob
import io
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from bloodcell import boxes as box_ops
from bloodcell.errors import DatasetError
from bloodcell.runtime.images import IMAGE_SUFFIXES, JPEG_FORMATS, check_jpeg_data, decoding_file
from bloodcell.types import CLASS_ALIASES, CLASS_NAMES, Detections, canonical_class_name

DEFAULT_ALIASES = CLASS_ALIASES  # the variants the reader takes (bloodcell.types)

DUPLICATE_IOU = 0.9


#: The folders of a Pascal VOC dataset that hold its labels, images and split lists.
VOC_FOLDERS = ("Annotations", "JPEGImages", "ImageSets")
#: The action of a finding about labels used as they are (said, not repaired).
KEPT = "kept"
#: The action of a finding whose image could not be used at all (the dataset goes on without it).
SKIPPED_IMAGE = "skipped image"
#: The action of a split list's finding whose image the split goes without (a whole-folder read keeps it).
SKIPPED_FROM = "skipped from "
#: A line of VOC's per-class split lists: the id, then whether the class is in it (1, 0 difficult, -1 not).
FLAGGED_ID = re.compile(r"(.+?)\s+(-1|0|1)")
#: The action of a finding whose labels a later source of a dataset YAML replaces (it no longer matters).
SUPERSEDED = "superseded: "
#: The action of an unknown class's box: dropped, and no class is taken as exhaustively labelled in its image
#: (the cell may be a kind of one: a "Neutrophil" taught as background would teach the model to miss white cells).
UNKNOWN_DROPPED = "dropped; no class taken as exhaustive in this image"
#: The action of a later source's finding that left its image unlabelled there: an earlier source's labels stand.
FELL_BACK = "skipped here; fell back to "


@dataclass(frozen=True)
class Finding:
    """One problem found in the labels, and what the reader did about it."""

    file: str
    object: int | None  # which <object> of the XML, counting from 1 as an editor's reader does; None: the file
    kind: str
    detail: str
    action: str  # what the repair did: clipped, dropped, merged, renamed, skipped image, ...

    @property
    def skips_image(self) -> bool:
        """Whether the image was left out (a failed input; of one split: "skipped from val"), rather than
        its labels repaired."""
        return self.action == SKIPPED_IMAGE or self.action.startswith(SKIPPED_FROM)

    @property
    def falls_back(self) -> bool:
        """Whether a dataset YAML source's file was unusable and an earlier source's labels were used instead
        (the image is kept; the file is still a failed input of its source)."""
        return self.action.startswith(FELL_BACK)

    def __str__(self) -> str:
        where = self.file if self.object is None else f"{self.file} object {self.object}"
        return f"{where}: {self.kind}: {self.detail} ({self.action})"


@dataclass
class VOCRecord:
    """One image and its (repaired) boxes."""

    image_path: Path
    annotation_path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy, see module docstring
    labels: np.ndarray  # (N,) int64 indices into the dataset's class_names
    difficult: np.ndarray  # (N,) bool
    #: (K,) bool per class: True where every cell of that class in the image has a box. An image
    #: whose labels skip some cells of a class (BCCD's RBCs) must not teach "unlabelled = background".
    #: None: every class is exhaustive (a plain VOC folder).
    exhaustive: tuple[bool, ...] | None = None

    def exhaustive_mask(self, num_classes: int) -> np.ndarray:
        """(K,) bool: which classes are labelled exhaustively in this image."""
        if self.exhaustive is None:
            return np.ones(num_classes, bool)
        return np.asarray(self.exhaustive, bool)

    @property
    def image_id(self) -> str:
        return self.annotation_path.stem

    @property
    def targets(self) -> Detections:
        return Detections(self.boxes, self.labels)


@dataclass
class VOCDataset:
    root: Path
    class_names: tuple[str, ...]
    split: str | None
    records: list[VOCRecord] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    #: every <name> read, spelling-blind (``canonical``): which of a source's aliases its XML uses
    names_read: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.records)

    def box_counts(self) -> dict[str, int]:
        labels = np.concatenate([r.labels for r in self.records]) if self.records else np.zeros(0, np.int64)
        return Detections(np.zeros((len(labels), 4)), labels).counts(self.class_names)


#: ``<source><database>`` of the pre-labels ``voc_annotation`` writes: a labelling tool that saves the file
#: writes its own, so a file that still has this one holds the model's boxes, unchecked.
PRELABEL_SOURCE = "bloodcell predict --voc (not yet checked)"


def voc_annotation(
    filename: str, width: int, height: int, detections: Detections, class_names: tuple[str, ...]
) -> bytes:
    """One image's Pascal VOC XML (as LabelImg and CVAT write it) holding ``detections``: boxes rounded to
    whole pixels in this module's convention (read back, each covers what it covered, within half a
    pixel), and never below 1 (LabelImg's rule, and BCCD's labels: tools that read VOC as 1-based subtract
    1), ``truncated`` where a box meets the image's edge (a cell the frame cuts)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = PRELABEL_SOURCE
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for box, label in zip(detections.boxes, detections.labels, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        x1, y1 = min(max(x1, 1), width - 1), min(max(y1, 1), height - 1)
        x2, y2 = min(max(x2, x1 + 1), width), min(max(y2, y1 + 1), height)  # a pixel at least: no zero-size box
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(label)]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(x1 == 1 or y1 == 1 or x2 == width or y2 == height))
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def unknown_classes(findings: list[Finding]) -> dict[str, list[str]]:
    """Annotation file (as the finding names it) -> the class names of its boxes that were dropped as unknown
    ("" for a box without <name>): the images that label no class exhaustively for that reason."""
    found: dict[str, list[str]] = {}
    for f in findings:
        if f.kind == "unknown-class" and f.action == UNKNOWN_DROPPED:
            match = _UNKNOWN_DETAIL.match(f.detail)
            found.setdefault(f.file, []).append(ast.literal_eval(match.group(1)) if match else "")
    return found


#: How ``_read_one`` words an unknown class (the name as repr): ``unknown_classes`` reads the name back.
_UNKNOWN_DETAIL = re.compile(r"class ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") is not one of ")


canonical = canonical_class_name  # the reader's spelling-blind key (bloodcell.types)


def read_split_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        there = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        has = (
            f"this folder has {', '.join(there)}"
            if there
            else "this folder has no split files: write the image ids (file names without suffix), one per line, "
            f"into {root / 'ImageSets' / 'Main' / (split + '.txt')} (and the other splits' files)"
        )
        raise DatasetError(f"{root}: no split {split!r} (ImageSets/Main/{split}.txt); {has}")
    try:
        data = path.read_bytes()
        # a byte-order mark (Windows editors) is not part of an id; one of UTF-16 (PowerShell's `>`) says how to read
        utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        text = data.decode("utf-16" if utf16 else "utf-8-sig")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read split file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        what = "UTF-16 text that does not decode" if utf16 else "not UTF-8 text"
        raise DatasetError(f"{path}: split file is {what} (byte {e.start}); save it as UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    flagged = [FLAGGED_ID.fullmatch(line) for line in lines]
    if not all(flagged):  # a plain list: each line is an id, which may hold spaces ("slide 1 field")
        return lines
    # VOC's per-class lists add a flag to every line ("BloodImage_00001 -1"); a line that names an
    # annotation whole is an id all the same ("field 1" beside "field 0")
    ids = []
    for line, match in zip(lines, flagged, strict=True):
        ids.append(line if (root / "Annotations" / f"{line}.xml").is_file() else match.group(1))  # type: ignore[union-attr]
    return ids


def check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        from bloodcell.data.sources import default_data_root  # sources reads VOC folders with this module

        if os.environ.get("BLOODCELL_DATA") and Path(os.environ["BLOODCELL_DATA"]) == root:
            raise DatasetError(f"{root}: dataset folder not found (BLOODCELL_DATA names it)")
        if root == default_data_root():
            raise DatasetError(
                f"no dataset given, and none at the default {root}: pass --data (a VOC folder or dataset YAML), "
                "set BLOODCELL_DATA, or fetch BCCD there with `bloodcell data download`"
            )
        raise DatasetError(f"{root}: dataset folder not found")
    if not root.is_dir():
        if root.suffix.lower() in (".yaml", ".yml"):
            hint = "; a dataset YAML is read by load_dataset"
        else:  # a dataset YAML saved without its suffix is read as a folder's path
            hint = ""
            with contextlib.suppress(OSError):
                if root.is_file():  # (a pipe or a device given as the dataset is not read: it may never end)
                    with open(root, "rb") as f:
                        hint = "; a dataset YAML needs a .yaml name" if b"sources:" in f.read(4096) else ""
        raise DatasetError(f"{root}: is a file, expected a Pascal VOC folder with Annotations/ and JPEGImages/{hint}")
    if not (root / "Annotations").is_dir():
        inside = (root.parent / "Annotations").is_dir() and (root.parent / "JPEGImages").is_dir()
        hint = f" (it is inside one: give {root.parent})" if inside else ""
        raise DatasetError(f"{root}: no Annotations/ folder; not a Pascal VOC dataset{hint}")
    return root


def load_voc(
    root: str | Path,
    split: str | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
    aliases: dict[str, str | None] | None = None,
    decode_images: bool = True,
    image_ids: list[str] | None = None,
) -> VOCDataset:
    """Read a VOC dataset, repairing what can be repaired and recording a Finding for each fault.

    ``split`` names ImageSets/Main/<split>.txt; None reads every XML file in Annotations/;
    ``image_ids`` (instead of the split's file) names the annotations to read.
    ``aliases`` adds to ``DEFAULT_ALIASES``: an XML class name -> one of ``class_names``, or None for boxes of
    something that is not a cell to count (left out; its place is background). A box of any other class is
    left out too, and its image then labels no class exhaustively (the cell is one of them, or not).
    With ``decode_images`` every image is fully decoded so that truncated files are found here
    rather than in the middle of training.
    """
    root = check_root(root)
    declared = {canonical(k): k for k in aliases or {}}  # the dataset's own names: applied, not findings
    aliases = {**DEFAULT_ALIASES, **{canonical(k): v for k, v in (aliases or {}).items()}}
    class_index = {name: i for i, name in enumerate(class_names)}
    if image_ids is not None:
        ids = list(image_ids)
    elif split is None:
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
        if not ids:
            raise DatasetError(f"{root / 'Annotations'}: no .xml annotation files")
    else:
        ids = read_split_ids(root, split)
    dataset = VOCDataset(root=root, class_names=tuple(class_names), split=split)
    if len(set(ids)) < len(ids):  # a split file listing an image twice would train on or score it twice
        for image_id, n in Counter(ids).items():
            if n > 1:
                detail = f"listed {n} times" + (f" in ImageSets/Main/{split}.txt" if split else "") + "; used once"
                dataset.findings.append(Finding(f"{image_id}.xml", None, "duplicate-id", detail, "used once"))
        ids = list(dict.fromkeys(ids))
    # image file (device and inode: one file however an XML spells it on macOS or Windows) -> its annotation
    labelled_by: dict[tuple[int, int | str], str] = {}
    for image_id in ids:
        listed_in = f"ImageSets/Main/{split}.txt" if split and image_ids is None else None
        record = _read_one(
            root,
            image_id,
            class_index,
            aliases,
            declared,
            decode_images,
            dataset.findings,
            listed_in,
            dataset.names_read,
        )
        if record is None:
            continue
        key = _file_id(record.image_path)
        if (first := labelled_by.setdefault(key, f"{image_id}.xml")) != f"{image_id}.xml":
            detail = f"{record.image_path.name} is already labelled by {first}; this file's boxes left out"
            dataset.findings.append(Finding(f"{image_id}.xml", None, "duplicate-image", detail, "ignored"))
            continue
        dataset.records.append(record)
    if split is None and image_ids is None:  # the whole folder: an image nobody labelled is a forgotten file
        dataset.findings += unlabelled_images(root, dataset.records)
    return dataset


def unlabelled_images(root: Path, records: list[VOCRecord], labelled_elsewhere: Collection[str] = ()) -> list[Finding]:
    """The images in ``root``/JPEGImages that no record uses: one with no annotation of its name is a
    forgotten file; one that shares its name with the labelled image (x.png beside x.jpg) is another
    picture left out. ``labelled_elsewhere``: image file names another source labels (a dataset YAML)."""
    used = {_file_id(r.image_path): r.image_path for r in records}
    by_stem = {path.stem: path for path in used.values()}
    findings = []
    for image in _images(root / "JPEGImages"):
        try:
            file_id = _file_id(image)
        except OSError as e:  # a link to nothing, a file gone since the listing: a row, not the end of the run
            if not (root / "Annotations" / f"{image.stem}.xml").is_file():  # else its annotation's row says it
                why = "a link to nowhere" if image.is_symlink() else (e.strerror or type(e).__name__)
                detail = f"JPEGImages/{image.name}: cannot read it ({why})"
                findings.append(Finding(image.name, None, "bad-image", detail, SKIPPED_IMAGE))
            continue
        if file_id in used or image.name in labelled_elsewhere:
            continue
        if (root / "Annotations" / f"{image.stem}.xml").is_file():
            if image.stem not in by_stem:
                continue  # its annotation was read and left out: that finding says why
            detail = (
                f"JPEGImages/{image.name} shares its name with {by_stem[image.stem].name}, which "
                f"Annotations/{image.stem}.xml labels; this file is another picture with no labels"
            )
            findings.append(Finding(image.name, None, "unlabelled-image", detail, SKIPPED_IMAGE))
        else:
            detail = f"JPEGImages/{image.name} has no Annotations/{image.stem}.xml" + _xml_case_hint(
                root / "Annotations", image.stem
            )
            findings.append(Finding(image.name, None, "missing-annotation", detail, SKIPPED_IMAGE))
    return findings


def _file_id(path: Path) -> tuple[int, int | str]:
    """One key per file however it is spelled; inode 0 (some Windows and network file systems have no
    inode numbers) falls back to the resolved, case-normalised path."""
    st = path.stat()
    return (st.st_dev, st.st_ino) if st.st_ino else (-1, os.path.normcase(str(path.resolve())))


def _images(folder: Path) -> list[Path]:
    suffixes = {s.lower() for s in IMAGE_SUFFIXES}
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in suffixes and not p.name.startswith("."))


def _did_you_mean(raw_name: str, aliases: dict[str, str | None], declared: dict[str, str]) -> str:
    """A typo's likely class ("Plateletes", "WCB"): said, not applied; a wrong guess would move a cell to
    another class. Only one or two letters off one class, and not a class name with more added ("NRBC",
    "giant platelet" are other cells). Near a name the dataset's aliases declare, that name is said (either
    spelling may be the slip: the XML's or the alias's)."""
    aliases = {alias: c for alias, c in aliases.items() if c is not None}  # null: not a cell, not a class
    name = canonical(raw_name)
    distance = {alias: _edits(name, alias) for alias in aliases}
    nearest = min(distance.values(), default=99)
    classes = {aliases[a] for a, d in distance.items() if d == nearest}
    # another word, or letters in front, qualify a class: a different cell ("NRBC", "giant platelet")
    words = [canonical(w) for w in re.split(r"[\s_\-]+", raw_name.strip()) if w]
    extended = (len(words) > 1 and any(w in aliases for w in words)) or any(
        name.endswith(a) and name != a for a in aliases if len(a) >= 3
    )
    if nearest > 2 or len(classes) != 1 or extended:
        return ""
    near = [declared[a] for a, d in distance.items() if d == nearest and a in declared]
    if near:
        cls = classes.pop()
        return f" (perhaps {near[0]!r}, which the aliases map to {cls!r}? add this spelling to them or fix the XML)"
    return f" (perhaps a typo of {classes.pop()!r}? fix the XML if so)"


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _find_image(root: Path, image_id: str, filename: str | None, findings: list[Finding]) -> Path | None:
    """The image an annotation file labels: the one with its own name (VOC's image id), else the one its
    ``<filename>`` names, unless another annotation file is that image's own (labels copied from it);
    None, with a finding, when there is none."""
    folder = root / "JPEGImages"
    xml_name = f"{image_id}.xml"
    named = folder / Path(filename).name if filename else None
    if named is not None and not named.is_file():
        named = None  # a <filename> naming nothing there: only the annotation's own name counts
    if named is not None and named.stem == image_id:  # x.png named beside an x.jpg
        return named
    # Both cases of each suffix: file systems are often case-sensitive and cameras write .JPG.
    for ext in IMAGE_SUFFIXES:
        for variant in (ext, ext.upper()):
            candidate = folder / f"{image_id}{variant}"
            if candidate.is_file():
                if named is not None:  # another image
                    detail = f"<filename> names {named.name}, another image; used {candidate.name}"
                    findings.append(Finding(xml_name, None, "filename-mismatch", detail, "used the file's own name"))
                return candidate
    detail = f"no image for {image_id} in JPEGImages/"
    if named is not None:
        if not (root / "Annotations" / f"{named.stem}.xml").is_file():
            return named
        detail += f"; its <filename> names {named.name}, which {named.stem}.xml labels"
    elif nested := _in_subfolder(folder, image_id):  # a tool's per-batch folders: VOC reads JPEGImages/ only
        detail += f" ({nested.relative_to(folder.parent).as_posix()} is in a subfolder, which is not read)"
    findings.append(Finding(xml_name, None, "missing-image", detail, SKIPPED_IMAGE))
    return None


def _in_subfolder(folder: Path, image_id: str) -> Path | None:
    """An image of this id one folder down in JPEGImages/ (JPEGImages/batch2/x.jpg), if there is one."""
    suffixes = {s.lower() for s in IMAGE_SUFFIXES}
    found = (p for p in folder.glob(f"*/{glob.escape(image_id)}.*") if p.suffix.lower() in suffixes)
    return next(found, None)


def _xml_case_hint(folder: Path, stem: str) -> str:
    """ " (a.XML is there: ...)" where an annotation's suffix differs only in case (Windows tools), else ""."""
    try:
        other = next((p for p in folder.glob(f"{glob.escape(stem)}.*") if p.suffix.lower() == ".xml"), None)
    except OSError:
        return ""
    return f" ({other.name} is there: rename it to {stem}.xml; annotations end in lowercase .xml)" if other else ""


def _parse_xml(path: Path, findings: list[Finding], listed_in: str | None = None) -> ET.Element | None:
    """``listed_in``: the split file that named this annotation (a missing one is that list's fault)."""
    name = path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        detail = f"{listed_in} lists {path.stem}, but {path} is not there" if listed_in else f"{path} not found"
        if Path(path.stem).suffix.lower() in {*IMAGE_SUFFIXES, ".xml"}:  # "a.jpg" in a split file: a.jpg.xml
            detail += f" (split files list image ids without a suffix: {Path(path.stem).stem})"
        detail += _xml_case_hint(path.parent, path.stem)
        findings.append(Finding(name, None, "missing-annotation", detail, SKIPPED_IMAGE))
        return None
    except OSError as e:
        findings.append(Finding(name, None, "unreadable-annotation", str(e), SKIPPED_IMAGE))
        return None
    if not data.strip():
        findings.append(Finding(name, None, "malformed-xml", "empty file", SKIPPED_IMAGE))
        return None
    try:
        return ET.fromstring(data)
    except ET.ParseError as e:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            # Files saved by Windows tools in Latin-1 without a declaration: decode, re-parse.
            try:
                root = ET.fromstring(data.decode("latin-1"))
            except ET.ParseError:
                pass
            else:
                findings.append(
                    Finding(name, None, "not-utf8", "XML is not valid UTF-8; read as Latin-1", "decoded as Latin-1")
                )
                return root
        findings.append(Finding(name, None, "malformed-xml", f"XML does not parse: {e}", SKIPPED_IMAGE))
        return None


def _int_or_none(element: ET.Element | None, tag: str) -> int | None:
    text = element.findtext(tag) if element is not None else None
    try:
        value = int(float(text)) if text is not None else None
    except (ValueError, OverflowError):  # OverflowError: "inf" or "1e999" as a size
        return None
    return value if value is not None and value > 0 else None


def _read_one(
    root: Path,
    image_id: str,
    class_index: dict[str, int],
    aliases: dict[str, str | None],
    declared: dict[str, str],
    decode_images: bool,
    findings: list[Finding],
    listed_in: str | None = None,
    names_read: set[str] | None = None,
) -> VOCRecord | None:
    xml_path = root / "Annotations" / f"{image_id}.xml"
    xml_name = xml_path.name
    tree = _parse_xml(xml_path, findings, listed_in)
    if tree is None:
        return None
    if tree.tag != "annotation":  # another XML file (an HTML page, a CVAT export) would read as "no cells"
        local = tree.tag.rsplit("}", 1)[-1]
        detail = (
            f"its elements are in an XML namespace (<{tree.tag}>), which Pascal VOC files do not use: remove the xmlns"
            if local == "annotation"
            else f"root element is <{tree.tag}>, not <annotation>: not a Pascal VOC annotation"
        )
        findings.append(Finding(xml_name, None, "not-voc", detail, SKIPPED_IMAGE))
        return None

    image_path = _find_image(root, image_id, tree.findtext("filename"), findings)
    if image_path is None:
        return None
    shown = _shown_size(image_path, xml_name, decode_images, findings)
    if shown is None:
        return None
    width, height, orientation = shown
    size = (width, height)
    if _drawn_on_stored_pixels(tree, xml_name, image_path, shown, findings):  # read there, then turned with them
        objects = _read_objects(
            tree, xml_name, class_index, aliases, declared, shown.stored, None, findings, names_read
        )
        boxes = np.asarray(objects.boxes).reshape(-1, 4)
        objects.boxes = exif_turned_boxes(boxes, orientation, *shown.stored).tolist()
    else:
        frame = _boxes_frame(tree, xml_name, image_path, width, height, findings)
        objects = _read_objects(tree, xml_name, class_index, aliases, declared, size, frame, findings, names_read)
    _file_notes(tree, xml_name, findings)
    boxes_arr = np.asarray(objects.boxes, dtype=np.float32).reshape(-1, 4)
    labels_arr = np.asarray(objects.labels, dtype=np.int64)
    difficult_arr = np.asarray(objects.difficult, dtype=bool)
    keep = _merge_duplicates(xml_name, boxes_arr, labels_arr, objects.object_ids, list(class_index), findings)
    lost = objects.lost
    return VOCRecord(
        image_path=image_path,
        annotation_path=xml_path,
        width=width,
        height=height,
        boxes=boxes_arr[keep],
        labels=labels_arr[keep],
        difficult=difficult_arr[keep],
        exhaustive=tuple(c not in lost for c in range(len(class_index))) if lost else None,
    )


class _ShownSize(NamedTuple):
    width: int
    height: int
    orientation: int  # EXIF orientation, 1-8 (1: stored as shown)

    @property
    def quarter_turn(self) -> bool:
        """EXIF turns the stored pixels by 90° (orientations 5-8): the stored width is the shown height."""
        return self.orientation > 4

    @property
    def stored(self) -> tuple[int, int]:
        """(width, height) of the pixels as stored in the file."""
        return (self.height, self.width) if self.quarter_turn else (self.width, self.height)


#: EXIF orientation -> how the stored pixels become the image shown (Pillow's exif_transpose does the same).
EXIF_SHOWN = {2: "mirrored", 3: "turned 180°", 4: "flipped upside down", 5: "transposed", 6: "turned 90° clockwise",
              7: "transversed", 8: "turned 90° counter-clockwise"}  # fmt: skip


def exif_turned_boxes(boxes: np.ndarray, orientation: int, width: int, height: int) -> np.ndarray:
    """(N, 4) xyxy boxes on the stored ``width`` x ``height`` pixels, moved as ``ImageOps.exif_transpose``
    moves those pixels for EXIF ``orientation`` (points, so box edges, map exactly)."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    if orientation in (2, 3):
        x1, x2 = width - x2, width - x1
    if orientation in (3, 4):
        y1, y2 = height - y2, height - y1
    if orientation == 5:  # transpose: (x, y) -> (y, x)
        x1, y1, x2, y2 = y1, x1, y2, x2
    elif orientation == 6:  # 90° clockwise: (x, y) -> (height - y, x)
        x1, y1, x2, y2 = height - y2, x1, height - y1, x2
    elif orientation == 7:  # transverse: (x, y) -> (height - y, width - x)
        x1, y1, x2, y2 = height - y2, width - x2, height - y1, width - x1
    elif orientation == 8:  # 90° counter-clockwise: (x, y) -> (y, width - x)
        x1, y1, x2, y2 = y1, width - x2, y2, width - x1
    return np.stack([x1, y1, x2, y2], axis=1).astype(boxes.dtype) if len(boxes) else boxes


def _drawn_on_stored_pixels(
    tree: ET.ElementTree, xml_name: str, image_path: Path, shown: _ShownSize, findings: list[Finding]
) -> bool:
    """Whether the boxes were drawn on the image's stored pixels, which EXIF shows turned (a labelling tool
    that ignores EXIF): its <size> is the stored one, the shown one turned. A mirror or a half turn keeps
    the size, so which pixels the boxes were drawn on cannot be told: taken as shown, and said."""
    if shown.orientation in (2, 3, 4) or (shown.quarter_turn and shown.width == shown.height):
        detail = (
            f"EXIF shows {image_path.name} {EXIF_SHOWN[shown.orientation]}; boxes taken as drawn on the image as "
            "shown (a tool that ignores EXIF draws them on the stored pixels: look at one)"
        )
        findings.append(Finding(xml_name, None, "exif-orientation", detail, KEPT))
    size = tree.find("size")
    xml = (_int_or_none(size, "width"), _int_or_none(size, "height"))
    if not shown.quarter_turn or shown.width == shown.height or xml != shown.stored:
        return False
    detail = (
        f"<size> says {xml[0]}x{xml[1]}, the stored pixels of {image_path.name}, which EXIF shows "
        f"{EXIF_SHOWN[shown.orientation]} as {shown.width}x{shown.height}: boxes taken as drawn on the stored pixels"
    )
    findings.append(Finding(xml_name, None, "exif-turned", detail, "boxes turned with the image"))
    return True


def _shown_size(image_path: Path, xml_name: str, decode_images: bool, findings: list[Finding]) -> _ShownSize | None:
    """The image's (width, height) as it is shown (EXIF turns applied) and its EXIF orientation; decoded and
    checked for damage with ``decode_images``. None, with a finding, for an image that cannot be used."""
    try:
        data = image_path.read_bytes() if decode_images else None  # once: decoded, then checked for damage
        with decoding_file(image_path), Image.open(image_path if data is None else io.BytesIO(data)) as im:
            if data is not None:
                im.load()
                if im.format in JPEG_FORMATS:  # damaged data decodes silently: a model would learn the garbage
                    check_jpeg_data(data)
            width, height = im.size
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
            orientation = orientation if orientation in range(1, 9) else 1  # (exif_transpose ignores others too)
            if orientation in (5, 6, 7, 8):  # EXIF says "turned 90°": pixels are read turned
                # Pillow 13 gives a TIFF's size already turned (older ones did not): its tags say the stored one
                stored = (im.tag_v2[256], im.tag_v2[257]) if im.format == "TIFF" and 256 in im.tag_v2 else im.size
                width, height = stored[1], stored[0]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning when made an error
        detail = f"{image_path.name} is too large to read safely: {e}"
        findings.append(Finding(xml_name, None, "bad-image", detail, SKIPPED_IMAGE))
        return None
    except UnidentifiedImageError:  # Pillow's text names the whole path and not why: said as predict says it
        try:
            size = image_path.stat().st_size
        except OSError:  # gone since it was opened: not known to be empty
            size = -1
        why = "empty file (0 bytes)" if size == 0 else "not a format Pillow reads"
        detail = f"{image_path.name} cannot be decoded: {why}"
        findings.append(Finding(xml_name, None, "bad-image", detail, SKIPPED_IMAGE))
        return None
    except (OSError, SyntaxError, ValueError) as e:
        detail = f"{image_path.name} cannot be decoded: {e}"
        findings.append(Finding(xml_name, None, "bad-image", detail, SKIPPED_IMAGE))
        return None
    return _ShownSize(width, height, orientation)


def _boxes_frame(
    tree: ET.ElementTree, xml_name: str, image_path: Path, width: int, height: int, findings: list[Finding]
) -> tuple[int, int] | None:
    """The (width, height) the boxes were drawn on where the XML's <size> is another size of this image (it
    was resized after labelling), else None; a missing or differing <size> is a finding."""
    size = tree.find("size")
    xml_w, xml_h = _int_or_none(size, "width"), _int_or_none(size, "height")
    frame = None  # (XML width, height) where the boxes were drawn on another size of the image
    if xml_w is None or xml_h is None:
        detail = f"<size> missing or invalid; image is {width}x{height}"
        findings.append(Finding(xml_name, None, "missing-size", detail, "used image size"))
    elif (xml_w, xml_h) != (width, height):
        detail = f"<size> says {xml_w}x{xml_h} but {image_path.name} is {width}x{height}"
        if _resized(tree, xml_w, xml_h, width, height):
            frame = (xml_w, xml_h)
            detail += f": boxes taken as drawn before the image was resized, scaled by {width / xml_w:.4g}"
            findings.append(Finding(xml_name, None, "size-mismatch", detail, "boxes scaled"))
        else:
            findings.append(Finding(xml_name, None, "size-mismatch", detail, "used image size"))
    return frame


@dataclass
class _Objects:
    """The boxes one annotation file gives, and the classes with a cell it could not box."""

    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    object_ids: list[int] = field(default_factory=list)  # each box's <object>, counted from 1 as a person would
    lost: set[int] = field(default_factory=set)  # its box could not be read, or its class is unknown (then any)


def _read_objects(
    tree: ET.ElementTree,
    xml_name: str,
    class_index: dict[str, int],
    aliases: dict[str, str | None],
    declared: dict[str, str],
    size: tuple[int, int],
    frame: tuple[int, int] | None,
    findings: list[Finding],
    names_read: set[str] | None,
) -> _Objects:
    """Each <object> as a box in the image's pixels (scaled from ``frame``, the size they were drawn on), or a
    finding saying why it is not one."""
    width, height = size
    objects = _Objects()
    frame_w, frame_h = frame or (width, height)  # the size the boxes were drawn on
    for i, obj in enumerate(tree.findall("object"), start=1):  # as a person counts them in the file
        raw_name = (obj.findtext("name") or "").strip()
        if names_read is not None:
            names_read.add(canonical(raw_name))
        name = raw_name if raw_name in class_index else aliases.get(canonical(raw_name), raw_name)
        if not raw_name:  # no <name>, or an empty one (a box whose class was never picked)
            what = "no <name>" if obj.find("name") is None else "an empty <name>"
            findings.append(Finding(xml_name, i, "unknown-class", f"object has {what}", UNKNOWN_DROPPED))
            objects.lost.update(class_index.values())
            continue
        if name is None:  # a source's aliases say it is no cell to count (debris, stain): background
            continue
        if name not in class_index:
            hint = _did_you_mean(raw_name, aliases, declared) or (
                f" (a kind of one? map it in a dataset YAML source's aliases: {{{raw_name}: {'|'.join(class_index)}}}"
                ", or null for no cell to count)"
            )
            detail = f"class {raw_name!r} is not one of {list(class_index)}" + hint
            findings.append(Finding(xml_name, i, "unknown-class", detail, UNKNOWN_DROPPED))
            objects.lost.update(class_index.values())
            continue
        if name != raw_name and canonical(raw_name) not in declared:  # a variant the reader guessed: said
            findings.append(Finding(xml_name, i, "class-alias", f"{raw_name!r} read as {name!r}", "renamed"))
        bnd = obj.find("bndbox")
        if bnd is None:
            findings.append(Finding(xml_name, i, "missing-bndbox", "object has no <bndbox>", _cell_lost(name)))
            objects.lost.add(class_index[name])
            continue
        extra = len(obj.findall("bndbox")) - 1  # an editor's slip: one object, one box
        if extra:
            detail = f"object has {extra + 1} <bndbox> elements; the first is its box"
            findings.append(Finding(xml_name, i, "extra-bndbox", detail, f"{extra} dropped"))
        try:
            coords = [float(bnd.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
            if not all(np.isfinite(coords)):
                raise ValueError("not finite")
        except (TypeError, ValueError):
            texts = {tag: bnd.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")}
            detail = f"non-numeric or missing coordinates {texts}"
            findings.append(Finding(xml_name, i, "bad-coordinate", detail, _cell_lost(name)))
            objects.lost.add(class_index[name])
            continue
        x1, y1, x2, y2 = coords
        if x2 <= x1 or y2 <= y1:
            swapped = [f"{hi} < {lo}" for lo, hi, a, b in (("xmin", "xmax", x1, x2), ("ymin", "ymax", y1, y2)) if b < a]
            hint = f" ({', '.join(swapped)}: written the wrong way round?)" if swapped else ""
            detail = f"{name} box {coords} has zero or negative size{hint}"
            findings.append(Finding(xml_name, i, "degenerate-box", detail, "dropped"))
            continue
        clipped = box_ops.clip(np.array(coords), frame_w, frame_h)[0]
        if not np.array_equal(clipped, np.asarray(coords, dtype=np.float64)):
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                detail = f"{name} box {coords} lies outside the {frame_w}x{frame_h} image"
                findings.append(Finding(xml_name, i, "outside-image", detail, "dropped"))
                continue
            detail = f"{name} box {coords} extends past the {frame_w}x{frame_h} image"
            findings.append(Finding(xml_name, i, "clipped-box", detail, "clipped"))
            coords = [float(v) for v in clipped]
        if frame:  # each axis by its own factor: a resize rounds each side to whole pixels
            scale = (width / frame_w, height / frame_h) * 2
            coords = [min(v * f, limit) for v, f, limit in zip(coords, scale, (width, height) * 2, strict=True)]
        diff_text = obj.findtext("difficult")
        objects.boxes.append(coords)
        objects.labels.append(class_index[name])
        objects.difficult.append(diff_text is not None and diff_text.strip() == "1")
        objects.object_ids.append(i)
    return objects


def _file_notes(tree: ET.ElementTree, xml_name: str, findings: list[Finding]) -> None:
    """What the file as a whole says: unchecked pre-labels, or no object at all."""
    if tree.findtext("source/database") == PRELABEL_SOURCE:  # training on it would teach the model its own boxes
        detail = (
            "pre-labels from `bloodcell predict --voc`, not saved by a labelling tool since: correct its boxes (or "
            "remove its <source> once checked) before training or scoring on it"
        )
        findings.append(Finding(xml_name, None, "unchecked-prelabel", detail, KEPT))
    if not tree.findall("object"):  # a blood smear without a cell: far more often a file saved before labelling
        detail = (
            "no <object> in the file: its image's cells are taken as background (training, scoring) for every "
            "class it labels exhaustively"
        )
        findings.append(Finding(xml_name, None, "no-objects", detail, KEPT))


def _cell_lost(name: str) -> str:
    """The action of a named cell whose box cannot be read: dropped, and its class is then not boxed
    exhaustively in the image (the cell would be taught as background, and counted missing)."""
    return f"dropped; {name} not taken as exhaustive in this image"


def _resized(tree: ET.ElementTree, xml_w: int, xml_h: int, width: int, height: int) -> bool:
    """Whether an image whose <size> differs was resized after labelling (its boxes are in <size>'s pixels):
    the same shape within rounding (a whole-pixel resize of either side), and some box reaching past the
    image as it is now while none reaches past <size> (a wrong <size> over boxes drawn on this image: no)."""
    # one scale for both sides, each rounded to whole pixels by the resize (either way: up to a pixel)
    if (width - 1) / xml_w > (height + 1) / xml_h or (height - 1) / xml_h > (width + 1) / xml_w:
        return False  # another shape: a crop, or another image
    far = [0.0, 0.0]  # the furthest box corner, x and y
    boxes = 0
    for bnd in tree.iterfind("object/bndbox"):
        try:
            x2, y2 = float(bnd.findtext("xmax")), float(bnd.findtext("ymax"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        far, boxes = [max(far[0], x2), max(far[1], y2)], boxes + 1
    if not boxes:  # nothing to scale
        return False
    inside_size = far[0] <= xml_w + 1 and far[1] <= xml_h + 1
    past_image = far[0] > width + 1 or far[1] > height + 1
    return inside_size and (past_image or xml_w < width)  # enlarged: every box fits both frames, shapes agree


def _merge_duplicates(
    xml_name: str,
    boxes: np.ndarray,
    labels: np.ndarray,
    object_ids: list[int],
    class_names: list[str],
    findings: list[Finding],
) -> np.ndarray:
    """Merge same-class pairs with IoU > 0.9 into their mean box (in place); return kept rows."""
    keep = np.ones(len(boxes), dtype=bool)
    if len(boxes) < 2:
        return keep
    ious = box_ops.iou_matrix(boxes, boxes)
    for i in range(len(boxes)):
        if not keep[i]:
            continue
        for j in range(i + 1, len(boxes)):
            if keep[j] and labels[i] == labels[j] and ious[i, j] > DUPLICATE_IOU:
                findings.append(
                    Finding(
                        xml_name,
                        object_ids[j],
                        "near-duplicate",
                        f"{class_names[labels[j]]} box {boxes[j].tolist()} repeats object {object_ids[i]} "
                        f"{boxes[i].tolist()} (IoU {ious[i, j]:.2f})",
                        f"merged into object {object_ids[i]}",
                    )
                )
                boxes[i] = (boxes[i] + boxes[j]) / 2
                keep[j] = False
    return keep
