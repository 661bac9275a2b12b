"""Dataset YAML: stacked VOC sources, later ones override earlier ones per image, label completeness."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from voc_factory import make_voc

from bloodcell.cli import main
from bloodcell.data.check import findings_note
from bloodcell.data.sources import load_dataset, read_spec
from bloodcell.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]


def write_spec(tmp_path: Path, bccd_root: Path, dense_root: Path, extra: str = "") -> Path:
    spec = tmp_path / "data.yaml"
    spec.write_text(
        f"sources:\n  - path: {bccd_root}\n    exhaustive: [WBC]\n"
        f"  - path: {dense_root}\n    exhaustive: [RBC, WBC, Platelets]\n{extra}"
    )
    return spec


def test_dense_labels_override_sparse_ones_per_image(tmp_path, bccd_root, dense_root):
    merged = load_dataset(write_spec(tmp_path, bccd_root, dense_root), "val", decode_images=False)
    sparse = {r.image_path.name: r for r in load_dataset(bccd_root, "val", decode_images=False).records}
    dense = {r.image_path.name: r for r in load_dataset(dense_root, "val", decode_images=False).records}
    assert len(merged.records) == len(sparse) == 87 and len(dense) == 42
    for r in merged.records:
        name = r.image_path.name
        source = dense.get(name, sparse[name])
        assert np.array_equal(r.boxes, source.boxes)
        assert r.exhaustive_mask(3).tolist() == ([True] * 3 if name in dense else [False, True, False])
    # BCCD-dense has more red cells than BCCD's XML on the same images
    assert sum((r.labels == 0).sum() for r in merged.records) > sum((r.labels == 0).sum() for r in sparse.values())


def test_plain_folder_is_one_exhaustive_source(bccd_root):
    records = load_dataset(bccd_root, "val", decode_images=False).records
    assert all(r.exhaustive_mask(3).all() for r in records)


def test_shipped_example_yaml_reads(bccd_root, dense_root):
    spec = read_spec(REPO / "datasets" / "bccd-dense.yaml")
    assert [s.path.resolve() for s in spec.sources] == [bccd_root.resolve(), dense_root.resolve()]
    assert spec.sources[0].exhaustive == ("WBC",)


def test_split_that_only_one_source_has(tmp_path, bccd_root, dense_root):
    # BCCD-dense has no test split: test comes from BCCD alone
    records = load_dataset(write_spec(tmp_path, bccd_root, dense_root), "test", decode_images=False).records
    assert len(records) == 72 and all(r.exhaustive_mask(3).tolist() == [False, True, False] for r in records)


@pytest.mark.parametrize(
    "text, message",
    [
        ("sources: []\n", "non-empty list"),
        ("sources:\n  - path: x\n    exhaustive: [NK]\n", "not among"),
        ("sources:\n  - path: x\n    colour: red\n", "unknown keys"),
        ("source:\n  - path: x\n", "unknown keys"),
        ("sources: [\n", "cannot read dataset YAML: line 2, column 1: expected the node content"),
        ("sources:\n  - path: x\n   exhaustive: [RBC]\n", "YAML: line 3, column 4: expected <block end>"),
        ("sources:\n  - 3\n", "'path' string"),
        ("sources:\n  - path: nowhere\n", r"sources\[0\]: path 'nowhere' \(.*nowhere\) is not a folder"),
        (
            "sources:\n  - path: ${BLOODCELL_UNSET_9}/x\n",
            r"not a folder \(environment variable BLOODCELL_UNSET_9 is not",
        ),
        ("sources:\n  - {path: x, path: y}\n", "line 2, column 15: duplicate key 'path'"),
        ("sources:\n  - path: .\n  - path: ./\n", r"sources\[1\]: path './' \(.*\) is listed twice"),
        ("sources:\n  - ? [a, b]\n    : 1\n", "line 2, column 7: found unhashable key"),
        ("sources:\n  - path: x\n    aliases: [WBC]\n", r"sources\[0\]: 'aliases' must map XML class names"),
        ("sources:\n  - path: x\n    aliases: {Neutrophil: NK}\n", "maps to 'NK', which is not among"),
        ("sources:\n  - path: x\n    aliases: {Neutrophil: 3}\n", "expected a class name or null"),
        ("sources:\n  - path: x\n    aliases: {' platelet': WBC}\n", "' platelet' is read as 'Platelets' already"),
        ("sources:\n  - path: x\n    aliases: {NK: RBC, n-k: WBC}\n", "'NK' and 'n-k' are one name to the reader"),
    ],
)
def test_bad_yaml_is_a_clear_error(tmp_path, text, message):
    (tmp_path / "Annotations").mkdir()  # "." is a VOC folder (for the one listed twice)
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(spec, "val")
    assert str(spec) in str(info.value)


def test_missing_split_everywhere(tmp_path, bccd_root, dense_root):
    with pytest.raises(DatasetError, match="no source has split 'nope'"):
        load_dataset(write_spec(tmp_path, bccd_root, dense_root), "nope")


def test_data_check_stats_and_export_take_a_dataset_yaml(tmp_path, bccd_root, dense_root, capsys):
    import json

    from bloodcell.cli import main

    spec = write_spec(tmp_path, bccd_root, dense_root)
    merged = load_dataset(spec, "val", decode_images=False).records
    rbc = int(sum((r.labels == 0).sum() for r in merged))
    assert main(["data", "check", str(spec), "--split", "val", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 87 and report["boxes_after_repair"]["RBC"] == rbc  # dense labels where they exist
    assert all(f["file"].startswith(("BCCD/", "BCCD-dense/")) for f in report["findings"])  # which source's file
    assert main(["data", "stats", str(spec), "--out", str(tmp_path / "stats")]) == 0
    stats = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert stats["splits"]["val"]["classes"]["RBC"]["boxes"] == rbc
    assert (tmp_path / "stats" / "sample.png").is_file()
    out = tmp_path / "coco"
    assert main(["data", "export", str(spec), "--format", "coco", "--out", str(out), "--split", "val"]) == 0
    coco = json.loads((out / "val.json").read_text())
    red = coco["categories"][0]["id"]
    assert len(coco["images"]) == 87 and sum(a["category_id"] == red for a in coco["annotations"]) == rbc


def test_a_split_the_yaml_names_must_exist_for_stats(tmp_path, bccd_root):
    from bloodcell.data.sources import available_splits

    spec = tmp_path / "renamed.yaml"
    spec.write_text(f"sources:\n  - path: {bccd_root}\nsplits: {{train: nosuch}}\n")
    with pytest.raises(DatasetError, match=r"renamed.yaml: splits \['train'\] name ImageSets/Main/nosuch.txt"):
        available_splits(spec)
    spec.write_text(f"sources:\n  - path: {bccd_root}\nsplits: {{train: trainval}}\n")
    assert available_splits(spec) == ["train", "val", "test"]


def test_a_later_source_labels_its_images_in_splits_it_has_no_file_for(tmp_path, bccd_root, dense_root):
    """BCCD-dense has train and val files only; trainval (BCCD's file) must still take the dense labels."""
    spec = write_spec(tmp_path, bccd_root, dense_root)
    trainval = load_dataset(spec, "trainval", decode_images=False).records
    parts = [load_dataset(spec, s, decode_images=False).records for s in ("train", "val")]
    assert len(trainval) == 292 and sum(all(r.exhaustive) for r in trainval) == 132
    by_name = {r.image_path.name: r for part in parts for r in part}
    assert all(np.array_equal(r.boxes, by_name[r.image_path.name].boxes) for r in trainval)


def test_findings_of_labels_a_later_source_replaces_say_superseded(tmp_path, bccd_root, dense_root):
    merged = load_dataset(write_spec(tmp_path, bccd_root, dense_root), None, decode_images=False)
    by_file = {f.file: f for f in merged.findings}
    # BloodImage_00338's zero-size box is in BCCD's XML; BCCD-dense labels that image, so nothing was dropped
    assert by_file["BCCD/BloodImage_00338.xml"].action == "superseded: BCCD-dense labels this image"
    assert by_file["BCCD/BloodImage_00020.xml"].action.startswith("merged")  # no dense labels: the repair stands
    # train's and val's one-line note counts only the findings that still matter
    from bloodcell.data.check import findings_note

    standing = [f for f in merged.findings if not f.action.startswith("superseded")]
    assert 0 < len(standing) < len(merged.findings)
    assert f": {len(standing)} label findings (" in findings_note(merged)


def test_an_image_a_later_source_labels_is_not_a_failed_input(tmp_path):
    from voc_factory import VOCFolder

    sparse, dense = VOCFolder(tmp_path / "sparse"), VOCFolder(tmp_path / "dense")
    sparse.add("a")
    sparse.xml_path("a").write_text("<annotation><object>")  # broken in the first source only
    dense.add("a", [("RBC", (1, 1, 20, 20)), ("RBC", (22, 22, 40, 40))])
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {sparse.root}\n  - path: {dense.root}\n")
    merged = load_dataset(spec, None)
    assert [len(r.boxes) for r in merged.records] == [2]
    assert [(f.kind, f.skips_image) for f in merged.findings] == [("malformed-xml", False)]


def test_a_broken_later_source_falls_back_to_the_earlier_labels_and_says_so(tmp_path):
    from voc_factory import VOCFolder

    sparse, dense = VOCFolder(tmp_path / "sparse"), VOCFolder(tmp_path / "dense")
    sparse.add("a", [("WBC", (1, 1, 20, 20))])
    dense.add("a")
    dense.xml_path("a").write_text("<annotation><object>")  # the dense labels broken: the sparse ones stand in
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {sparse.root}\n    exhaustive: [WBC]\n  - path: {dense.root}\n")
    merged = load_dataset(spec, None)
    # the image is kept with the sparse labels and their completeness, and the finding says so (not "skipped")
    assert [(len(r.boxes), r.exhaustive) for r in merged.records] == [(1, (False, True, False))]
    [finding] = merged.findings
    assert (finding.file, finding.kind, finding.skips_image, finding.falls_back) == (
        "dense/a.xml",
        "malformed-xml",
        False,
        True,
    )
    assert finding.action == "skipped here; fell back to sparse's labels (exhaustive there: WBC)"
    assert main(["data", "check", str(spec)]) == 1  # still a failed input of its source


def test_a_yaml_reports_what_its_folders_report(tmp_path):
    """Read through a dataset YAML, a folder's split list naming an image twice and its forgotten images are
    findings as they are when the folder is read alone; an image another source labels is not forgotten."""
    a, b = make_voc(tmp_path / "a", n_images=3), make_voc(tmp_path / "b", n_images=1, splits=False)
    a.write_split("val", ["img2", "img2"])
    (b.root / "Annotations" / "img0.xml").unlink()  # b's picture img0.jpg: labelled by a under the same name
    (b.root / "JPEGImages" / "img0.jpg").rename(b.root / "JPEGImages" / "stray.jpg")
    shutil.copy(a.root / "JPEGImages" / "img0.jpg", b.root / "JPEGImages" / "img0.jpg")
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {a.root}\n  - path: {b.root}\n    exhaustive: [wbc, ' Platelet ']\n")
    assert read_spec(spec).sources[1].exhaustive == ("WBC", "Platelets")  # as the XML reader spells them
    val = load_dataset(spec, "val", decode_images=False)
    assert [(f.file, f.kind) for f in val.findings] == [("a/img2.xml", "duplicate-id")]
    assert len(val.records) == 1
    whole = load_dataset(spec, None, decode_images=False)
    assert [(f.file, f.kind) for f in whole.findings] == [("b/stray.jpg", "missing-annotation")]


def test_a_yaml_anchor_merged_into_a_source_may_be_overridden(tmp_path):
    """`<<: *d` then `path:`: the merged path is replaced, as YAML means it (no duplicate key)."""
    for name in ("d1", "d2"):
        (tmp_path / name / "Annotations").mkdir(parents=True)
    spec = tmp_path / "m.yaml"
    spec.write_text("sources:\n  - &d {path: d1, exhaustive: [RBC]}\n  - <<: *d\n    path: d2\n")
    assert [(s.path.name, s.exhaustive) for s in read_spec(spec).sources] == [("d1", ("RBC",)), ("d2", ("RBC",))]


@pytest.mark.parametrize("where", ["JPEGImages", "empty"])
def test_a_source_that_is_not_a_voc_folder_is_refused(tmp_path, where, capsys):
    """A source naming the images' folder (or an empty one) would add no image, and the run would go on."""
    from voc_factory import VOCFolder

    voc = VOCFolder(tmp_path / "mine")
    voc.add("a")
    source = voc.root / "JPEGImages" if where == "JPEGImages" else tmp_path / "empty"
    source.mkdir(exist_ok=True)
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {voc.root}\n  - path: {source}\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(spec, None)
    message = str(info.value)
    assert message.startswith(f"{spec}: sources[1]: path '{source}': {source}: no Annotations/ folder"), message
    assert (f"(it is inside one: give {voc.root})" in message) == (where == "JPEGImages")
    assert main(["data", "check", str(spec)]) == 2
    assert "sources[1]" in capsys.readouterr().err


def test_a_later_source_replaces_an_image_saved_in_another_format(tmp_path):
    """Override is per image id: the dense source's a.png replaces the sparse source's a.jpg, not beside it."""
    from PIL import Image
    from voc_factory import VOCFolder, voc_xml

    sparse, dense = VOCFolder(tmp_path / "sparse"), VOCFolder(tmp_path / "dense")
    sparse.add("a", [("WBC", (1, 1, 20, 20))])
    sparse.add("b", [("WBC", (5, 5, 30, 30))])
    Image.open(sparse.image_path("a")).save(dense.root / "JPEGImages" / "a.png")
    dense.xml_path("a").write_text(voc_xml("a.png", [("RBC", (1, 1, 20, 20)), ("WBC", (22, 22, 40, 40))]))
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {sparse.root}\n    exhaustive: [WBC]\n  - path: {dense.root}\n")
    merged = load_dataset(spec, None)
    assert [(r.image_path.name, len(r.boxes), r.exhaustive) for r in merged.records] == [
        ("a.png", 2, (True, True, True)),
        ("b.jpg", 1, (False, True, False)),
    ]


def test_a_source_names_its_own_classes_and_the_rest_of_its_images_keep_their_completeness(tmp_path):
    """A lab that labels white-cell subtypes maps them in its source; an unmapped name leaves its image (only)
    without exhaustive classes, under the source's own `exhaustive`."""
    lab = make_voc(tmp_path / "lab", n_images=1, splits=False)
    lab.add("diff", (("RBC", (10, 10, 30, 30)), ("Neutrophil", (30, 10, 50, 40)), ("Eosinophil", (1, 1, 9, 9))))
    lab.add("odd", (("RBC", (10, 10, 30, 30)), ("Basophil", (30, 10, 50, 40))))
    spec = tmp_path / "data.yaml"
    spec.write_text(
        f"sources:\n  - path: {lab.root}\n    exhaustive: [RBC, WBC]\n"
        "    aliases: {Neutrophil: wbc, Eosinophil: White Blood Cell}\n"
    )
    assert read_spec(spec).sources[0].aliases == (("Neutrophil", "WBC"), ("Eosinophil", "WBC"))
    dataset = load_dataset(spec, None, decode_images=False)
    records = {r.image_id: r for r in dataset.records}
    assert records["diff"].labels.tolist() == [0, 1, 1]
    assert {i: r.exhaustive for i, r in records.items()} == {
        "img0": (True, True, False),
        "diff": (True, True, False),
        "odd": (False, False, False),
    }
    # the source's own names are applied, not repairs (`data check --strict` passes on them); the unknown one is said
    assert [(f.file, f.kind) for f in dataset.findings] == [("lab/odd.xml", "unknown-class")]
    [note] = findings_note(dataset).splitlines()[1:]  # type: ignore[union-attr]
    assert note.startswith(f"warning: {spec}: 1 of 3 images have boxes of classes that are none of RBC, WBC, Platelets")
    assert "(Basophil 1): they label no class exhaustively" in note and "source's aliases ({Neutrophil: WBC}" in note


def test_a_fall_back_names_the_completeness_of_the_labels_kept(tmp_path):
    """An earlier source's labels stand in for a broken later file: the finding says what they label
    exhaustively in that image (an unknown class there: none), not what the source says in general."""
    sparse, dense = make_voc(tmp_path / "sparse", 0, False), make_voc(tmp_path / "dense", 0, False)
    sparse.add("a", (("RBC", (10, 10, 30, 30)), ("Band cell", (30, 10, 50, 40))))
    dense.add("a", image=False)  # its XML names an image it does not have: this source cannot label it
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {sparse.root}\n  - path: {dense.root}\n")
    [fell_back] = [f for f in load_dataset(spec, None, decode_images=False).findings if f.falls_back]
    assert fell_back.action == "skipped here; fell back to sparse's labels (exhaustive there: none)"


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ("{NO: WBC}", "YAML read a name as False: quote it"),
        ("{Neutrophil: WBC}\n    exhaustive: [Neutrophil]", "'Neutrophil' is an alias: name its class, 'WBC'"),
    ],
)
def test_alias_slips_are_named(tmp_path, aliases, message):
    (tmp_path / "v" / "Annotations").mkdir(parents=True)
    spec = tmp_path / "d.yaml"
    spec.write_text(f"sources:\n  - path: v\n    aliases: {aliases}\n")
    with pytest.raises(DatasetError, match=message):
        read_spec(spec)


def test_a_name_near_a_declared_alias_is_said_to_be_near_it(tmp_path):
    """The slip may be the alias's ("Neutrophill:" in the YAML) or the XML's: both spellings are named."""
    lab = make_voc(tmp_path / "lab", n_images=0, splits=False)
    lab.add("a", (("Neutrophil", (30, 10, 50, 40)),))
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {lab.root}\n    aliases: {{Neutrophill: WBC}}\n")
    [finding, unused] = load_dataset(spec, None, decode_images=False).findings
    assert unused.kind == "unused-alias" and "'Neutrophill'" in unused.detail  # the key, named from its side too
    assert finding.detail.endswith(
        "(perhaps 'Neutrophill', which the aliases map to 'WBC'? add this spelling to them or fix the XML)"
    )


def test_aliases_at_the_top_of_the_file_are_every_sources_and_a_sources_own_win(tmp_path):
    a, b = make_voc(tmp_path / "a", 0, False), make_voc(tmp_path / "b", 0, False)
    a.add("x", (("Neutrophil", (30, 10, 50, 40)), ("Monocyte", (1, 1, 20, 20))))
    b.add("y", (("neutrophil", (30, 10, 50, 40)),))
    spec = tmp_path / "data.yaml"
    spec.write_text(
        f"aliases: {{Neutrophil: WBC, Monocyte: WBC}}\nsources:\n  - path: {a.root}\n    aliases: {{monocyte: null}}\n"
        f"  - path: {b.root}\n"
    )
    assert [s.aliases for s in read_spec(spec).sources] == [
        (("Neutrophil", "WBC"), ("monocyte", None)),
        (("Neutrophil", "WBC"), ("Monocyte", "WBC")),
    ]
    dataset = load_dataset(spec, None, decode_images=False)
    assert {r.image_id: r.labels.tolist() for r in dataset.records} == {"x": [1], "y": [1]} and not dataset.findings
    spec.write_text(f"aliases: {{Neutrophil: NK}}\nsources:\n  - path: {a.root}\n")
    with pytest.raises(DatasetError, match=f"^{spec}: aliases: 'Neutrophil' maps to 'NK'"):
        read_spec(spec)


def test_an_alias_no_annotation_uses_is_said_when_the_folders_are_read_whole(tmp_path):
    """`aliases: {Neutrophill: WBC}` (a typo) leaves every Neutrophil unknown: the key itself is named too."""
    lab = make_voc(tmp_path / "lab", 0, False)
    lab.add("a", (("Neutrophil", (30, 10, 50, 40)), ("lymphocyte", (1, 1, 20, 20))))
    lab.write_split("val", ["a"])
    spec = tmp_path / "data.yaml"
    spec.write_text(
        f"aliases: {{Lymphocyte: WBC}}\nsources:\n  - path: {lab.root}\n    aliases: {{Neutrophill: WBC}}\n"
    )
    whole = load_dataset(spec, None, decode_images=False).findings
    assert [(f.file, f.kind) for f in whole] == [("lab/a.xml", "unknown-class"), ("data.yaml", "unused-alias")]
    assert whole[1].detail.startswith("aliases 'Neutrophill': no <name> in the sources' annotations reads so")
    assert [f.kind for f in load_dataset(spec, "val", decode_images=False).findings] == ["unknown-class"]


def test_sources_in_the_wrong_order_are_said(tmp_path, bccd_root, dense_root):
    """A later source wins: dense labels listed before BCCD's sparse ones would go unused, silently."""
    spec = tmp_path / "reversed.yaml"
    spec.write_text(f"sources:\n  - path: {dense_root}\n  - path: {bccd_root}\n    exhaustive: [WBC]\n")
    found = [f for f in load_dataset(spec, None, decode_images=False).findings if f.kind == "source-order"]
    assert [f.detail for f in found] == [
        "BCCD's labels replace BCCD-dense's on 132 images, though BCCD-dense boxes more classes exhaustively "
        "(Platelets, RBC); the later source wins: list BCCD-dense after it if its labels should count"
    ]
    right = load_dataset(write_spec(tmp_path, bccd_root, dense_root), None, decode_images=False).findings
    assert not [f for f in right if f.kind in ("source-order", "unused-source")]


def test_a_source_whose_every_image_is_labelled_again_is_said(tmp_path):
    a, b = make_voc(tmp_path / "a", n_images=2), make_voc(tmp_path / "b", n_images=3)
    spec = tmp_path / "d.yaml"
    spec.write_text(f"sources:\n  - path: {a.root}\n  - path: {b.root}\n")
    found = [(f.file, f.kind, f.detail) for f in load_dataset(spec, None, decode_images=False).findings]
    assert found == [
        ("d.yaml", "unused-source", "every image a labels is labelled again by a later source: its labels are unused")
    ]
    # one split's read: the source may hold another split's images, so nothing is said there
    assert not [f for f in load_dataset(spec, "train", decode_images=False).findings if f.kind == "unused-source"]


def test_a_misspelt_split_key_is_refused(tmp_path):
    from bloodcell.data.sources import available_splits

    voc = make_voc(tmp_path / "lab", n_images=3)
    for name, new in (("train", "training"), ("val", "validation")):
        (voc.root / "ImageSets" / "Main" / f"{name}.txt").rename(voc.root / "ImageSets" / "Main" / f"{new}.txt")
    spec = tmp_path / "lab.yaml"
    spec.write_text(f"sources:\n  - path: {voc.root}\nsplits: {{trian: training, val: validation}}\n")
    with pytest.raises(DatasetError, match=r"lab.yaml: splits: 'trian' is not a split bloodcell reads by itself \(did"):
        available_splits(spec)
    assert main(["data", "check", str(spec)]) == 2
    spec.write_text(f"sources:\n  - path: {voc.root}\nsplits: {{train: training, trainval: training, test2: test}}\n")
    assert available_splits(spec) == ["train", "test"]  # VOC's trainval, and a test2 beside test, are meant
    spec.write_text(f"sources:\n  - path: {voc.root}\nsplits: {{train: training, val: validation, holdout: test}}\n")
    assert available_splits(spec) == ["train", "val", "test"]  # another name is a split --split reads
    assert len(load_dataset(spec, "holdout", decode_images=False).records) == 1
    spec.write_text(f"sources:\n  - path: {voc.root}\nsplits: {{train: training, extra: nosuch}}\n")
    with pytest.raises(DatasetError, match=r"splits \['extra'\] name ImageSets/Main/nosuch.txt, which no source has"):
        available_splits(spec)


def test_utf16_yaml_and_split_lists_are_read(tmp_path):
    """PowerShell's `>` saves UTF-16 with a byte-order mark: read as what it says, not refused as bad UTF-8."""
    voc = make_voc(tmp_path / "lab", n_images=3)
    (voc.root / "ImageSets" / "Main" / "train.txt").write_text("img0\nimg1\n", encoding="utf-16")
    spec = tmp_path / "lab.yaml"
    spec.write_text(f"sources:\n  - path: {voc.root}\n", encoding="utf-16")
    assert [r.image_id for r in load_dataset(spec, "train", decode_images=False).records] == ["img0", "img1"]
    spec.write_bytes(f"sources:\n  - path: {voc.root}/caf".encode() + b"\xe9\n")  # Latin-1
    with pytest.raises(DatasetError, match=r"lab.yaml: not UTF-8 text \(.* at byte \d+\); save it as UTF-8"):
        read_spec(spec)
