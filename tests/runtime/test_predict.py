"""`bloodcell predict`: odd images, bad files, outputs (on the numpy FakePredictor; model files on the real loader)."""

import csv
import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodcell.app.report import read_slide
from bloodcell.app.sinks import counts_header
from bloodcell.cli import main
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import GRAYSCALE_WARNING, Predictor
from bloodcell.types import CLASS_NAMES
from fakes import FakePredictor, save_slide, use_fake_model


@pytest.fixture
def model_file(monkeypatch, tmp_path):
    """A --model file that `bloodcell predict` loads as a FakePredictor (operating point 0.3)."""
    return use_fake_model(monkeypatch, FakePredictor(conf=0.3), tmp_path / "models" / "fake.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rgb = Image.open(save_slide(d / "a.jpg", seed=0))
    rgb.convert("L").save(d / "gray.png")
    rgb.convert("RGBA").save(d / "rgba.png")
    rgb.resize((4000, 3000)).save(d / "big.tif")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(d / "deep16.png")
    rgb.save(d / "b.bmp")
    return d


def test_image_modes_are_converted_to_rgb(images):
    for name in ("gray.png", "rgba.png", "deep16.png", "b.bmp", "big.tif"):
        a = load_image(images / name)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
    gray = load_image(images / "gray.png")
    deep = load_image(images / "deep16.png")
    assert np.abs(gray.astype(int) - deep.astype(int)).max() <= 1  # 16-bit scaled, not clipped


def test_a_tiff_stack_is_refused_and_its_previews_ignored(images, tmp_path):
    """Several full-size pages are fields of their own: counting the first alone would be silent; smaller
    pages are a file's previews (thumbnails, pyramid levels)."""
    from bloodcell.errors import ImageError
    from bloodcell.runtime.images import decode_image

    field = Image.open(images / "a.jpg").convert("RGB")
    stack, preview = tmp_path / "stack.tif", tmp_path / "preview.tif"
    field.save(stack, save_all=True, append_images=[field.rotate(90), field])
    field.save(preview, save_all=True, append_images=[field.resize((field.width // 4, field.height // 4))])
    with pytest.raises(ImageError, match=r"stack\.tif: a TIFF of 3 full-size pages .* save each page as its own"):
        load_image(stack)
    with pytest.raises(ImageError, match=r"upload\.tif: a TIFF of 3 full-size pages"):
        decode_image(stack.read_bytes(), "upload.tif")
    assert np.array_equal(load_image(preview), np.asarray(field))


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_an_animation_is_refused_and_a_single_frame_of_its_format_read(images, tmp_path, suffix):
    from bloodcell.errors import ImageError

    field = Image.open(images / "a.jpg").convert("RGB")
    animation, still = tmp_path / f"sweep{suffix}", tmp_path / f"still{suffix}"
    field.save(animation, save_all=True, append_images=[field.rotate(90)], lossless=True)
    field.save(still, lossless=True)
    fmt = suffix[1:].upper()
    with pytest.raises(
        ImageError, match=rf"sweep\{suffix}: an animated {fmt} of 2 frames; .*ImageSequence\) and count"
    ):
        load_image(animation)
    assert load_image(still).shape == (field.height, field.width, 3)


def test_an_image_kind_bloodcell_does_not_read_says_what_it_is(tmp_path):
    from bloodcell.errors import ImageError

    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(100))
    with pytest.raises(ImageError, match=r"IMG_0001\.HEIC: cannot decode image \(HEIC, not a format bloodcell reads"):
        load_image(photo)


def test_an_empty_file_and_a_non_image_say_the_same_from_disk_and_from_bytes(tmp_path):
    from bloodcell.errors import ImageError
    from bloodcell.runtime.images import decode_image

    empty, text = tmp_path / "empty.jpg", tmp_path / "notes.jpg"
    empty.touch()
    text.write_text("patient notes")
    for path, says in ((empty, "empty file (0 bytes)"), (text, "cannot decode image (not a format Pillow reads)")):
        with pytest.raises(ImageError, match=re.escape(f"{path}: {says}")):
            load_image(path)
        with pytest.raises(ImageError, match=re.escape(f"{path.name}: {says}")):
            decode_image(path.read_bytes(), path.name)


def test_predict_writes_json_csv_and_annotations(model_file, images, tmp_path, capsys):
    out, js, cs = tmp_path / "ann", tmp_path / "r.json", tmp_path / "c.csv"
    code = main(
        [
            "predict",
            str(images),
            "--model",
            str(model_file),
            "--out",
            str(out),
            "--json",
            str(js),
            "--csv",
            str(cs),
            "--min-score",
            "0.001",
        ]
    )
    assert code == 0
    records = json.loads(js.read_text())
    assert {r["image"] for r in records} == {"a.jpg", "gray.png", "rgba.png", "big.tif", "deep16.png", "b.bmp"}
    big = next(r for r in records if r["image"] == "big.tif")
    assert (big["width"], big["height"]) == (4000, 3000)
    for r in records:
        fields = {
            "image",
            "path",
            "model",
            "width",
            "height",
            "counts",
            "count_intervals",
            "conf",
            "scale",
            "exposure_gains",
        }
        assert set(r) == {*fields, "warnings", "detections"}
        assert r["model"] == f"fake.pt@{hashlib.sha256(model_file.read_bytes()).hexdigest()[:12]}"
        gray = r["image"] in ("gray.png", "deep16.png")  # colour is what tells the cell types apart
        assert r["warnings"] == ([GRAYSCALE_WARNING] if gray else []), r["image"]
        assert r["path"] == str((images / r["image"]).absolute())
        assert r["scale"] == 1.0 and r["count_intervals"] is None  # this model has no calibration
        assert list(r["counts"]) == list(CLASS_NAMES)
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]
            assert d["score"] >= 0.001 and d["label"] in CLASS_NAMES
        # counts are the detections at or above the model's operating threshold (0.3)
        for name in CLASS_NAMES:
            assert r["counts"][name] == sum(1 for d in r["detections"] if d["label"] == name and d["score"] >= 0.3)
    err = capsys.readouterr().err
    assert f"warning: gray.png: {GRAYSCALE_WARNING}" in err and "warning: a.jpg" not in err
    rows = list(csv.DictReader(cs.open()))
    assert len(rows) == 6 and list(rows[0]) == counts_header(CLASS_NAMES)
    warned = {r["image"]: r["warnings"] for r in rows if r["warnings"]}
    assert warned == {"gray.png": GRAYSCALE_WARNING, "deep16.png": GRAYSCALE_WARNING}  # 16-bit gray
    assert all(r["error"] == "" for r in rows)
    assert len(list(out.iterdir())) == 6


def test_big_image_boxes_map_back_to_its_pixels(tiny_model, images):
    """The torch predictor letterboxes and maps its boxes back to the image's own pixels."""
    predictor = load_predictor(tiny_model(conf=0.3))
    small = predictor.predict(load_image(images / "a.jpg"), min_score=0.001)
    big = predictor.predict(load_image(images / "big.tif"), min_score=0.001)
    assert len(small) and len(big)
    assert big.boxes[:, 2].max() > 3 * 640 and big.boxes.max() <= 4000  # 6.25x larger image, boxes scaled up


def test_corrupt_file_is_reported_and_skipped(model_file, images, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes((images / "a.jpg").read_bytes()[:2000])
    txt = tmp_path / "notes.jpg"
    txt.write_text("not an image")
    code = main(["predict", str(bad), str(txt), str(images / "a.jpg"), "--model", str(model_file)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "broken.jpg" in err and "notes.jpg" in err and "Traceback" not in err
    assert "1 image counted, 2 failed" in err
    # the results name every image: a failed one with its error and no counts, which a report lists
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    argv = ["predict", str(bad), str(txt), str(images / "a.jpg"), "--model", str(model_file)]
    assert main([*argv, "--json", str(js), "--csv", str(cs)]) == 1
    assert capsys.readouterr().out.splitlines()[-2:] == [f"wrote {js}", f"wrote {cs}"]  # where the results went
    records = json.loads(js.read_text())
    assert [(r["image"], "counts" in r, bool(r.get("error"))) for r in records] == [
        ("broken.jpg", False, True),
        ("notes.jpg", False, True),
        ("a.jpg", True, False),
    ]
    assert "notes.jpg" in records[1]["error"] and records[1]["path"] == str(txt.absolute())
    rows = list(csv.DictReader(cs.open()))
    assert [(r["image"], bool(r["error"])) for r in rows] == [
        ("broken.jpg", True),
        ("notes.jpg", True),
        ("a.jpg", False),
    ]
    assert rows[1]["RBC"] == "" and rows[2]["RBC"].isdigit()
    for results in (js, cs):
        counted, failed, _ = read_slide(results)
        assert [r["image"] for r in counted] == ["a.jpg"] and failed == ["broken.jpg", "notes.jpg"]
    gone = tmp_path / "gone.jpg"  # a file named that is not there is an input that failed too
    argv = [str(images / "a.jpg"), str(gone), str(images / "b.bmp"), str(gone)]  # in the order given; once each
    assert main(["predict", *argv, "--model", str(model_file), "--json", str(js)]) == 1
    records = json.loads(js.read_text())
    assert [(r["image"], r.get("error")) for r in records] == [
        ("a.jpg", None),
        ("gone.jpg", f"{gone}: no such file or folder"),
        ("b.bmp", None),
    ]
    other = tmp_path / "other" / "a.jpg"  # a missing a.jpg beside a counted one: two names, both kept
    other.parent.mkdir()
    shutil.copy(images / "a.jpg", other)
    assert (
        main(["predict", str(tmp_path / "gone" / "a.jpg"), str(other), "--model", str(model_file), "--csv", str(cs)])
        == 1
    )
    counted, failed, _ = read_slide(cs)
    assert [r["image"] for r in counted] == ["other/a.jpg"] and failed == ["gone/a.jpg"]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` and holds no pixels: what decoders check before reading."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_decoder_warnings_name_their_file_and_an_oversized_image_says_the_limit(model_file, images, tmp_path, capsys):
    """Pillow's own warning names its source line, once per process; each file's is said as a warning naming it.
    An image past Pillow's pixel limit is a failed input whose error says the limit, not "DOS attack"."""
    data = (images / "a.jpg").read_bytes()
    exif = b"Exif\x00\x00MM\x00*" + b"\xff" * 20 + b"\x00\x00"  # a TIFF header pointing past its block
    for name in ("one.jpg", "two.jpg"):
        (tmp_path / name).write_bytes(data[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + data[2:])
    huge = _png_header_only(tmp_path / "huge.png", 30000, 30000)
    code = main(
        ["predict", str(tmp_path / "one.jpg"), str(tmp_path / "two.jpg"), str(huge), "--model", str(model_file)]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    for name in ("one.jpg", "two.jpg"):
        assert f"warning: {tmp_path / name}: Corrupt EXIF data" in err and "the field may be turned" in err
    assert f"{huge}: 900,000,000 pixels, over the 178,956,970 that are decoded" in err
    assert "UserWarning" not in err and "DOS attack" not in err and "2 images counted, 1 failed" in err


def test_a_folder_says_which_image_files_it_leaves_out(model_file, images, tmp_path, capsys):
    """An iPhone's HEIC or a camera's raw file beside its JPEG is not read: said as a note (exit 0), so the
    field missing from the counts is no surprise; other files (notes, results) are left out unsaid."""
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(images / "a.jpg", folder / "a.jpg")
    for name in ("a.dng", "b.HEIC", "counts.csv"):
        (folder / name).write_bytes(b"x")
    assert main(["predict", str(folder), "--model", str(model_file)]) == 0
    out, err = capsys.readouterr()
    assert (
        f"note: {folder}: 2 image files of a kind bloodcell does not read (HEIC, camera raw) left out: a.dng, b.HEIC"
        in err
    )
    assert "counts.csv" not in err and out.startswith("a.jpg: ")


def test_empty_folder_and_missing_path(model_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--model", str(model_file)]) == 1
    err = capsys.readouterr().err
    assert "folder has no images" in err and "subfolders" not in err
    save_slide(empty / "day1" / "deep" / "s.jpg", seed=0)
    assert main(["predict", str(empty), "--model", str(model_file)]) == 1
    assert f"subfolders are not searched (a glob like '{empty}/**/*.jpg' is)" in capsys.readouterr().err
    assert main(["predict", f"{empty}/**/*.jpg", "--model", str(model_file)]) == 0  # any depth
    assert main(["predict", str(tmp_path / "nope.jpg"), "--model", str(model_file)]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_a_broken_link_or_a_pipe_is_a_failed_input_not_a_silent_gap(model_file, images, tmp_path, capsys):
    slide = tmp_path / "slide"
    slide.mkdir()
    shutil.copy(images / "a.jpg", slide / "a.jpg")
    (slide / "b.jpg").symlink_to(tmp_path / "moved" / "b.jpg")  # the file it named was moved away
    os.mkfifo(slide / "c.jpg")
    (slide / "d.jpg").symlink_to("d.jpg")  # a link to itself
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    assert (
        main(["predict", str(slide), str(slide), "--model", str(model_file), "--json", str(js), "--csv", str(cs)]) == 1
    )
    err = capsys.readouterr().err
    assert f"error: {slide / 'b.jpg'}: broken link (to {tmp_path / 'moved' / 'b.jpg'}, which is not there)" in err
    assert f"error: {slide / 'c.jpg'}: not a regular file (a pipe, socket or device)" in err
    assert f"error: {slide / 'd.jpg'}: a loop of links (it leads back to itself)" in err
    assert "1 image counted, 3 failed" in err  # the folder named twice: each once
    assert main(["predict", str(slide / "*.jpg"), "--model", str(model_file)]) == 1  # a pattern reaches them too
    assert capsys.readouterr().err.count(": not a regular file (a pipe, socket or device)") == 1
    listed = {r["image"]: r.get("error") for r in json.loads(js.read_text())}  # every input, as for named ones
    assert list(listed) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"] and listed["a.jpg"] is None
    assert [r["image"] for r in csv.DictReader(cs.open())] == list(listed)
    assert main(["predict", str(slide / "c.jpg"), "--model", str(model_file), "--json", str(js)]) == 1
    [record] = json.loads(js.read_text())  # named on its own: listed in the results with why
    assert record["error"] == f"{slide / 'c.jpg'}: not a regular file (a pipe, socket or device)"


def test_a_file_whose_kind_cannot_be_read_is_a_failed_input_not_a_crash(
    model_file, images, tmp_path, monkeypatch, capsys
):
    """A link into a folder this user may not enter: Python 3.11's is_file raises PermissionError there."""
    import pathlib

    slide = tmp_path / "slide"
    slide.mkdir()
    for name in ("a.jpg", "locked.jpg"):
        shutil.copy(images / "a.jpg", slide / name)
    real_stat = pathlib.Path.stat

    def stat(self, *, follow_symlinks: bool = True):
        if self.name == "locked.jpg" and follow_symlinks:  # the entry itself is listed; where it leads is not
            raise PermissionError(13, "Permission denied")
        return real_stat(self, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    assert main(["predict", str(slide), "--model", str(model_file)]) == 1
    err = capsys.readouterr().err
    assert (
        f"error: {slide / 'locked.jpg'}: cannot read (Permission denied)" in err and "1 image counted, 1 failed" in err
    )


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_bad_model_file_is_one_line(tmp_path, images, capsys, content):
    bad = tmp_path / "m.pt"
    bad.write_bytes(content)
    assert main(["predict", str(images / "a.jpg"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.pt" in err[0]


def test_a_cut_off_model_file_says_so_in_a_few_words(tmp_path, images, capsys):
    from bloodcell.weights import shipped_by_name

    cut = tmp_path / "m.pt"
    cut.write_bytes(shipped_by_name("cellnet_bccd.pt").read_bytes()[:300_000])  # a copy that stopped
    assert main(["predict", str(images / "a.jpg"), "--model", str(cut)]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert f"{cut}: not a readable bloodcell model (the file is damaged or cut short: reading zip archive" in err
    assert "miniz" not in err and len(err) < 200


def test_unknown_model_type(tmp_path, images, capsys):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(b"x")
    assert main(["predict", str(images / "a.jpg"), "--model", str(path)]) == 2
    assert "unknown model type" in capsys.readouterr().err
    sidecar = tmp_path / "m.onnx.json"  # the export's metadata given for the model
    sidecar.write_text("{}")
    assert main(["predict", str(images / "a.jpg"), "--model", str(sidecar)]) == 2
    err = capsys.readouterr().err
    assert f"this is the metadata of an export; pass the model itself: --model {tmp_path / 'm.onnx'}" in err


def test_more_threads_than_cores_is_said(monkeypatch):
    from bloodcell import cli

    monkeypatch.setattr("bloodcell.runtime.timing.available_cores", lambda: 2)
    assert cli._threads_note(None) is None and cli._threads_note(2) is None
    assert cli._threads_note(16) == "--threads 16 is more than the 2 cores this process may use: slower, not faster"
    assert cli._threads_note(None, workers=2) is None  # batch: a thread each
    note = "--workers 4 (a thread each) is more than the 2 cores this process may use: slower, not faster"
    assert cli._threads_note(None, workers=4) == note
    assert cli._threads_note(2, workers=2).startswith("--workers 2 x --threads 2 is more than the 2 cores")


class _Pickled:  # any class: torch.save pickles it, torch.load(weights_only=True) refuses it
    pass


def test_pickled_model_file_is_refused_in_one_full_line(tmp_path, images, capsys):
    import torch

    path = tmp_path / "pickled.pt"
    torch.save({"format": "bloodcell-model", "model": {}, "hook": _Pickled()}, path)
    assert main(["predict", str(images / "a.jpg"), "--model", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {path}: refused: the file holds pickled Python objects (")
    assert "_Pickled" in err and err.rstrip().endswith("from a source you trust")
    assert "weights_only" not in err and "\x1b" not in err  # never the advice to load it unsafely


@pytest.mark.parametrize("flag", ["--json", "--csv"])
@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_unwritable_output_fails_before_any_image(model_file, images, tmp_path, capsys, monkeypatch, flag, where):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" / "results" if where == "under-a-file" else tmp_path
    monkeypatch.setattr("bloodcell.app.predict_job.load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["predict", str(images), "--model", str(model_file), flag, str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {flag} {target}: cannot write there (")


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_out_that_cannot_be_a_folder_fails_before_any_image(model_file, images, tmp_path, capsys, monkeypatch, where):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" if where == "a-file" else tmp_path / "file.txt" / "annotated"
    monkeypatch.setattr("bloodcell.app.predict_job.load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["predict", str(images), "--model", str(model_file), "--out", str(target)]) == 2
    out, err = capsys.readouterr()
    blocked = f"cannot write there ({tmp_path / 'file.txt'} is a file, not a folder)"
    reason = "is a file, expected a folder" if where == "a-file" else blocked
    assert out == "" and err == f"error: --out {target}: {reason}\n"


def test_an_annotated_image_that_cannot_be_written_fails_alone(model_file, images, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "a.jpg").mkdir(parents=True)  # a folder where a.jpg's annotated image goes
    args = [str(images / "a.jpg"), str(images / "b.bmp"), "--model", str(model_file), "--out", str(out)]
    code = main(["predict", *args])
    err = capsys.readouterr().err
    assert code == 1 and f"error: a.jpg: annotated image not written ({out / 'a.jpg'}: Is a directory)" in err
    assert "1 image counted, 1 failed" in err and (out / "b.bmp.jpg").is_file()


def test_fake_predictor_has_every_member_of_the_protocol():
    """The app and runtime tests stand on FakePredictor: it must keep up with what predictors offer."""
    members = set(Predictor.__annotations__) | {m for m in vars(Predictor) if not m.startswith("_")}
    fake = FakePredictor()
    assert members and all(hasattr(fake, m) for m in members), members - set(dir(fake))
    dets = fake.predict(np.zeros((48, 64, 3), np.uint8) + np.uint8(200), min_score=0.5)
    assert len(dets) == 16 and dets.boxes.max() <= 64  # a 4x4 grid, in the image's pixels


class _InterruptedAfterTwo(FakePredictor):
    def predict(self, image, min_score: float = 0.001):
        if self.calls == 2:
            raise KeyboardInterrupt  # as Ctrl-C during the third image
        return super().predict(image, min_score)


def test_ctrl_c_keeps_the_results_of_finished_images(images, tmp_path, monkeypatch, capsys):
    model = use_fake_model(monkeypatch, _InterruptedAfterTwo(conf=0.3), tmp_path / "models" / "fake.pt")
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    code = main(["predict", str(images), "--model", str(model), "--json", str(js), "--csv", str(cs)])
    err = capsys.readouterr().err
    assert code == 130 and f"interrupted after 2 of 6 images; their results are in {js} and {cs}" in err
    assert len(json.loads(js.read_text())) == 2 and len(list(csv.DictReader(cs.open()))) == 2


def test_json_naming_the_out_folder_is_refused_before_any_image(model_file, images, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["predict", str(images), "--model", str(model_file), "--out", str(out), "--json", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --json {out}: cannot write there (it is the --out folder; expected a file name)\n"
    )
    assert not out.exists()  # the refused command made no folder


@pytest.mark.parametrize("command", ["predict", "serve", "watch"])
def test_a_cell_size_the_model_cannot_honour_is_refused_once_at_start(command, images, tmp_path, monkeypatch, capsys):
    """Not per image: a server would answer 500 to every request, a watch mark every file failed."""
    model = use_fake_model(monkeypatch, FakePredictor(conf=0.3, cell_size=100.0), tmp_path / "models" / "fake.pt")
    target = {"predict": [str(images)], "serve": [], "watch": [str(images), "--once"]}[command]
    assert main([command, *target, "--model", str(model), "--cell-size", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: --cell-size 3: the model sees red cells 100 px across")


def test_an_image_reached_twice_is_counted_once(model_file, images, tmp_path, capsys):
    """A folder and a glob over it (or two spellings of one path) must not double the image's cells."""
    js = tmp_path / "r.json"
    again = f"{images}/../{images.name}/a.jpg"
    sources = [str(images), str(images / "*.jpg"), again]
    assert main(["predict", *sources, "--model", str(model_file), "--json", str(js)]) == 0
    names = [r["image"] for r in json.loads(js.read_text())]
    assert sorted(names) == sorted(["a.jpg", "gray.png", "rgba.png", "big.tif", "deep16.png", "b.bmp"])


def test_annotated_copy_of_an_upper_case_png_is_a_png(model_file, images, tmp_path):
    shutil.copy(images / "rgba.png", tmp_path / "S.PNG")
    assert main(["predict", str(tmp_path / "S.PNG"), "--model", str(model_file), "--out", str(tmp_path / "ann")]) == 0
    (written,) = (tmp_path / "ann").iterdir()
    assert written.name == "S.PNG" and Image.open(written).format == "PNG"


def test_two_images_whose_annotated_copies_share_a_name_are_refused_before_any(model_file, images, tmp_path, capsys):
    """s.bmp's copy gains .jpg (s.bmp.jpg), which is also s.bmp.jpg's own: one picture would replace the other,
    and a report would show it for both fields."""
    slide = tmp_path / "slide"
    slide.mkdir()
    shutil.copy(images / "b.bmp", slide / "s.bmp")
    shutil.copy(images / "a.jpg", slide / "s.bmp.jpg")
    out = tmp_path / "ann"
    assert main(["predict", str(slide), "--model", str(model_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"would both be annotated as {out / 's.bmp.jpg'}; rename one" in err
    assert not out.exists()
    (slide / "s.bmp.jpg").unlink()  # named but not there: a failed input, which gets no copy to clash with
    assert (
        main(["predict", str(slide / "s.bmp"), str(slide / "s.bmp.jpg"), "--model", str(model_file), "--out", str(out)])
        == 1
    )
    assert [p.name for p in out.iterdir()] == ["s.bmp.jpg"]


@pytest.mark.parametrize("flag", ["--out", "--csv", "--json"])
def test_outputs_never_overwrite_the_input_images(model_file, images, tmp_path, capsys, flag):
    slide = tmp_path / "slide"
    slide.mkdir()
    shutil.copy(images / "a.jpg", slide / "a.jpg")
    shutil.copy(images / "rgba.png", slide / "r.png")
    before = {p.name: p.read_bytes() for p in slide.iterdir()}
    target = {"--out": slide, "--csv": slide / "r.png", "--json": slide / "a.jpg"}[flag]
    assert main(["predict", str(slide), "--model", str(model_file), flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "overwrit" in err and str(target) in err
    assert {p.name: p.read_bytes() for p in slide.iterdir()} == before


@pytest.mark.parametrize(
    "outputs, message",
    [
        (["--csv", "{model}"], "--csv {model}: is the model file; it would be overwritten"),
        (["--json", "{model}.json"], "--json {model}.json: is the model's sidecar; it would be overwritten"),
        (["--json", "{tmp}/r", "--csv", "{tmp}/r"], "--csv {tmp}/r: is also the --json file; each output needs"),
        (
            ["--out", "{tmp}/ann", "--csv", "{tmp}/ann/a.jpg"],
            "--csv {tmp}/ann/a.jpg: is where --out puts the annotated",
        ),
        (["--json", "{tmp}/counts.csv"], "--json {tmp}/counts.csv: names a CSV file; did you mean --csv?"),
        (["--csv", ""], "--csv: the path is empty; name a file"),
        (["--out", ""], "--out: the path is empty; name a folder"),
        (["--json", "-"], "--json -: this command cannot write to standard output; name a file"),
    ],
    ids=["csv-model", "json-sidecar", "json-is-csv", "csv-in-out", "json-suffix", "empty-csv", "empty-out", "stdout"],
)
def test_outputs_that_would_clash_are_refused_before_any_image(
    model_file, images, tmp_path, capsys, monkeypatch, outputs, message
):
    """The model file, its sidecar, one output over another: each asked-for file survives; an empty path
    (an unset shell variable) is not taken for "no output"."""
    sidecar = model_file.with_name(model_file.name + ".json")
    sidecar.write_text("{}")
    before = {p: p.read_bytes() for p in (model_file, sidecar)}
    monkeypatch.setattr("bloodcell.app.predict_job.load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    args = [a.format(model=model_file, tmp=tmp_path) for a in outputs]
    assert main(["predict", str(images / "a.jpg"), "--model", str(model_file), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: " + message.format(model=model_file, tmp=tmp_path)), err
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "ann").exists()


def test_a_min_score_above_an_operating_point_is_warned_of(model_file, images, tmp_path, capsys):
    """--json then lists fewer of the class's boxes than it counts: said, not left to be found."""
    js = tmp_path / "r.json"
    base = ["predict", str(images / "a.jpg"), "--model", str(model_file), "--json", str(js)]
    assert main([*base, "--min-score", "0.3"]) == 0  # the model's point (0.3): every counted box listed
    assert "--min-score" not in capsys.readouterr().err
    assert main([*base, "--min-score", "0.5", "--conf", "WBC=0.6"]) == 0
    err = capsys.readouterr().err
    expected = "warning: --min-score 0.5 is above the operating points of RBC 0.30, Platelets 0.30: --json lists"
    assert expected in err


def test_a_list_of_operating_points_by_position_is_refused_with_an_example_that_works(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "a.jpg", "--conf", "0.4,0.5"])
    err = capsys.readouterr().err
    assert "CLASS=VALUE per class (e.g. RBC=0.4,WBC=0.5)" in err and "all=" not in err


class _TerminatedAfterTwo(FakePredictor):
    def predict(self, image, min_score: float = 0.001):
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stopping the job during the third image
        return super().predict(image, min_score)


def test_sigterm_keeps_the_results_of_finished_images(images, tmp_path, monkeypatch, capsys):
    model = use_fake_model(monkeypatch, _TerminatedAfterTwo(conf=0.3), tmp_path / "models" / "fake.pt")
    js = tmp_path / "r.json"
    before = signal.getsignal(signal.SIGTERM)
    assert main(["predict", str(images), "--model", str(model), "--json", str(js)]) == 130
    err = capsys.readouterr().err
    assert err == f"interrupted after 2 of 6 images; their results are in {js}\n", err  # said once
    assert len(json.loads(js.read_text())) == 2
    assert signal.getsignal(signal.SIGTERM) is before  # main() puts the process's own handler back


def _garbled(data: bytes, seed: int) -> bytes:
    """64 random bytes in the middle of the compressed data: a bad copy or a failing card."""
    rng = np.random.default_rng(seed)
    garbled = bytearray(data)
    at = len(data) // 2
    garbled[at : at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    return bytes(garbled)


def test_a_jpeg_with_damaged_data_is_a_failed_input_not_garbage_counted(images, model_file, tmp_path, capsys):
    """Pillow decodes such a file without a word, its lower part gray or smeared; libjpeg's warning is
    read instead (simplejpeg's strict decode). Bytes after the last pixel (padding before the end marker,
    data after it) are harmless and still count."""
    from bloodcell.errors import ImageError, TruncatedImageError
    from bloodcell.runtime.images import decode_image

    data = (images / "a.jpg").read_bytes()
    damaged = [_garbled(data, seed) for seed in range(8)]
    for bad in damaged:
        with pytest.raises(ImageError, match=r"damaged JPEG data|cannot decode image") as info:
            decode_image(bad, "bad.jpg")
        assert not isinstance(info.value, TruncatedImageError) and str(info.value).startswith("bad.jpg: ")
    silent = sum(_pillow_decodes(bad) for bad in damaged)
    assert silent >= 4  # what the check is for: most of these decode in Pillow alone
    between = [data[:i] + b"\0\0" + data[i:] for i in (data.index(b"\xff\xdb"), data.index(b"\xff\xda"))]
    for harmless in (data[:-2] + b"\0\0\0" + data[-2:], data + b"after the end", *between):
        assert np.array_equal(decode_image(harmless, "ok.jpg"), decode_image(data, "a.jpg"))
    slide = tmp_path / "slide"
    slide.mkdir()
    shutil.copy(images / "a.jpg", slide / "a.jpg")
    (slide / "b.jpg").write_bytes(damaged[0])
    assert main(["predict", str(slide), "--model", str(model_file)]) == 1
    err = capsys.readouterr().err
    assert f"error: {slide / 'b.jpg'}: damaged JPEG data (Corrupt JPEG data:" in err
    assert "1 image counted, 1 failed" in err


def test_a_reader_that_quits_early_still_gets_the_result_files(model_file, images, tmp_path, monkeypatch, capsys):
    """`bloodcell predict ... --csv c.csv | head -0`: printing fails once the reader is gone, as Ctrl-C would
    stop the run; the finished images' files are still written and said on stderr, then the pipe's error
    goes on to the CLI (a quiet exit 141 there)."""
    from bloodcell.app.predict_job import run_predict

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    with pytest.raises(BrokenPipeError):
        run_predict([str(images)], model=str(model_file), json_path=str(js), csv_path=str(cs))
    assert len(json.loads(js.read_text())) == 1 and len(list(csv.DictReader(cs.open()))) == 1  # its first line
    said = capsys.readouterr().err
    assert said == f"output closed by its reader after 1 of 6 images; their results are in {js} and {cs}\n"


def test_a_cameras_harmless_jpeg_quirks_count_and_hidden_damage_does_not(images):
    """Webcams pad before restart markers (Logitech's C270): counted. Header padding does not hide damage
    after it (strict decoding stops at its first warning). MPO (a .jpg with MPF previews) is checked too."""
    import io

    import cv2

    from bloodcell.errors import ImageError
    from bloodcell.runtime.images import decode_image

    rgb = np.asarray(Image.open(images / "a.jpg").convert("RGB"))
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 3])
    assert ok
    data = encoded.tobytes()
    scan = data.index(b"\xff\xda")
    rst = data.index(b"\xff\xd0", scan)
    padded = data[:rst] + b"\0\0\0\0" + data[rst:]
    assert np.array_equal(decode_image(padded, "cam.jpg"), decode_image(data, "cam.jpg"))
    header = data.index(b"\xff\xdb")
    damaged = bytearray(data[:header] + b"\0\0" + data[header:])
    middle = len(damaged) // 2
    damaged[middle : middle + 512] = bytes(512)  # a block of zeros in the scan (a failing card)
    assert _pillow_decodes(bytes(damaged))
    with pytest.raises(ImageError, match="damaged JPEG data"):
        decode_image(bytes(damaged), "both.jpg")
    mpo = io.BytesIO()
    Image.fromarray(rgb).save(mpo, "MPO", save_all=True, append_images=[Image.fromarray(rgb[::2, ::2])])
    first = (
        bytes(_garbled(mpo.getvalue()[: len(mpo.getvalue()) * 2 // 3], 1))
        + mpo.getvalue()[len(mpo.getvalue()) * 2 // 3 :]
    )
    with Image.open(io.BytesIO(first)) as im:
        assert im.format == "MPO"
    with pytest.raises(ImageError):
        decode_image(first, "camera.jpg")


def _pillow_decodes(data: bytes) -> bool:
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "BMP", "WEBP"])
def test_an_image_cut_short_is_a_truncated_image_error(images, fmt):
    """watch waits for such a file (a copy in progress); a garbage file is a plain ImageError."""
    import io

    from bloodcell.errors import ImageError, TruncatedImageError
    from bloodcell.runtime.images import decode_image

    buffer = io.BytesIO()
    Image.open(images / "a.jpg").convert("RGB").save(buffer, format=fmt)
    with pytest.raises(TruncatedImageError):
        decode_image(buffer.getvalue()[: len(buffer.getvalue()) // 2], f"cut.{fmt.lower()}")
    with pytest.raises(ImageError) as garbage:
        decode_image(b"no image here", "garbage.jpg")
    assert not isinstance(garbage.value, TruncatedImageError)
    buffer = io.BytesIO()  # libtiff's layout: the directory after the pixels, so a cut file has none to identify
    Image.open(images / "a.jpg").convert("RGB").save(buffer, format="TIFF", compression="tiff_lzw")
    whole = buffer.getvalue()
    directory = int.from_bytes(whole[4:8], "little")
    for cut in (len(whole) // 2, directory + 1, directory + 20, len(whole) - 3):  # before it, and inside it
        with pytest.raises(TruncatedImageError, match="a TIFF that ends before its directory"):
            decode_image(whole[:cut], "cut.tif")


def test_an_image_smaller_than_a_cell_is_counted_with_a_warning() -> None:
    """A thumbnail or an icon is no field of view: its zero counts are said, not taken silently."""
    from pathlib import Path

    from bloodcell.runtime.predict import predict_image

    predictor = FakePredictor(conf=0.3)

    for h, w, warned in ((6, 8, True), (31, 200, True), (32, 32, False)):
        image = np.full((h, w, 3), (200, 120, 140), np.uint8)
        result = predict_image(predictor, image, Path("x.jpg"), predictor.conf)
        tiny = [m for m in result.warnings if "not a field of view" in m]
        assert tiny == (
            [f"image of {w}x{h} px: smaller than a cell, not a field of view (a thumbnail?)"] if warned else []
        )


def _latin1_copy(source: Path, folder: Path, name: bytes) -> Path:
    """A copy under a name that is not UTF-8 (a Latin-1 camera's é); skipped where the file system refuses it."""
    target = os.fsencode(folder) + b"/" + name
    try:
        shutil.copyfile(source, target)
    except OSError as e:  # macOS (APFS) and Windows names are Unicode: no such file can exist there
        pytest.skip(f"this file system refuses a non-UTF-8 name ({e})")
    return Path(os.fsdecode(target))


def test_a_file_name_that_is_not_utf8_is_counted_and_named_with_its_bytes_escaped(model_file, images, tmp_path, capsys):
    """Its counts reach every output (it was a traceback writing the CSV, after every image was counted):
    named caf\\xe9.jpg in the CSV, the JSON and the annotated copy, which the report finds by that name."""
    slide = tmp_path / "slide"
    slide.mkdir()
    latin = _latin1_copy(images / "a.jpg", slide, b"caf\xe9.jpg")
    shutil.copy(images / "a.jpg", slide / "ok.jpg")
    js, table, out = tmp_path / "r.json", tmp_path / "c.csv", tmp_path / "ann"
    args = ["predict", str(slide), "--model", str(model_file), "--json", str(js), "--csv", str(table)]
    assert main([*args, "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("caf\\xe9.jpg: ")
    records = json.loads(js.read_text(encoding="utf-8"))
    assert [r["image"] for r in records] == ["caf\\xe9.jpg", "ok.jpg"] and records[0]["counts"] == records[1]["counts"]
    assert Path(records[0]["path"]) == latin  # the JSON escapes the real name: the report opens the file itself
    with open(table, newline="", encoding="utf-8") as f:
        assert [row[0] for row in csv.reader(f)][1:] == ["caf\\xe9.jpg", "ok.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["caf\\xe9.jpg", "ok.jpg"]
    from bloodcell.app.report import build_report

    for results, folder in ((js, None), (table, out), (js, slide), (table, slide)):  # --images: the originals too
        summary = build_report(results, images_dir=folder, out=tmp_path / "report.html")
        assert summary.fields == 2 and not summary.missing_images and not summary.failed_images
        assert "caf\\xe9.jpg" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_voc_prelabels_hold_the_counted_boxes_and_never_overwrite(model_file, images, tmp_path, capsys):
    """`predict --voc`: one XML per counted image (its boxes at the operating points, as --json lists them),
    a folder `data check` and training read; a second run keeps what is there (corrected labels)."""
    from bloodcell.data.voc import load_voc

    root = tmp_path / "my_slides"
    (root / "JPEGImages").mkdir(parents=True)
    for name in ("a.jpg", "rgba.png"):
        shutil.copy(images / name, root / "JPEGImages" / name)
    js = tmp_path / "r.json"
    args = ["predict", str(root / "JPEGImages"), "--model", str(model_file), "--json", str(js), "--min-score", "0.3"]
    assert main([*args, "--voc", str(root / "Annotations")]) == 0
    assert f"VOC annotations in {root / 'Annotations'}" in capsys.readouterr().out
    dataset = load_voc(root)
    assert {f.kind for f in dataset.findings} == {"unchecked-prelabel"} and len(dataset.findings) == 2
    from bloodcell.data.check import findings_note

    note = findings_note(dataset)  # what train and val say: used as they are, not "repaired or dropped"
    assert "2 annotation files are `bloodcell predict --voc` pre-labels that no labelling tool has saved" in note
    assert "repaired or dropped" not in note
    assert sorted(r.image_id for r in dataset.records) == ["a", "rgba"]
    listed = {r["image"]: r["detections"] for r in json.loads(js.read_text())}  # min score 0.3: the counted ones
    for record in dataset.records:
        dets = listed[record.image_path.name]
        assert [CLASS_NAMES[i] for i in record.labels] == [d["label"] for d in dets] and len(dets) > 0
        assert np.abs(record.boxes - np.array([d["box"] for d in dets])).max() <= 0.55  # rounded to pixels
    corrected = root / "Annotations" / "a.xml"
    corrected.write_text(corrected.read_text().replace("<name>RBC</name>", "<name>WBC</name>"))
    before = corrected.read_bytes()
    assert main([*args, "--voc", str(root / "Annotations")]) == 0
    assert corrected.read_bytes() == before
    out, err = capsys.readouterr()
    assert "note: 2 annotation(s) already in" in err and "warning" not in err and "VOC annotations in" not in out
    other = root / "Annotations" / "rgba.xml"  # labels copied from another image: kept, and said
    other.write_text(other.read_text().replace("<filename>rgba.png<", "<filename>elsewhere.jpg<"))
    assert main([*args, "--voc", str(root / "Annotations")]) == 0
    assert "warning: rgba.png: rgba.xml kept in" in capsys.readouterr().err


def test_voc_prelabels_of_a_name_that_is_not_utf8_pair_with_their_image(model_file, images, tmp_path):
    """The XML is named with the file's own bytes (the reader finds an image by its annotation's name)."""
    from bloodcell.data.voc import load_voc

    root = tmp_path / "my_slides"
    (root / "JPEGImages").mkdir(parents=True)
    latin = _latin1_copy(images / "a.jpg", root / "JPEGImages", b"caf\xe9.jpg")
    assert (
        main(["predict", str(root / "JPEGImages"), "--model", str(model_file), "--voc", str(root / "Annotations")]) == 0
    )
    dataset = load_voc(root)
    assert [f.kind for f in dataset.findings] == ["unchecked-prelabel"] and [r.image_path for r in dataset.records] == [
        latin
    ]


def test_voc_prelabels_of_two_images_of_one_name_are_refused_before_any(model_file, images, tmp_path, capsys):
    slide = tmp_path / "slide"
    slide.mkdir()
    shutil.copy(images / "a.jpg", slide / "s.jpg")
    shutil.copy(images / "rgba.png", slide / "s.png")
    assert main(["predict", str(slide), "--model", str(model_file), "--voc", str(tmp_path / "voc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"would both be labelled in {tmp_path / 'voc' / 's.xml'}" in err
    assert not (tmp_path / "voc").exists()


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_a_results_file_where_voc_puts_an_annotation_is_refused(model_file, images, tmp_path, flag, capsys):
    """`--voc vv --json vv/a.xml` wrote the JSON over a.jpg's annotation."""
    target = tmp_path / "vv" / "a.xml"
    argv = ["predict", str(images / "a.jpg"), "--model", str(model_file), "--voc", str(tmp_path / "vv"), flag]
    assert main([*argv, str(target)]) == 2
    assert f"{flag} {target}: is where --voc puts the annotation of {images / 'a.jpg'}" in capsys.readouterr().err
    assert not target.exists()


def test_a_name_with_a_newline_or_an_escape_is_one_terminal_line(model_file, images, tmp_path, capsys):
    """The terminal line escapes control characters (a newline split it; an escape sequence ran in the
    terminal); the JSON keeps the name as it is."""
    odd = tmp_path / "a\nb\x1b[31m.jpg"
    shutil.copy(images / "a.jpg", odd)
    assert main(["predict", str(odd), "--model", str(model_file), "--json", str(tmp_path / "r.json")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("a\\nb\\x1b[31m.jpg: ")
    assert json.loads((tmp_path / "r.json").read_text())[0]["image"] == "a\nb\x1b[31m.jpg"
