"""The VOC reader: every known BCCD fault and nothing else; each kind of bad input gives its finding."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from voc_factory import BCCD_FINDINGS, HEIGHT, UNUSABLE, WIDTH, VOCFolder, make_voc, oversize_png

from bloodcell import boxes as box_ops
from bloodcell.cli import main
from bloodcell.data.voc import UNKNOWN_DROPPED, load_voc
from bloodcell.errors import DatasetError
from bloodcell.runtime.images import IMAGE_SUFFIXES
from bloodcell.types import CLASS_NAMES

# Box counts (RBC, WBC, Platelets) after the repair drops 2 boxes and merges 7.
BCCD_SPLIT_COUNTS = {"train": (2377, 214, 209), "val": (965, 87, 83), "test": (804, 71, 69)}


def _where(findings) -> set[tuple[str, int | None, str]]:
    return {(f.file, f.object, f.kind) for f in findings}


@pytest.fixture(scope="module")
def bccd(bccd_root: Path):
    return load_voc(bccd_root)


def test_bccd_reports_exactly_the_known_faults(bccd) -> None:
    assert _where(bccd.findings) == BCCD_FINDINGS
    assert len(bccd.findings) == len(BCCD_FINDINGS)
    assert len(bccd) == 364
    assert bccd.box_counts() == {"RBC": 4146, "WBC": 372, "Platelets": 361}


def test_bccd_repair_leaves_no_degenerate_or_duplicate_box(bccd) -> None:
    for record in bccd.records:
        assert (record.boxes[:, 2:] > record.boxes[:, :2]).all(), record.image_id
        assert (record.boxes[:, 2] <= record.width).all() and (record.boxes[:, 3] <= record.height).all()
        ious = box_ops.iou_matrix(record.boxes, record.boxes)
        same_class = record.labels[:, None] == record.labels[None, :]
        np.fill_diagonal(ious, 0)
        assert not (ious[same_class] > 0.9).any(), record.image_id


@pytest.mark.parametrize("split", sorted(BCCD_SPLIT_COUNTS))
def test_bccd_split_counts(bccd_root: Path, split: str) -> None:
    dataset = load_voc(bccd_root, split=split, decode_images=False)
    assert tuple(dataset.box_counts().values()) == BCCD_SPLIT_COUNTS[split]


# --- bad input, one fault per case -------------------------------------------------------------

Case = Callable[[VOCFolder], None]


def _raw_xml(text: bytes) -> Case:
    def build(voc: VOCFolder) -> None:
        voc.add("bad")
        voc.xml_path("bad").write_bytes(text)

    return build


def _objects(*objects) -> Case:
    return lambda voc: voc.add("bad", objects)


def _truncated_jpeg(voc: VOCFolder) -> None:
    voc.add("bad")
    # Noise, so that most of the file is scan data and the cut lands inside it, past the header.
    Image.effect_noise((WIDTH, HEIGHT), 64).convert("RGB").save(voc.image_path("bad"), quality=95)
    data = voc.image_path("bad").read_bytes()
    voc.image_path("bad").write_bytes(data[: len(data) * 3 // 5])


def _damaged_jpeg(voc: VOCFolder) -> None:
    """Bytes of the scan data overwritten (a bad copy): Pillow decodes it silently, smeared."""
    voc.add("bad")
    Image.effect_noise((WIDTH, HEIGHT), 64).convert("RGB").save(voc.image_path("bad"), quality=95)
    data = bytearray(voc.image_path("bad").read_bytes())
    at = len(data) * 3 // 5
    data[at : at + 16] = np.random.default_rng(0).integers(0, 256, 16, dtype=np.uint8).tobytes()
    voc.image_path("bad").write_bytes(bytes(data))
    with Image.open(voc.image_path("bad")) as im:
        im.load()  # what the reader did before: no error


def _not_an_image(voc: VOCFolder) -> None:
    voc.add("bad")
    voc.image_path("bad").write_bytes(b"GIF? no")


def _oversize_png(voc: VOCFolder) -> None:
    voc.add("bad", image=False)
    oversize_png(voc.root / "JPEGImages" / "bad.png")  # 20000x20000: over twice Pillow's MAX_IMAGE_PIXELS


LATIN1_XML = (
    "<annotation><folder>Blutausstrich Größe</folder><filename>bad.jpg</filename>"
    f"<size><width>{WIDTH}</width><height>{HEIGHT}</height></size>"
    "<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
    "</annotation>"
).encode("latin-1")

# id -> (how to spoil a one-image dataset, the findings as (object, kind), boxes kept for the image or None if skipped)
BAD_INPUT: dict[str, tuple[Case, set[tuple[int | None, str]], int | None]] = {
    "malformed-xml": (_raw_xml(b"<annotation><object><name>RBC</name></annotation>"), {(None, "malformed-xml")}, None),
    "empty-xml": (_raw_xml(b""), {(None, "malformed-xml")}, None),
    "latin-1-xml": (_raw_xml(LATIN1_XML), {(None, "not-utf8")}, 1),
    "missing-size": (lambda voc: voc.add("bad", xml_size=None), {(None, "missing-size")}, 1),
    "infinite-size": (
        _raw_xml(LATIN1_XML.replace(b"64</width>", b"inf</width>")),
        {(None, "not-utf8"), (None, "missing-size")},
        1,
    ),
    "size-mismatch": (lambda voc: voc.add("bad", xml_size=(640, 480)), {(None, "size-mismatch")}, 1),
    "alias-platelet": (_objects(("platelet", (1, 1, 9, 9))), {(1, "class-alias")}, 1),
    "alias-spaced-rbc": (_objects(("RBC", (20, 20, 40, 40)), (" rbc ", (1, 1, 9, 9))), {(2, "class-alias")}, 2),
    "alias-platlets": (_objects(("Platlets", (1, 1, 9, 9))), {(1, "class-alias")}, 1),
    "unknown-class": (_objects(("RBC", (20, 20, 40, 40)), ("Neutrophil", (1, 1, 9, 9))), {(2, "unknown-class")}, 1),
    "no-bndbox": (_objects(("RBC", None)), {(1, "missing-bndbox")}, 0),
    "two-bndboxes": (
        _raw_xml(
            LATIN1_XML.decode("latin-1")
            .replace("Größe", "x")
            .replace(
                "</bndbox>", "</bndbox><bndbox><xmin>20</xmin><ymin>20</ymin><xmax>30</xmax><ymax>30</ymax></bndbox>"
            )
            .encode()
        ),
        {(1, "extra-bndbox")},
        1,
    ),
    "no-name": (
        _raw_xml(LATIN1_XML.decode("latin-1").replace("Größe", "x").replace("<name>RBC</name>", "").encode()),
        {(1, "unknown-class")},
        0,
    ),
    "non-numeric": (_objects(("RBC", (1, "one", 9, 9))), {(1, "bad-coordinate")}, 0),
    "empty-coordinate": (_objects(("RBC", (1, "", 9, 9))), {(1, "bad-coordinate")}, 0),
    "nan-coordinate": (_objects(("RBC", (1, "nan", 9, 9))), {(1, "bad-coordinate")}, 0),
    "partly-outside": (_objects(("WBC", (-5, 30, 40, 60))), {(1, "clipped-box")}, 1),
    "wholly-outside": (_objects(("WBC", (100, 10, 120, 20))), {(1, "outside-image")}, 0),
    "zero-box": (_objects(("RBC", (20, 20, 40, 40)), ("RBC", (5, 5, 5, 5))), {(2, "degenerate-box")}, 1),
    "negative-box": (_objects(("RBC", (30, 5, 10, 20))), {(1, "degenerate-box")}, 0),
    "near-duplicate": (_objects(("RBC", (10, 10, 50, 46)), ("RBC", (11, 10, 51, 46))), {(2, "near-duplicate")}, 1),
    "no-objects": (_objects(), {(None, "no-objects")}, 0),  # saved before labelling: kept, and said
    "missing-image": (lambda voc: voc.add("bad", image=False), {(None, "missing-image")}, None),
    "truncated-jpeg": (_truncated_jpeg, {(None, "bad-image")}, None),
    "damaged-jpeg": (_damaged_jpeg, {(None, "bad-image")}, None),
    "not-an-image": (_not_an_image, {(None, "bad-image")}, None),
    "oversize-png": (_oversize_png, {(None, "bad-image")}, None),
}


def _relabel(voc: VOCFolder, image_id: str, filename: str) -> None:
    """Point ``image_id``'s annotation at another image file, as a copied XML whose <filename> was not edited."""
    path = voc.xml_path(image_id)
    path.write_text(path.read_text().replace(f"<filename>{image_id}.jpg<", f"<filename>{filename}<"))


def test_an_annotation_labels_its_own_image_not_the_one_its_filename_names(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=2, splits=False)  # img0 and img1, each with its own XML
    _relabel(voc, "img0", "img1.jpg")
    dataset = load_voc(tmp_path)
    assert {r.image_id: r.image_path.name for r in dataset.records} == {"img0": "img0.jpg", "img1": "img1.jpg"}
    assert _where(dataset.findings) == {("img0.xml", None, "filename-mismatch")}
    assert "names img1.jpg, another image; used img0.jpg" in str(dataset.findings[0])


def test_a_filename_pointing_at_another_annotated_image_is_not_a_second_label_set(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=2, splits=False)
    voc.image_path("img0").unlink()
    _relabel(voc, "img0", "img1.jpg")  # its own image gone, its <filename> names img1, which img1.xml labels
    dataset = load_voc(tmp_path)
    assert [r.image_id for r in dataset.records] == ["img1"]
    assert _where(dataset.findings) == {("img0.xml", None, "missing-image")}
    assert "names img1.jpg, which img1.xml labels" in str(dataset.findings[0])


def test_a_renamed_annotation_finds_its_image_once(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=1, splits=False)
    for image_id in ("scan_a", "scan_b"):  # two annotation files, neither with an image of its own name
        voc.add(image_id, image=False)
        _relabel(voc, image_id, "photo.jpg")
    Image.new("RGB", (WIDTH, HEIGHT)).save(voc.root / "JPEGImages" / "photo.jpg")
    dataset = load_voc(tmp_path)
    assert {r.image_id: r.image_path.name for r in dataset.records} == {"img0": "img0.jpg", "scan_a": "photo.jpg"}
    assert _where(dataset.findings) == {("scan_b.xml", None, "duplicate-image")}
    assert "photo.jpg is already labelled by scan_a.xml" in str(dataset.findings[0])


def test_an_image_without_annotation_is_a_finding_when_the_whole_folder_is_read(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=2)  # train: img0; val and test: img1
    Image.new("RGB", (WIDTH, HEIGHT)).save(voc.root / "JPEGImages" / "forgotten.JPG")
    (voc.root / "JPEGImages" / "notes.txt").write_text("not an image")
    dataset = load_voc(tmp_path)
    assert _where(dataset.findings) == {("forgotten.JPG", None, "missing-annotation")}
    assert dataset.findings[0].skips_image and "has no Annotations/forgotten.xml" in str(dataset.findings[0])
    assert load_voc(tmp_path, split="train").findings == []  # a split lists its images: others are not its own


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_its_finding(tmp_path: Path, case: str) -> None:
    build, expected, kept = BAD_INPUT[case]
    voc = make_voc(tmp_path, n_images=1, splits=False)  # one clean image, img0, beside the spoiled one
    build(voc)
    dataset = load_voc(tmp_path)
    assert _where(dataset.findings) == {("bad.xml", obj, kind) for obj, kind in expected}
    assert all("bad" in str(f) for f in dataset.findings)  # the message names the file
    by_id = {r.image_id: r for r in dataset.records}
    assert len(by_id["img0"].boxes) == 3
    if kept is None:
        assert "bad" not in by_id
    else:
        assert len(by_id["bad"].boxes) == kept


@pytest.mark.parametrize(
    ("xml_size", "objects", "boxes", "action"),
    [  # the boxes of an image resized after labelling are in <size>'s pixels: scaled to the image
        ((128, 96), [(60, 40, 120, 90), (2, 2, 20, 20)], [[30, 20, 60, 45], [1, 1, 10, 10]], "boxes scaled"),
        ((32, 24), [(10, 10, 30, 22)], [[20, 20, 60, 44]], "boxes scaled"),  # enlarged
        ((129, 96), [(60, 40, 129, 90)], [[60 * 64 / 129, 20, 64, 45]], "boxes scaled"),  # a side rounded
        ((427, 321), [(300, 200, 427, 321)], [[300 * 64 / 427, 200 * 48 / 321, 64, 48]], "boxes scaled"),  # both
        # a wrong <size> over boxes drawn on this image (none reaches past it): kept as drawn
        ((128, 96), [(10, 10, 60, 40)], [[10, 10, 60, 40]], "used image size"),
        ((32, 24), [(10, 10, 60, 40)], [[10, 10, 60, 40]], "used image size"),  # past <size>: drawn on the image
        ((100, 100), [(10, 10, 90, 40)], [[10, 10, 64, 40]], "used image size"),  # another shape: clipped
    ],
)
def test_boxes_drawn_before_the_image_was_resized_are_scaled_to_it(tmp_path, xml_size, objects, boxes, action):
    voc = VOCFolder(tmp_path)
    voc.add("x", [("RBC", box) for box in objects], xml_size=xml_size)  # the image is 64x48
    dataset = load_voc(tmp_path)
    np.testing.assert_allclose(dataset.records[0].boxes, np.float32(boxes), rtol=1e-6)
    size = [f for f in dataset.findings if f.kind == "size-mismatch"]
    assert [f.action for f in size] == [action]
    assert ("scaled by" in size[0].detail) == (action == "boxes scaled")


def test_an_enlarged_image_without_boxes_has_nothing_scaled(tmp_path: Path) -> None:
    VOCFolder(tmp_path).add("x", [], xml_size=(32, 24))
    [size] = [f for f in load_voc(tmp_path).findings if f.kind == "size-mismatch"]
    assert size.action == "used image size"


def test_a_cell_of_an_unknown_class_leaves_its_image_labelled_incompletely(tmp_path: Path) -> None:
    """A "Neutrophil" is dropped, but its image no longer says every cell of a class is boxed: a white cell taught
    as background (or counted as missing from the true count) would be the reader's doing; a nameless box too."""
    voc = make_voc(tmp_path, n_images=1, splits=False)
    voc.add("sub", (("RBC", (10, 10, 30, 30)), ("Neutrophil", (30, 10, 50, 40))))
    voc.add("nameless", (("RBC", (10, 10, 30, 30)),))
    path = voc.xml_path("nameless")
    path.write_text(path.read_text().replace("<name>RBC</name>", "", 1))
    dataset = load_voc(tmp_path)
    masks = {r.image_id: r.exhaustive_mask(3).tolist() for r in dataset.records}
    assert masks == {"img0": [True] * 3, "sub": [False] * 3, "nameless": [False] * 3}
    [finding] = [f for f in dataset.findings if f.file == "sub.xml"]
    assert finding.action == UNKNOWN_DROPPED
    assert "map it in a dataset YAML source's aliases: {Neutrophil: RBC|WBC|Platelets}" in finding.detail


def test_a_named_cell_whose_box_cannot_be_read_leaves_its_class_incomplete(tmp_path: Path) -> None:
    """A WBC object without <bndbox>, or with a coordinate that is no number, is a white cell nobody can place:
    dropped, and white cells are no longer exhaustive in its image (other classes are)."""
    voc = VOCFolder(tmp_path)
    voc.add("nobox", (("RBC", (10, 10, 30, 30)), ("WBC", None)))
    voc.add("nan", (("Platelets", (1, "x", 9, 9)),))
    dataset = load_voc(tmp_path)
    masks = {r.image_id: r.exhaustive_mask(3).tolist() for r in dataset.records}
    assert masks == {"nobox": [True, False, True], "nan": [True, True, False]}
    assert {f.action for f in dataset.findings} == {
        "dropped; WBC not taken as exhaustive in this image",
        "dropped; Platelets not taken as exhaustive in this image",
    }


def test_aliases_name_the_class_of_a_name_the_reader_does_not_know(tmp_path: Path) -> None:
    """A lab's own names: a WBC subtype read as WBC (the dataset's declaration, so no finding), debris left out as no
    cell at all (its place stays background, the image stays exhaustive)."""
    voc = make_voc(tmp_path, n_images=0, splits=False)
    voc.add("lab", (("Neutrophil", (30, 10, 50, 40)), ("debris", (1, 1, 5, 5)), ("lymphocite", (5, 5, 20, 20))))
    dataset = load_voc(tmp_path, aliases={"neutrophil": "WBC", "Debris": None, "Lymphocyte": "WBC"})
    [record] = dataset.records
    assert record.labels.tolist() == [1] and record.exhaustive is not None and not any(record.exhaustive)
    # the dataset's own names are applied, not findings; the misspelt one is unknown, and near one of them
    [finding] = dataset.findings
    assert (finding.object, finding.kind, finding.action) == (3, "unknown-class", UNKNOWN_DROPPED)
    assert "perhaps 'Lymphocyte', which the aliases map to 'WBC'?" in finding.detail


@pytest.mark.parametrize(
    ("content", "says"), [(b"", "empty file (0 bytes)"), (b"GIF? no", "not a format Pillow reads")]
)
def test_an_unidentified_image_finding_says_why_as_predict_does(tmp_path: Path, content: bytes, says: str) -> None:
    voc = make_voc(tmp_path, n_images=1, splits=False)
    voc.add("bad")
    voc.image_path("bad").write_bytes(content)
    [finding] = load_voc(tmp_path, decode_images=False).findings
    assert finding.kind == "bad-image" and finding.detail == f"{voc.image_path('bad').name} cannot be decoded: {says}"
    assert str(tmp_path) not in finding.detail  # the file's name, not Pillow's whole path


@pytest.mark.parametrize("decode_images", [True, False])
def test_oversize_image_is_a_bad_image_finding_even_when_warnings_are_errors(
    tmp_path: Path, monkeypatch, decode_images: bool
) -> None:
    voc = make_voc(tmp_path, n_images=1, splits=False)
    _oversize_png(voc)
    # 400 Mpx is over this limit but under twice it: Pillow only warns, and the warning is made an error here.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        dataset = load_voc(tmp_path, decode_images=decode_images)
    [finding] = dataset.findings
    assert (finding.file, finding.kind, finding.action) == ("bad.xml", "bad-image", "skipped image")
    assert "bad.png is too large" in finding.detail and "400000000 pixels" in finding.detail
    assert [r.image_id for r in dataset.records] == ["img0"]


@pytest.mark.parametrize("command", ["check", "stats", "export"])
def test_cli_skips_an_oversize_image_without_traceback(tmp_path: Path, capsys, command: str) -> None:
    voc = make_voc(tmp_path / "voc", n_images=3)
    voc.add("bad", image=False)
    oversize_png(voc.root / "JPEGImages" / "bad.png")
    voc.write_split("train", ["img0", "img1", "bad"])
    options = {"check": ["--json"], "stats": ["--out", str(tmp_path / "out")]}
    options["export"] = ["--format", "csv", "--out", str(tmp_path / "out")]
    # each says in its exit code that an input was left out (stats still describes what is usable)
    assert main(["data", command, str(voc.root), *options[command]]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if command != "check":  # check lists the finding itself
        assert "1 label findings (1 bad-image)" in err or "label findings repaired or dropped (train 1)" in err
    if command == "check":
        [finding] = json.loads(out)["findings"]
        assert (finding["file"], finding["kind"]) == ("bad.xml", "bad-image")
        assert "bad.png is too large" in finding["detail"]


def test_repairs_give_the_expected_boxes(tmp_path: Path) -> None:
    voc = VOCFolder(tmp_path)
    # IoU of the two RBC boxes: 38*36 / (2*40*36 - 38*36) = 0.905, just over the 0.9 of a near-duplicate.
    voc.add(
        "a",
        [("WBC", (-5, 30, 40, 60)), ("RBC", (10, 10, 50, 46)), ("RBC", (12, 10, 52, 46)), ("platelet", (1, 2, 3, 4))],
    )
    voc.add("b", [("RBC", (1, 1, 9, 9))], xml_size=(640, 480), image_size=(32, 24))
    records = {r.image_id: r for r in load_voc(tmp_path).records}
    a = records["a"]
    np.testing.assert_array_equal(a.boxes, [[0, 30, 40, HEIGHT], [11, 10, 51, 46], [1, 2, 3, 4]])  # clipped, merged
    assert [CLASS_NAMES[i] for i in a.labels] == ["WBC", "RBC", "Platelets"]
    assert (records["b"].width, records["b"].height) == (32, 24)  # the pixels win over <size>


def test_split_reads_only_listed_ids(tmp_path: Path) -> None:
    make_voc(tmp_path, n_images=3)
    assert [r.image_id for r in load_voc(tmp_path, split="train").records] == ["img0", "img1"]


def test_split_id_without_annotation_is_a_finding(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=1)
    voc.write_split("val", ["img0", "ghost"])
    dataset = load_voc(tmp_path, split="val")
    assert _where(dataset.findings) == {("ghost.xml", None, "missing-annotation")}
    assert len(dataset) == 1


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_dataset_raises_dataset_error(tmp_path: Path, case: str) -> None:
    build, split, words = UNUSABLE[case]
    root = tmp_path / "voc"
    build(root)
    with pytest.raises(DatasetError, match=words) as info:
        load_voc(root, split=split)
    assert str(root) in str(info.value) and "\n" not in str(info.value)


def test_images_are_found_by_id_with_every_image_suffix_in_either_case(tmp_path: Path) -> None:
    """When <filename> names no file, the image is looked up by id with the suffixes `predict` accepts."""
    voc = VOCFolder(tmp_path)
    expected = {}
    for ext in IMAGE_SUFFIXES:
        for variant in (ext, ext.upper()):
            image_id = f"img_{variant.lstrip('.')}"
            voc.add(image_id, image=False)
            path = tmp_path / "JPEGImages" / f"{image_id}{variant}"
            Image.new("RGB", (WIDTH, HEIGHT), (200, 120, 130)).save(path, format=Image.registered_extensions()[ext])
            expected[image_id] = path
    found = {r.image_id: r.image_path for r in load_voc(tmp_path).records}
    assert found == expected


def test_an_unknown_class_that_looks_like_a_typo_says_which(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=0, splits=False)
    names = ["Plateletes", "WCB", "Neutrophil", "NRBC", "Giant platelet", "ebc"]
    voc.add("bad", [(name, (1 + i, 1, 9 + i, 9)) for i, name in enumerate(names)])
    details = [f.detail.removeprefix("class ").replace(" is not one of ['RBC', 'WBC', 'Platelets']", "") for f in
               load_voc(tmp_path).findings]  # fmt: skip
    alias = " (a kind of one? map it in a dataset YAML source's aliases: {{{}: RBC|WBC|Platelets}}, or null for no cell"
    alias += " to count)"
    assert details == [
        "'Plateletes' (perhaps a typo of 'Platelets'? fix the XML if so)",
        "'WCB' (perhaps a typo of 'WBC'? fix the XML if so)",
        "'Neutrophil'" + alias.format("Neutrophil"),  # not a typo: no guess
        "'NRBC'" + alias.format("NRBC"),  # a class with more in front, or another word, is another cell: no guess
        "'Giant platelet'" + alias.format("Giant platelet"),
        "'ebc'" + alias.format("ebc"),  # one letter from RBC and from WBC: no guess
    ]


def test_a_filename_with_the_own_name_and_another_suffix_is_the_image(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=1, splits=False)
    Image.new("RGB", (WIDTH, HEIGHT)).save(voc.root / "JPEGImages" / "img0.png")  # img0.jpg and img0.png
    _relabel(voc, "img0", "img0.png")
    dataset = load_voc(tmp_path)
    assert [r.image_path.name for r in dataset.records] == ["img0.png"]
    assert _where(dataset.findings) == {("img0.jpg", None, "unlabelled-image")}  # the other picture, said


def test_images_on_a_file_system_without_inode_numbers_stay_apart(tmp_path: Path, monkeypatch) -> None:
    make_voc(tmp_path, n_images=3, splits=False)
    real_stat = Path.stat

    class NoInode:  # as some Windows and network file systems report: st_ino 0 for every file
        def __init__(self, st) -> None:
            self.st_dev, self.st_ino, self.st_size, self.st_mode = st.st_dev, 0, st.st_size, st.st_mode

    monkeypatch.setattr(Path, "stat", lambda self, **kw: NoInode(real_stat(self, **kw)))
    dataset = load_voc(tmp_path, decode_images=False)
    assert [r.image_id for r in dataset.records] == ["img0", "img1", "img2"] and dataset.findings == []


def test_split_files_written_by_windows_editors_and_ids_with_spaces(tmp_path: Path) -> None:
    """A byte-order mark and CRLF are not part of an id; an id may hold spaces; VOC's per-class lists'
    flags ("id -1") are not part of it either."""
    voc = VOCFolder(tmp_path)
    for image_id in ("BloodImage_00001", "slide 1 field", "Zelle é 01", "field 1"):
        voc.add(image_id)
    split = tmp_path / "ImageSets" / "Main" / "train.txt"
    split.write_bytes("\ufeffBloodImage_00001\r\nslide 1 field\r\nZelle é 01 \r\nfield 1\r\n".encode())
    dataset = load_voc(tmp_path, split="train")
    assert dataset.findings == []
    assert sorted(r.image_id for r in dataset.records) == ["BloodImage_00001", "Zelle é 01", "field 1", "slide 1 field"]
    split.write_text("BloodImage_00001 -1\nslide 1 field  1\n", encoding="utf-8")  # a per-class list: flags
    assert [r.image_id for r in load_voc(tmp_path, split="train").records] == ["BloodImage_00001", "slide 1 field"]
    # a plain list whose one line looks flagged: the whole line is the id, and its missing XML a finding
    split.write_text("BloodImage_00001\nZelle é 01\nghost 1\n", encoding="utf-8")
    dataset = load_voc(tmp_path, split="train")
    assert [f.file for f in dataset.findings] == ["ghost 1.xml"] and len(dataset.records) == 2


def test_a_second_picture_with_a_labelled_images_name_is_a_finding(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=2, splits=False)
    Image.new("RGB", (WIDTH, HEIGHT), (10, 200, 10)).save(tmp_path / "JPEGImages" / "img0.png")
    Image.new("RGB", (WIDTH, HEIGHT), (10, 200, 10)).save(tmp_path / "JPEGImages" / "forgotten.png")
    dataset = load_voc(voc.root)
    expected = {("img0.png", None, "unlabelled-image"), ("forgotten.png", None, "missing-annotation")}
    assert _where(dataset.findings) == expected
    (found,) = [f for f in dataset.findings if f.kind == "unlabelled-image"]
    assert "shares its name with img0.jpg, which Annotations/img0.xml labels" in found.detail and found.skips_image


def test_folder_and_split_mistakes_say_what_to_give_instead(tmp_path: Path) -> None:
    from bloodcell.data.sources import load_dataset

    voc = make_voc(tmp_path / "voc", n_images=2)
    with pytest.raises(DatasetError, match=re.escape(f"(it is inside one: give {voc.root})")):
        load_voc(voc.root / "Annotations")
    with pytest.raises(
        DatasetError, match=re.escape("no split 'vla' (ImageSets/Main/vla.txt); this folder has test, train, val")
    ):
        load_voc(voc.root, split="vla")
    plain = make_voc(tmp_path / "plain", n_images=2, splits=False)
    assert len(load_dataset(plain.root, "all").records) == 2  # "all", as exports name a folder without split lists
    with pytest.raises(DatasetError, match="no split 'all'"):  # with split lists, "all" is a split like any
        load_dataset(voc.root, "all")


def test_a_box_written_the_wrong_way_round_says_so(tmp_path: Path) -> None:
    voc = VOCFolder(tmp_path)
    voc.add("a", [("RBC", (30, 5, 10, 20)), ("RBC", (5, 5, 5, 20))])  # xmax < xmin; a zero-width box
    first, second = load_voc(tmp_path).findings
    assert first.detail.endswith("has zero or negative size (xmax < xmin: written the wrong way round?)")
    assert second.detail.endswith("has zero or negative size")  # zero width: no swap to suggest


def test_an_annotation_with_an_upper_case_suffix_is_named_in_the_finding(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=2, splits=False)
    voc.xml_path("img0").rename(voc.xml_path("img0").with_suffix(".XML"))  # as some Windows tools save it
    dataset = load_voc(tmp_path)
    assert [r.image_id for r in dataset.records] == ["img1"]
    [finding] = dataset.findings
    assert finding.kind == "missing-annotation"
    assert "(img0.XML is there: rename it to img0.xml; annotations end in lowercase .xml)" in finding.detail


def test_an_object_without_a_name_is_said_so(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=1, splits=False)
    path = voc.xml_path("img0")
    text = path.read_text()
    path.write_text(text.replace(text[text.index("<name>") : text.index("</name>") + 7], "", 1))
    found = [f for f in load_voc(tmp_path).findings if f.object == 1]
    assert [(f.kind, f.detail, f.action) for f in found] == [("unknown-class", "object has no <name>", UNKNOWN_DROPPED)]


@pytest.mark.parametrize("suffix", [".jpg", ".tif", ".png"])
@pytest.mark.parametrize("decode", [False, True])
def test_a_turned_image_has_the_size_it_is_decoded_at(tmp_path: Path, suffix: str, decode: bool) -> None:
    """EXIF orientation 6 (turned 90°): the record's size is the decoded image's, whichever format (Pillow gives a
    TIFF's size after the turn and a JPEG's before), and an XML that says so is not a size mismatch."""
    from bloodcell.runtime.images import load_image

    folder = VOCFolder(tmp_path)
    folder.add("turned", xml_size=(48, 64), image=False)  # the XML in the turned frame: 48 wide, 64 high
    exif = Image.Exif()
    exif[0x0112] = 6
    image = folder.root / "JPEGImages" / f"turned{suffix}"
    Image.new("RGB", (64, 48), (200, 120, 130)).save(image, exif=exif)
    dataset = load_voc(folder.root, decode_images=decode)
    assert load_image(image).shape[:2] == (64, 48)
    assert [(r.width, r.height) for r in dataset.records] == [(48, 64)]
    assert [f.kind for f in dataset.findings] == []


def test_written_annotations_read_back_as_the_boxes_they_hold(tmp_path: Path) -> None:
    """predict --voc writes what this reader reads: each box within half a pixel, clipped to the image (from
    1, as LabelImg saves and BCCD holds) and at least a pixel wide (a sliver would be a zero-size finding),
    truncated where the frame cuts it."""
    import xml.etree.ElementTree as ET

    from bloodcell.data.voc import voc_annotation
    from bloodcell.types import Detections

    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    Image.new("RGB", (64, 48), (200, 150, 160)).save(tmp_path / "JPEGImages" / "f.png")
    boxes = np.array([[3.4, 5.6, 20.2, 30.5], [-2.0, 10.0, 12.0, 20.0], [40.0, 30.0, 70.0, 49.0], [8.2, 8.2, 8.4, 8.4]])
    detections = Detections(boxes.astype(np.float32), np.array([0, 1, 2, 0]), np.array([0.9, 0.8, 0.7, 0.6]))
    xml = voc_annotation("f.png", 64, 48, detections, CLASS_NAMES)
    (tmp_path / "Annotations" / "f.xml").write_bytes(xml)
    dataset = load_voc(tmp_path)  # the model's boxes, not checked yet: said until a labelling tool saves the file
    assert [(f.file, f.kind, f.action) for f in dataset.findings] == [("f.xml", "unchecked-prelabel", "kept")]
    [record] = dataset.records
    assert record.labels.tolist() == [0, 1, 2, 0]
    clipped = np.clip(boxes, 1, [[64, 48, 64, 48]])
    assert np.abs(record.boxes[:3] - clipped[:3]).max() <= 0.5 and record.boxes[1].tolist() == [1, 10, 12, 20]
    assert record.boxes[3].tolist() == [8, 8, 9, 9]  # rounded to nothing: one pixel kept
    truncated = [obj.findtext("truncated") for obj in ET.fromstring(xml).iter("object")]
    assert truncated == ["0", "1", "1", "0"]
    saved = ET.fromstring(xml)  # as LabelImg saves a file: its own <source>
    saved.find("source/database").text = "Unknown"
    (tmp_path / "Annotations" / "f.xml").write_bytes(ET.tostring(saved))
    assert load_voc(tmp_path).findings == []


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_turned_boxes_move_as_pillow_moves_the_pixels(orientation):
    from PIL import ImageOps

    from bloodcell.data.voc import exif_turned_boxes

    stored = np.zeros((48, 64), np.uint8)
    stored[5:20, 10:30] = 255  # the box (10, 5, 30, 20) on the stored pixels
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    shown = np.asarray(ImageOps.exif_transpose(im))
    ys, xs = np.nonzero(shown)
    expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    moved = exif_turned_boxes(np.array([[10, 5, 30, 20]], np.float32), orientation, 64, 48)
    assert moved.tolist() == [expected]


def test_boxes_drawn_on_a_turned_images_stored_pixels_are_turned_with_it(tmp_path, capsys):
    """A phone JPEG stored 64x48 with EXIF "turned 90° clockwise" shows as 48x64; a labelling tool that
    ignores EXIF wrote <size> 64x48 and boxes on the stored pixels: they are turned as the image is."""
    voc = VOCFolder(tmp_path / "voc")
    voc.add("turned", [("WBC", (10, 5, 30, 20))])  # <size> WIDTH x HEIGHT: the stored pixels
    stored = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    stored[5:20, 10:30] = (200, 60, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(voc.image_path("turned"), exif=exif.tobytes())
    dataset = load_voc(voc.root, None)
    (record,) = dataset.records
    assert (record.width, record.height) == (HEIGHT, WIDTH)
    from bloodcell.runtime.images import load_image

    x1, y1, x2, y2 = record.boxes[0].astype(int)
    shown = load_image(voc.image_path("turned"))  # as training and prediction see it
    assert shown[y1:y2, x1:x2].mean() > 100 and shown.mean() < 20  # the box holds the cell, none is outside
    assert [(f.kind, f.action) for f in dataset.findings] == [("exif-turned", "boxes turned with the image")]
    # a half turn keeps the size: which pixels the boxes were drawn on cannot be told, and it is said
    exif[0x0112] = 3
    Image.fromarray(stored).save(voc.image_path("turned"), exif=exif.tobytes())
    dataset = load_voc(voc.root, None)
    assert dataset.records[0].boxes[0].tolist() == [10, 5, 30, 20]
    assert [f.kind for f in dataset.findings] == ["exif-orientation"]
    assert "EXIF shows turned.jpg turned 180°; boxes taken as drawn on the image as shown" in dataset.findings[0].detail


def test_an_xml_that_is_no_voc_annotation_and_an_empty_name_are_said(tmp_path):
    voc = make_voc(tmp_path / "voc", n_images=3)
    voc.xml_path("img0").write_text("<html><body><p>saved from a browser</p></body></html>")
    voc.xml_path("img1").write_text('<annotation xmlns="http://x/voc"><object><name>RBC</name></object></annotation>')
    voc.add("img2", [("", (2, 2, 30, 30)), ("WBC", (30, 10, 60, 44))])
    found = {(f.file, f.kind): f for f in load_voc(voc.root, None).findings}
    assert (
        found[("img0.xml", "not-voc")].detail == "root element is <html>, not <annotation>: not a Pascal VOC annotation"
    )
    assert "in an XML namespace (<{http://x/voc}annotation>)" in found[("img1.xml", "not-voc")].detail
    assert found[("img0.xml", "not-voc")].skips_image and found[("img1.xml", "not-voc")].skips_image
    assert found[("img2.xml", "unknown-class")].detail == "object has an empty <name>"
