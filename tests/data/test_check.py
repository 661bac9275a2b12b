"""`bloodcell data check`: exit codes, JSON output, and one-line errors for unusable datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from voc_factory import BCCD_FINDINGS, UNUSABLE, VOCFolder, make_voc

from bloodcell.cli import main
from bloodcell.data.check import check_dataset, format_findings
from bloodcell.data.sources import load_dataset
from bloodcell.data.voc import UNKNOWN_DROPPED


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["data", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bccd_json_lists_exactly_the_known_faults(bccd_root: Path, capsys) -> None:
    code, out, err = _run(capsys, str(bccd_root), "--json", "--strict")
    assert code == 1 and err == ""
    report = json.loads(out)
    assert {(f["file"], f["object"], f["kind"]) for f in report["findings"]} == BCCD_FINDINGS
    assert report["summary"] == {"near-duplicate": 7, "degenerate-box": 2}
    assert report["images"] == 364
    assert report["boxes_after_repair"] == {"RBC": 4146, "WBC": 372, "Platelets": 361}


def test_bccd_table_ends_with_the_summary(bccd_root: Path, capsys) -> None:
    code, out, _ = _run(capsys, "--data", str(bccd_root))
    assert code == 0  # findings are repaired, so they fail only under --strict
    lines = out.strip().splitlines()
    assert len(lines) == 1 + len(BCCD_FINDINGS) + 1  # header, one row per finding, summary
    assert lines[-1] == (
        "364 images, 4146 RBC, 372 WBC, 361 Platelets after repair; 9 findings (2 degenerate-box, 7 near-duplicate)"
    )


def test_json_goes_to_a_file_when_named_as_for_val_and_predict(bccd_root: Path, tmp_path: Path, capsys) -> None:
    """`--json FILE` writes the report (the table still printed); `--json` alone prints it; `--json FOLDER`
    with no dataset named otherwise is the old flag followed by the dataset."""
    code, printed, _ = _run(capsys, str(bccd_root), "--split", "test", "--json")
    out = tmp_path / "reports" / "check.json"
    code_file, table, _ = _run(capsys, str(bccd_root), "--split", "test", "--json", str(out))
    assert code == code_file == 0
    assert json.loads(out.read_text()) == json.loads(printed)
    assert table.splitlines()[-1] == f"wrote {out}" and "72 images" in table
    code_old, printed_old, _ = _run(capsys, "--json", str(bccd_root), "--split", "test")
    assert code_old == 0 and json.loads(printed_old) == json.loads(printed)
    code_bad, _, err = _run(capsys, str(bccd_root), "--json", str(tmp_path))
    assert code_bad == 2 and f"--json {tmp_path}: is a folder, not a file to write the report to" in err
    spec = tmp_path / "bccd.yaml"  # a dataset YAML after --json is the dataset, never written over
    spec.write_text(f"sources:\n  - path: {bccd_root}\n")
    code_yaml, printed_yaml, _ = _run(capsys, "--json", str(spec), "--split", "test")
    assert code_yaml == 0 and json.loads(printed_yaml)["images"] == 72
    code_refused, _, err = _run(capsys, str(bccd_root), "--json", str(spec))
    assert code_refused == 2 and f"--json {spec}: is a dataset file, not a file to write the report to" in err
    assert spec.read_text().startswith("sources:")


def test_bccd_split(bccd_root: Path, capsys) -> None:
    code, out, _ = _run(capsys, str(bccd_root), "--split", "test", "--json")
    report = json.loads(out)
    assert code == 0 and report["split"] == "test" and report["images"] == 72
    assert [f["file"] for f in report["findings"]] == ["BloodImage_00284.xml"]


@pytest.mark.parametrize("strict", [False, True])
def test_clean_dataset_exits_0(tmp_path: Path, capsys, strict: bool) -> None:
    make_voc(tmp_path)
    code, out, err = _run(capsys, str(tmp_path), *(["--strict"] if strict else []))
    assert (code, err) == (0, "")
    assert out.strip() == "2 images, 2 RBC, 2 WBC, 2 Platelets after repair; 0 findings"


@pytest.mark.parametrize("strict", [False, True])
def test_findings_exit_1_only_when_strict(tmp_path: Path, capsys, strict: bool) -> None:
    voc = make_voc(tmp_path)
    voc.add("bad", [("Platlets", (1, 1, 9, 9)), ("RBC", (5, 5, 5, 5))])
    voc.write_split("train", ["img0", "bad"])
    code, out, _ = _run(capsys, str(tmp_path), "--json", *(["--strict"] if strict else []))
    assert code == (1 if strict else 0)
    report = json.loads(out)
    assert [(f["file"], f["object"], f["kind"]) for f in report["findings"]] == [
        ("bad.xml", 1, "class-alias"),  # the first <object> of the file, as a person counts
        ("bad.xml", 2, "degenerate-box"),
    ]
    assert report["summary"] == {"class-alias": 1, "degenerate-box": 1}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_dataset_is_one_line_exit_2(tmp_path: Path, capsys, case: str) -> None:
    build, split, words = UNUSABLE[case]
    root = tmp_path / "voc"
    build(root)
    code, out, err = _run(capsys, str(root), *(["--split", split] if split else []))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: ") and words in err


def test_dataset_from_environment(tmp_path: Path, capsys, monkeypatch) -> None:
    make_voc(tmp_path)
    monkeypatch.setenv("BLOODCELL_DATA", str(tmp_path))
    code, out, _ = _run(capsys)
    assert code == 0 and "2 images" in out


def test_format_findings_names_file_and_object(tmp_path: Path) -> None:
    VOCFolder(tmp_path).add("x", [("RBC", (1, 1, 9, 9)), ("Neutrophil", (2, 2, 8, 8))])
    text = format_findings(check_dataset(tmp_path))
    header, row, summary = text.splitlines()
    assert header.split()[:3] == ["file", "object", "kind"]
    assert row.split()[:3] == ["x.xml", "2", "unknown-class"] and row.endswith(UNKNOWN_DROPPED)  # the 2nd <object>
    assert summary.endswith("1 findings (1 unknown-class)")


@pytest.mark.parametrize("strict", [False, True])
def test_a_skipped_image_is_a_failed_input_exit_1(tmp_path: Path, capsys, strict: bool) -> None:
    voc = make_voc(tmp_path)
    voc.image_path("img0").unlink()  # its annotation now has no image: the image is skipped, not repaired
    code, out, _ = _run(capsys, str(tmp_path), "--json", *(["--strict"] if strict else []))
    assert code == 1
    assert [(f["kind"], f["action"]) for f in json.loads(out)["findings"]] == [("missing-image", "skipped image")]


def test_check_without_split_checks_the_split_lists_too(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path, n_images=4)  # train img0-img2, val and test img3
    voc.write_split("val", ["img3", "img1", "img3", "gone", "img2.jpg"])  # leak, twice, no such id, a suffix
    code, out, _ = _run(capsys, str(tmp_path), "--json")
    found = {(f["file"], f["kind"]): f for f in json.loads(out)["findings"]}
    assert set(found) == {
        ("img3.xml", "duplicate-id"),
        ("gone.xml", "missing-annotation"),
        ("img2.jpg.xml", "missing-annotation"),
        ("img1.jpg", "split-overlap"),
    }
    duplicate = found[("img3.xml", "duplicate-id")]["detail"]
    assert duplicate == "split val: listed 2 times in ImageSets/Main/val.txt; used once"
    assert "without a suffix: img2)" in found[("img2.jpg.xml", "missing-annotation")]["detail"]
    gone = found[("gone.xml", "missing-annotation")]["detail"]  # the list's fault: it names the list
    assert (
        gone
        == f"split val: ImageSets/Main/val.txt lists gone, but {tmp_path / 'Annotations' / 'gone.xml'} is not there"
    )
    # img2 is still in the report's images (the whole folder): only the split goes without it
    assert found[("img2.jpg.xml", "missing-annotation")]["action"] == "skipped from val"
    assert found[("img1.jpg", "split-overlap")]["detail"].startswith("in both train and val")
    assert code == 1  # the ids without annotation are images left out
    # the split as the other commands read it: each image once
    assert [r.image_id for r in load_dataset(tmp_path, split="val").records] == ["img3", "img1"]


def test_an_unreadable_split_list_is_a_finding_not_the_end_of_the_report(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path, n_images=2)
    (voc.root / "ImageSets" / "Main" / "test.txt").write_bytes(b"\xc3\x28 img1\n")  # no UTF-8, no UTF-16 mark
    code, out, _ = _run(capsys, str(tmp_path), "--json")
    report = json.loads(out)
    assert [(f["file"], f["kind"]) for f in report["findings"]] == [("ImageSets/Main/test.txt", "unreadable-split")]
    assert report["images"] == 2 and code == 1


def test_the_hint_command_quotes_a_folder_with_spaces(tmp_path: Path) -> None:
    """The command a warning suggests can be pasted into a shell as it is printed."""
    from bloodcell.data.check import findings_note

    voc = make_voc(tmp_path / "my slides")
    voc.add("bad", [("RBC", (5, 5, 5, 5))])
    note = findings_note(load_dataset(voc.root, None, decode_images=False))
    assert f"`bloodcell data check '{voc.root}'` lists them" in note


def test_an_empty_split_list_is_a_finding(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path, n_images=3)
    voc.write_split("test", [])  # saved before it was filled
    code, out, _ = _run(capsys, str(tmp_path), "--json")
    found = [(f["file"], f["kind"]) for f in json.loads(out)["findings"]]
    assert found == [("ImageSets/Main/test.txt", "empty-split")]
    assert code == 0  # no image is left out: a finding, an error only with --strict
    code, out, _ = _run(capsys, str(tmp_path), "--split", "test", "--json")  # that split alone: the same
    assert [(f["file"], f["kind"]) for f in json.loads(out)["findings"]] == found and code == 0


def test_an_empty_split_list_read_through_a_yaml_is_the_same_finding(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path / "a", n_images=3)
    voc.write_split("test", [])
    spec = tmp_path / "d.yaml"
    spec.write_text(f"sources:\n  - path: {voc.root}\n")
    code, out, _ = _run(capsys, str(spec), "--json")
    assert [f["kind"] for f in json.loads(out)["findings"]] == ["empty-split"] and code == 0


def test_annotations_in_a_subfolder_are_a_finding(tmp_path: Path, capsys) -> None:
    """A labelling tool's per-batch folders (Annotations/batch2/x.xml): not read, and said, not left out silently."""
    voc = make_voc(tmp_path / "voc", n_images=2)
    (voc.root / "Annotations" / "batch2").mkdir()
    voc.xml_path("img1").rename(voc.root / "Annotations" / "batch2" / "img1.xml")
    code, out, _ = _run(capsys, str(voc.root), "--json")
    found = [(f["file"], f["kind"], f["action"]) for f in json.loads(out)["findings"]]
    assert ("Annotations/batch2/img1.xml", "nested-annotation", "not read") in found
    assert code == 1  # its image is left out (a finding of its own): a failed input
    (voc.root / "Annotations" / "old").mkdir()  # an older copy of one that is read: not "move it up"
    (voc.root / "Annotations" / ".ipynb_checkpoints").mkdir()  # a notebook's: not the user's labels
    for sub in ("old", ".ipynb_checkpoints"):
        (voc.root / "Annotations" / sub / "img0.xml").write_bytes(voc.xml_path("img0").read_bytes())
    _, out, _ = _run(capsys, str(voc.root), "--json")
    details = {f["file"]: f["detail"] for f in json.loads(out)["findings"] if f["kind"] == "nested-annotation"}
    assert set(details) == {"Annotations/batch2/img1.xml", "Annotations/old/img0.xml"}
    assert details["Annotations/old/img0.xml"].endswith("Annotations/img0.xml is read; this one is not")


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path):
    """`bloodcell data check --json - DATA | head`: exit 141 as a Unix tool killed by SIGPIPE, and no
    "error: Broken pipe" or "Exception ignored" from the flush at exit."""
    voc = make_voc(tmp_path / "voc", n_images=2)
    command = [sys.executable, "-m", "bloodcell", "data", "check", "--json", "-", str(voc.root)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the report is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
    whole = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0 and whole.stdout.startswith("{")  # the same command, read to the end


def test_labelled_images_no_split_lists_are_said_by_check_stats_and_export(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path / "voc", n_images=5)  # train img0-img3, val and test img4
    voc.write_split("train", ["img0", "img1"])  # img2 and img3 forgotten
    code, out, _ = _run(capsys, str(voc.root), "--json")
    found = [(f["file"], f["kind"], f["detail"]) for f in json.loads(out)["findings"]]
    assert found == [
        (
            "ImageSets/Main",
            "unlisted-image",
            "2 labelled images are in none of the split lists: img2.jpg, img3.jpg; training and scoring by split "
            "leave them out",
        )
    ]
    assert code == 0  # a finding (exit 1 with --strict): a lab may keep images out of every split on purpose
    assert main(["data", "stats", str(voc.root), "--out", str(tmp_path / "stats")]) == 0
    assert "2 labelled images are in none of the split lists (img2.jpg, img3.jpg); these statistics leave them out" in (
        capsys.readouterr().err
    )
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["unlisted_images"] == ["img2.jpg", "img3.jpg"]
    assert main(["data", "export", str(voc.root), "--format", "csv", "--out", str(tmp_path / "csv")]) == 0
    assert "in none of the split lists (img2.jpg, img3.jpg); the export leaves them out" in capsys.readouterr().err
    args = ["data", "export", str(voc.root), "--format", "csv", "--out", str(tmp_path / "csv2"), "--split", "train"]
    assert main(args) == 0 and "none of the split lists" not in capsys.readouterr().err  # asked for one split
    voc.write_split("trainval", ["img0", "img1", "img2", "img3"])  # any list counts (VOC's trainval, a lab's own)
    code, out, _ = _run(capsys, str(voc.root), "--json")
    assert [f["kind"] for f in json.loads(out)["findings"]] == []
    for split in ("train", "val", "test", "trainval"):  # only a lab's own list: every command reads the folder
        (voc.root / "ImageSets" / "Main" / f"{split}.txt").unlink()
    voc.write_split("fold1", ["img0"])
    code, out, _ = _run(capsys, str(voc.root), "--json")
    assert "unlisted-image" not in [f["kind"] for f in json.loads(out)["findings"]]
    assert main(["data", "export", str(voc.root), "--format", "csv", "--out", str(tmp_path / "csv3")]) == 0
    assert "none of the split lists" not in capsys.readouterr().err


def test_a_link_to_nowhere_in_jpegimages_is_a_row_not_the_end_of_the_report(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path / "voc", n_images=2)
    (voc.root / "JPEGImages" / "stray.jpg").symlink_to(tmp_path / "nowhere.jpg")
    voc.image_path("img1").unlink()
    voc.image_path("img1").symlink_to(tmp_path / "gone.jpg")  # its annotation's row says it
    code, out, _ = _run(capsys, str(voc.root), "--json")
    found = [(f["file"], f["kind"], f["detail"]) for f in json.loads(out)["findings"]]
    assert ("stray.jpg", "bad-image", "JPEGImages/stray.jpg: cannot read it (a link to nowhere)") in found
    assert [k for _, k, _ in found].count("missing-image") == 1 and len(found) == 2 and code == 1
    assert main(["data", "stats", str(voc.root), "--out", str(tmp_path / "stats")]) in (0, 1)


def test_outputs_inside_the_folders_read_are_refused(tmp_path: Path, capsys) -> None:
    """A report named Annotations/x.xml would replace a label file; plots in JPEGImages/ would be read as images."""
    voc = make_voc(tmp_path / "voc", n_images=2)
    label = voc.xml_path("img0")
    before = label.read_text()
    code, _, err = _run(capsys, str(voc.root), "--json", str(label))
    assert code == 2 and f"--json {label}: is inside {voc.root / 'Annotations'}, which the dataset is read" in err
    assert label.read_text() == before
    assert main(["data", "stats", str(voc.root), "--out", str(voc.root / "JPEGImages")]) == 2
    assert main(["data", "export", str(voc.root), "--format", "csv", "--out", str(voc.root / "ImageSets" / "x")]) == 2
    assert "which the dataset is read from; write elsewhere" in capsys.readouterr().err
    assert sorted(p.name for p in (voc.root / "JPEGImages").iterdir()) == ["img0.jpg", "img1.jpg"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_given_as_the_dataset_is_refused_without_reading_it(tmp_path: Path, capsys) -> None:
    os.mkfifo(tmp_path / "data")  # read to look for a YAML's "sources:", it would never end
    code, _, err = _run(capsys, str(tmp_path / "data"))
    assert code == 2 and "expected a Pascal VOC folder" in err


def test_an_image_in_a_subfolder_and_a_dangling_out_link_are_named(tmp_path: Path, capsys) -> None:
    voc = make_voc(tmp_path / "voc", n_images=2)
    (voc.root / "JPEGImages" / "batch2").mkdir()
    voc.image_path("img1").rename(voc.root / "JPEGImages" / "batch2" / "img1.jpg")  # a tool's per-batch folder
    code, out, _ = _run(capsys, str(voc.root), "--json")
    assert code == 1  # an image left out
    (found,) = [f for f in json.loads(out)["findings"] if f["kind"] == "missing-image"]
    assert found["detail"].endswith("(JPEGImages/batch2/img1.jpg is in a subfolder, which is not read)")
    (tmp_path / "plots").symlink_to(tmp_path / "gone")
    assert main(["data", "stats", str(voc.root), "--out", str(tmp_path / "plots")]) == 2
    assert f"is a link to {tmp_path / 'gone'}, which is not there" in capsys.readouterr().err
