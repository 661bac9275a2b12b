"""Build tiny Pascal VOC folders in tmp_path: generated images, XML written from plain tuples.

Also the datasets the reader must refuse (``UNUSABLE``) and the known BCCD faults, shared by the
reader and ``data check`` tests.

An object is ``(name, box)``: ``box`` is four numbers or strings (written as given) or None for
an object without ``<bndbox>``. Images are small solid-colour JPEGs, so a folder costs ~1 ms.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image

Box = Sequence[float | str] | None
Obj = tuple[str, Box]

WIDTH, HEIGHT = 64, 48


class VOCFolder:
    """A VOC dataset under construction: ``add`` images, then point the reader at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def xml_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def add(
        self,
        image_id: str,
        objects: Sequence[Obj] = (("RBC", (10, 10, 30, 30)),),
        xml_size: tuple[int, int] | None = (WIDTH, HEIGHT),
        image_size: tuple[int, int] = (WIDTH, HEIGHT),
        image: bool = True,
    ) -> str:
        """Write one image and its annotation; ``xml_size=None`` leaves out ``<size>``."""
        if image:
            Image.new("RGB", image_size, (200, 120, 130)).save(self.image_path(image_id), quality=80)
        self.xml_path(image_id).write_text(voc_xml(f"{image_id}.jpg", objects, xml_size), encoding="utf-8")
        return image_id

    def write_split(self, name: str, ids: Sequence[str]) -> None:
        (self.root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def voc_xml(filename: str, objects: Sequence[Obj], size: tuple[int, int] | None = (WIDTH, HEIGHT)) -> str:
    lines = ["<annotation>", "  <folder>JPEGImages</folder>", f"  <filename>{escape(filename)}</filename>"]
    if size is not None:
        lines.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, box in objects:
        lines += ["  <object>", f"    <name>{escape(name)}</name>", "    <difficult>0</difficult>"]
        if box is not None:
            tags = ("xmin", "ymin", "xmax", "ymax")
            coords = "".join(f"<{t}>{escape(str(v))}</{t}>" for t, v in zip(tags, box, strict=True))
            lines.append(f"    <bndbox>{coords}</bndbox>")
        lines.append("  </object>")
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def oversize_png(path: Path, width: int = 20_000, height: int = 20_000) -> Path:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` pixels (1-bit): a decompression bomb's header."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def make_voc(root: Path, n_images: int = 2, splits: bool = True) -> VOCFolder:
    """A clean dataset: ``n_images`` images with one box of each class; train/val/test split files."""
    voc = VOCFolder(root)
    ids = [
        voc.add(f"img{i}", [("RBC", (2, 2, 30, 30)), ("WBC", (30, 10, 60, 44)), ("Platelets", (5, 35, 12, 42))])
        for i in range(n_images)
    ]
    if splits:
        voc.write_split("train", ids[: max(1, n_images - 1)])
        voc.write_split("val", ids[-1:])
        voc.write_split("test", ids[-1:])
    return voc


# --- datasets the reader must refuse with one DatasetError line ---------------------------------


def _empty(root: Path) -> None:
    root.mkdir()


def _file(root: Path) -> None:
    root.write_text("not a folder")


def _annotations_is_file(root: Path) -> None:
    root.mkdir()
    (root / "Annotations").write_text("")


def _no_xml(root: Path) -> None:
    (root / "Annotations").mkdir(parents=True)


def _no_split_files(root: Path) -> None:
    make_voc(root, splits=False)


# id -> (how to build an unusable dataset, split to read, words the error must contain)
UNUSABLE: dict[str, tuple[Callable[[Path], None], str | None, str]] = {
    "missing-folder": (lambda root: None, None, "not found"),
    "empty-folder": (_empty, None, "no Annotations/"),
    "file-not-folder": (_file, None, "is a file"),
    "annotations-is-file": (_annotations_is_file, None, "no Annotations/"),
    "no-xml": (_no_xml, None, "no .xml"),
    "missing-split-file": (_no_split_files, "val", "no split 'val'"),
}


# --- the real dataset ------------------------------------------------------------------------------

# (file, object (counting from 1), kind) of every finding on BCCD: the faults listed in ../shared/data/README.md.
BCCD_FINDINGS = {
    ("BloodImage_00020.xml", 15, "near-duplicate"),
    ("BloodImage_00100.xml", 3, "near-duplicate"),
    ("BloodImage_00104.xml", 14, "near-duplicate"),
    ("BloodImage_00251.xml", 8, "near-duplicate"),
    ("BloodImage_00284.xml", 2, "near-duplicate"),
    ("BloodImage_00331.xml", 3, "near-duplicate"),
    ("BloodImage_00403.xml", 4, "near-duplicate"),
    ("BloodImage_00338.xml", 13, "degenerate-box"),
    ("BloodImage_00343.xml", 4, "degenerate-box"),
}
