"""`bloodcell data stats`: numbers per split and class, stats.json, and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from voc_factory import make_voc

from bloodcell.cli import main
from bloodcell.data.stats import ALL_SPLIT, compute_stats, plot_stats, write_stats


def test_stats_per_split_and_class(tmp_path: Path) -> None:
    make_voc(tmp_path, n_images=3)  # train: img0, img1; val and test: img2
    stats = compute_stats(tmp_path)
    assert [s.name for s in stats.splits] == ["train", "val", "test"]
    train = stats.splits[0]
    assert (train.images, train.boxes, train.boxes_per_image, train.findings) == (2, 6, 3.0, 0)
    rbc, wbc, platelets = train.classes
    assert (rbc.name, rbc.images, rbc.boxes, rbc.boxes_per_image) == ("RBC", 2, 2, 1.0)
    assert rbc.size is not None and rbc.size.p50 == 28.0  # a 28 x 28 box
    assert wbc.width is not None and (wbc.width.p50, wbc.height.p50) == (30.0, 34.0)
    assert platelets.size is not None and platelets.size.p10 == platelets.size.p90 == 7.0
    assert stats.sample is not None and stats.sample.labels == ("RBC", "WBC", "Platelets")


def test_no_split_files_gives_one_split_all(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n_images=2, splits=False)
    voc.add("only_rbc", [("RBC", (1, 1, 9, 9)), ("rbc", (20, 20, 40, 40))])
    stats = compute_stats(tmp_path)
    assert [(s.name, s.images, s.findings) for s in stats.splits] == [(ALL_SPLIT, 3, 1)]  # the alias is a finding
    assert [c.images for c in stats.splits[0].classes] == [3, 2, 2]


def test_class_without_boxes_has_no_percentiles(tmp_path: Path) -> None:
    make_voc(tmp_path, n_images=0, splits=False).add("x", [("RBC", (1, 1, 9, 9))])
    (_, wbc, _) = compute_stats(tmp_path).splits[0].classes
    assert (wbc.boxes, wbc.size, wbc.width) == (0, None, None)
    assert "-" in str(compute_stats(tmp_path))


def test_str_is_a_table_with_a_row_per_split_and_class(tmp_path: Path) -> None:
    make_voc(tmp_path, n_images=3)
    lines = str(compute_stats(tmp_path)).splitlines()
    assert lines[1].split()[:4] == ["split", "class", "images", "boxes"]
    assert len(lines) == 2 + 3 * 4  # title, header, (3 classes + total) per split
    assert lines[2].split()[:4] == ["train", "RBC", "2", "2"]
    assert lines[5].split() == ["train", "all", "2", "6", "3.00"]


def test_write_and_plot(tmp_path: Path) -> None:
    make_voc(tmp_path / "voc", n_images=3)
    stats = compute_stats(tmp_path / "voc")
    out = tmp_path / "out"
    path = write_stats(stats, out)
    data = json.loads(path.read_text())
    assert data["splits"]["val"]["classes"]["WBC"]["boxes"] == 1
    assert data["splits"]["train"]["classes"]["RBC"]["size_sqrt_area"] == {"p10": 28.0, "p50": 28.0, "p90": 28.0}
    pngs = plot_stats(stats, tmp_path / "voc", out)
    assert [p.name for p in pngs] == ["class_counts.png", "box_sizes.png", "sample.png"]
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 100
    assert sorted(p.name for p in out.iterdir()) == sorted(["stats.json", *(p.name for p in pngs)])  # no temp files


def test_bccd_stats_match_the_readme(bccd_root: Path) -> None:
    stats = compute_stats(bccd_root)
    assert [(s.name, s.images) for s in stats.splits] == [("train", 205), ("val", 87), ("test", 72)]
    assert sum(s.boxes for s in stats.splits) == 4146 + 372 + 361
    medians = {c.name: c.size.p50 for c in stats.splits[0].classes if c.size}
    assert medians["RBC"] == pytest.approx(102, abs=3)
    assert medians["WBC"] == pytest.approx(188, abs=5)
    assert medians["Platelets"] == pytest.approx(39, abs=2)


def test_cli_stats(tmp_path: Path, capsys) -> None:
    make_voc(tmp_path / "voc", n_images=2)
    assert main(["data", "stats", str(tmp_path / "voc"), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "train  RBC" in out and f"wrote {tmp_path / 'out' / 'sample.png'}" in out and err == ""
    assert f"wrote {tmp_path / 'out' / 'stats.json'}" in out
    assert (tmp_path / "out" / "stats.json").is_file()
    voc = make_voc(tmp_path / "faulty", n_images=2)
    voc.add("alias", [("rbc", (1, 1, 9, 9))])
    voc.write_split("val", ["img1", "alias"])
    assert main(["data", "stats", str(voc.root), "--out", str(tmp_path / "out2")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {voc.root}: label findings repaired or dropped (val 1)" in err
    assert f"`bloodcell data check {voc.root}` lists them" in err
    voc.write_split("val", ["img1", "gone"])  # an image the split names has no annotation: left out, exit 1
    assert main(["data", "stats", str(voc.root), "--out", str(tmp_path / "out3")]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # the exit code's reason, said last
    assert last.startswith(f"error: {voc.root}: listed images left out (val 1); the statistics cover the others")
    stats = json.loads((tmp_path / "out3" / "stats.json").read_text())
    assert stats["splits"]["val"]["skipped_images"] == 1 and stats["splits"]["train"]["skipped_images"] == 0


def test_a_split_a_dataset_yaml_reads_from_another_splits_list_is_said_once(tmp_path: Path, capsys) -> None:
    """`splits: {val: test}` makes val and test one list: its rows once, then a line saying so (they were
    printed twice, as if a second set of images), and one findings count."""
    voc = make_voc(tmp_path / "v", n_images=3)
    voc.add("odd", [("rbc", (1, 1, 9, 9))])  # a finding, in the test list only
    voc.write_split("test", ["img2", "odd"])
    spec = tmp_path / "d.yaml"
    spec.write_text(f"sources:\n  - path: {voc.root}\nsplits: {{val: test}}\n")
    stats = compute_stats(spec)
    assert [(s.name, s.images, s.same_as) for s in stats.splits] == [
        ("train", 2, None),
        ("val", 2, None),
        ("test", 2, "val"),
    ]
    assert [s.name for s in stats.distinct] == ["train", "val"]
    text = str(stats)
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["train"] * 4 + ["val"] * 4 + ["test:"]
    assert text.endswith("test: the same images as val (the dataset YAML's splits read one list)")
    assert "(val 1);" in (stats.findings_warning() or "")
    assert json.loads(write_stats(stats, tmp_path / "o").read_text())["splits"]["test"]["same_images_as"] == "val"
