"""`bloodcell report`: totals and ratios, a self-contained page, missing images, bad input, escaping."""

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from bloodcell.app.report import build_report, counted_detections, source_image
from bloodcell.cli import main
from bloodcell.errors import DatasetError
from bloodcell.weights import default_model

DATA_URI = "data:image/jpeg;base64,"


def det(label: str, score: float, box=(4, 4, 20, 20)) -> dict:
    return {"label": label, "score": score, "box": list(box)}


def record(name: str, rbc: int, wbc: int, platelets: int, w: int = 64, h: int = 48) -> dict:
    """A record whose detections include one extra low-scoring box per class (listed, not counted)."""
    dets = (
        [det("RBC", 0.9 - 0.01 * i) for i in range(rbc)] + [det("WBC", 0.8)] * wbc + [det("Platelets", 0.7)] * platelets
    )
    dets += [det("RBC", 0.1), det("WBC", 0.1), det("Platelets", 0.1)]
    counts = {"RBC": rbc, "WBC": wbc, "Platelets": platelets}
    return {"image": name, "width": w, "height": h, "counts": counts, "detections": dets}


def make_slide(folder: Path, records: list[dict], write_images: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if write_images:
        for i, r in enumerate(records):
            Image.new("RGB", (r["width"], r["height"]), (230, 180 - 20 * i, 200)).save(folder / r["image"])
    path = folder / "results.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    return make_slide(
        tmp_path / "slide", [record("a.jpg", 40, 1, 3), record("b.jpg", 35, 0, 5), record("c.png", 25, 2, 0)]
    )


def test_summary_totals_and_ratios_equal_sums_from_json(slide: Path, tmp_path: Path):
    records = json.loads(slide.read_text())
    summary = build_report(slide, out=tmp_path / "r.html")
    assert summary.fields == 3
    for c in ("RBC", "WBC", "Platelets"):
        total = sum(r["counts"][c] for r in records)
        assert summary.totals[c] == total
        assert summary.mean_per_field[c] == pytest.approx(total / 3)
    assert summary.wbc_per_100_rbc == pytest.approx(100 * 3 / 100)
    assert summary.platelets_per_100_rbc == pytest.approx(100 * 8 / 100)
    assert summary.missing_images == ()
    assert summary.path == tmp_path / "r.html"


def test_page_is_self_contained_and_shows_totals(slide: Path, tmp_path: Path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(slide), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count(DATA_URI) == 3
    for bad in ("http://", "https://", "<script", 'src="/', "url("):
        assert bad not in text
    assert "<td>100</td><td>n/a</td><td>33.3</td>" in text  # RBC total, no interval in these records, mean
    assert "<td>3</td><td>n/a</td><td>1.0</td>" in text  # WBC
    assert "<td>8</td><td>n/a</td><td>2.7</td>" in text  # Platelets
    assert "<td>WBC per 100 RBC</td><td>3.0</td>" in text
    assert "<td>Platelets per 100 RBC</td><td>8.0</td>" in text
    assert "<td>1</td><td>a.jpg</td><td>40</td><td>1</td><td>3</td>" in text  # per-field row
    assert "wrote" in capsys.readouterr().out
    # the footnote claims no intervals the page does not show (a web page's counts at a shifted slider)
    assert "No 90% intervals: the results carry none" in text and "Intervals: 90%" not in text
    records = json.loads(slide.read_text())
    records[0]["count_intervals"] = {c: [max(n - 2, 0), n + 2] for c, n in records[0]["counts"].items()}
    slide.write_text(json.dumps(records))
    assert main(["report", str(slide), "--out", str(out)]) == 0
    text = out.read_text()  # one field with intervals: shown in its row, and the totals said to have none
    assert "<td>40 (38–42)</td>" in text and "for the fields that carry one; the totals have none" in text
    for r in records:
        r["count_intervals"] = {c: [max(n - 2, 0), n + 2] for c, n in r["counts"].items()}
    slide.write_text(json.dumps(records))
    assert main(["report", str(slide), "--out", str(out)]) == 0
    text = out.read_text()
    assert "(fields) and their sum (totals)." in text and "No 90%" not in text and "have none" not in text


def test_ratios_are_na_without_rbc(tmp_path: Path):
    path = make_slide(tmp_path, [record("a.jpg", 0, 2, 1)])
    summary = build_report(path, out=tmp_path / "r.html")
    assert summary.wbc_per_100_rbc is None and summary.platelets_per_100_rbc is None
    text = (tmp_path / "r.html").read_text()
    assert "<td>WBC per 100 RBC</td><td>n/a</td>" in text
    assert "<td>Platelets per 100 RBC</td><td>n/a</td>" in text


def test_only_counted_detections_are_drawn():
    r = record("a.jpg", 3, 1, 0)
    dets = counted_detections(r, ("RBC", "WBC", "Platelets"))
    assert dets.counts(("RBC", "WBC", "Platelets")) == {"RBC": 3, "WBC": 1, "Platelets": 0}
    assert min(dets.scores) > 0.5  # the 0.1 boxes (listed, not counted) are left out


def test_boxes_change_the_thumbnail(tmp_path: Path):
    import base64
    import io

    import numpy as np

    r = record("a.jpg", 1, 0, 0)
    empty = {**r, "image": "b.jpg", "counts": {"RBC": 0, "WBC": 0, "Platelets": 0}}
    path = make_slide(tmp_path, [r, empty])
    build_report(path, out=tmp_path / "r.html")
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', (tmp_path / "r.html").read_text())
    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(u))), np.int16) for u in uris)
    assert a.shape == b.shape and np.abs(a - b).max() > 60  # a red box on a, none on b


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_missing_image_gets_placeholder_and_exit_1(slide: Path, tmp_path: Path, capsys, fault: str):
    if fault == "missing":
        (slide.parent / "b.jpg").unlink()
    else:
        (slide.parent / "b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "report.html"
    assert main(["report", str(slide), "--out", str(out)]) == 1
    text = out.read_text()
    assert text.count(DATA_URI) == 2
    assert 'class="missing"' in text and "b.jpg" in text
    err = capsys.readouterr().err
    assert "warning:" in err and "b.jpg" in err and "Traceback" not in err


def test_images_folder_option(tmp_path: Path):
    images = tmp_path / "images"
    make_slide(images, [record("a.jpg", 2, 1, 1)])
    results = tmp_path / "elsewhere" / "results.json"
    results.parent.mkdir()
    results.write_text((images / "results.json").read_text())
    out = tmp_path / "r.html"
    assert main(["report", str(results), "--out", str(out)]) == 1  # not beside the JSON
    assert main(["report", str(results), "--images", str(images), "--out", str(out)]) == 0
    assert out.read_text().count(DATA_URI) == 1


@pytest.mark.parametrize(
    "content",
    [
        None,  # no such file
        "[{not json",
        '{"image": "a.jpg"}',
        "[]",
        '[{"image": 3, "counts": {}, "detections": []}]',
        '[{"image": "a.jpg", "counts": {"RBC": -1}, "detections": []}]',
        '[{"image": "a.jpg", "counts": {"RBC": 1}, "detections": [{"label": "RBC", "score": 1, "box": [1, 2]}]}]',
        '[{"image": "a.jpg", "counts": {"RBC": 1}, "detections": [{"label": "RBC", "score": 1, "box": [9, 5, 1, 7]}]}]',
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, content: str | None):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "report.html"
    assert main(["report", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err
    assert "Traceback" not in err
    assert not out.exists()
    with pytest.raises(DatasetError):
        build_report(path, out=out)


def test_names_and_title_are_escaped(tmp_path: Path):
    path = make_slide(tmp_path, [record("<b>x.jpg", 1, 0, 0), record("a&b.jpg", 1, 0, 0)])
    out = tmp_path / "r.html"
    build_report(path, out=out, title="<script>alert(1)</script>")
    text = out.read_text()
    assert "<b>" not in text and "&lt;b&gt;x.jpg" in text
    assert "a&amp;b.jpg" in text
    assert "<script" not in text and "&lt;script&gt;" in text
    assert text.count(DATA_URI) == 2  # the odd name was still found on disk


def test_report_from_real_predictions(bccd_root: Path, tmp_path: Path):
    images = sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:2]
    results = tmp_path / "results.json"
    assert main(["predict", *map(str, images), "--json", str(results), "--threads", "2"]) == 0
    records = json.loads(results.read_text())
    out = tmp_path / "report.html"
    summary = build_report(results, images_dir=bccd_root / "JPEGImages", out=out)
    assert summary.fields == 2
    assert summary.totals == {c: sum(r["counts"][c] for r in records) for c in summary.classes}
    text = out.read_text()
    assert text.count(DATA_URI) == 2
    assert f"<td>{summary.totals['RBC']}</td>" in text
    # each record names the model that counted it: file name and the start of its sha256 (the manifest's)
    shipped, sha256 = default_model()
    assert {r["model"] for r in records} == {f"{shipped.name}@{sha256[:12]}"} == set(summary.models)
    assert f"by {shipped.name}@{sha256[:12]}." in text and "warning" not in str(summary)


def test_records_with_a_subfolder_show_their_own_image(tmp_path: Path):
    """predict names inputs that share a file name a/s.jpg and b/s.jpg: each record gets its own image."""
    import base64
    import io

    import numpy as np

    root = tmp_path / "slides"
    for sub, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        (root / sub).mkdir(parents=True)
        Image.new("RGB", (64, 48), colour).save(root / sub / "s.png")
    (root / "s.png").write_bytes(b"not an image")  # where "../s.png" lands when kept inside --images
    Image.new("RGB", (64, 48), (0, 250, 0)).save(tmp_path / "s.png")  # outside: must not be shown
    records = [{**record(f"{sub}/s.png", 0, 0, 0), "detections": []} for sub in ("a", "b")]
    records.append({**record("../s.png", 0, 0, 0), "detections": []})
    results = tmp_path / "results.json"
    results.write_text(json.dumps(records))
    assert main(["report", str(results), "--images", str(root), "--out", str(tmp_path / "r.html")]) == 1
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', (tmp_path / "r.html").read_text())
    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(u))), np.int16).mean((0, 1)) for u in uris)
    assert a[0] > 200 > a[2] and b[2] > 200 > b[0]  # red from a/, blue from b/; the third is a placeholder


def test_report_of_predict_output_draws_on_the_originals_not_the_annotated_copies(tmp_path: Path, monkeypatch):
    from fakes import FakePredictor, save_slide, use_fake_model

    model = use_fake_model(monkeypatch, FakePredictor(conf=0.3), tmp_path / "fake.pt")
    images, out = tmp_path / "images", tmp_path / "run"
    images.mkdir()
    save_slide(images / "a.jpg", seed=0)
    assert main(["predict", str(images), "--model", str(model), "--out", str(out), "--json", str(out / "r.json")]) == 0
    assert (out / "a.jpg").is_file()  # predict's annotated copy, beside the JSON under the same name
    assert main(["report", str(out / "r.json"), "--out", str(tmp_path / "default.html")]) == 0
    assert main(["report", str(out / "r.json"), "--images", str(images), "--out", str(tmp_path / "given.html")]) == 0
    assert main(["report", str(out / "r.json"), "--images", str(out), "--out", str(tmp_path / "copies.html")]) == 0
    tile = {k: re.findall(r'src="(data:image/jpeg[^"]+)"', (tmp_path / f"{k}.html").read_text()) for k in
            ("default", "given", "copies")}  # fmt: skip
    assert tile["default"] == tile["given"] != tile["copies"]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("frame,time_s,width,height,scale,RBC,RBC_lo90,RBC_hi90\n0,0.0,64,48,1,3,2,4\n", "first column is 'image'"),
        ("image,width,height,scale,RBC,RBC_lo90,RBC_hi90\na.jpg,64,48,1,three,2,4\n", "line 2: not a whole number"),
        ("image,width,height,scale,RBC,RBC_lo90,RBC_hi90\na.jpg,64,48,1,3,2\n", "line 2: 6 columns"),
        ("image,width,height,scale,RBC,RBC_lo90,RBC_hi90\n", "no records"),
        ("", "empty file; expected a counts CSV"),
        ("image;RBC;RBC_lo90;RBC_hi90\na.jpg;3;2;4\n", "its columns are separated by ';', not commas"),
        ("sep=;\nimage;RBC;RBC_lo90;RBC_hi90\na.jpg;3;2;4\n", "its columns are separated by ';', not commas"),
        (
            "image,RBC,RBC_lo90,RBC_hi90\nb\xe4d.jpg,3,2,4\n".encode("latin-1"),
            "not UTF-8 text: line 2, byte 29 is 0xe4",
        ),
        (  # past the reader's first 8 KiB, after a byte-order mark: where the file has it
            ("\ufeffimage,RBC,RBC_lo90,RBC_hi90\n" + "a.jpg,3,2,4\n" * 1000).encode()
            + "\xe4.jpg,1,0,2\n".encode("latin-1"),
            "not UTF-8 text: line 1002, byte 12031 is 0xe4",
        ),
    ],
)
def test_a_bad_counts_csv_is_one_line_and_exit_2(tmp_path: Path, capsys, content: str | bytes, problem: str):
    path = tmp_path / "counts.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert problem in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_slide_intervals_add_fields_and_always_hold_the_total():
    from bloodcell.app.report import total_intervals

    def field(n: int, lo: int, hi: int) -> dict:
        return {"counts": {"RBC": n}, "count_intervals": {"RBC": [lo, hi]}}

    # Symmetric fields: the half-widths add in quadrature (4 fields of +-2 -> +-4).
    assert total_intervals([field(10, 8, 12)] * 4, ("RBC",)) == {"RBC": (36, 44)}
    # Counts at the bottom of their intervals (operating point below the calibrated expectation): the
    # midpoints' offsets add up faster than the width, and the interval stretches to hold the total.
    lo, hi = total_intervals([field(17, 17, 20)] * 76, ("RBC",))["RBC"]
    assert (lo, hi) == (17 * 76, 1420)
    assert total_intervals([field(1, 0, 2), {"counts": {"RBC": 1}}], ("RBC",)) is None  # a field without one


def test_the_web_pages_downloads_make_a_report_without_their_failed_uploads(slide: Path, tmp_path: Path, capsys):
    """results.json ({model, thresholds, images}) and counts.csv from `bloodcell serve`'s page; an upload
    that failed there is an entry or row with an error and no counts: left out, named in the report,
    exit code 1."""
    records = json.loads(slide.read_text())
    page_json = tmp_path / "results.json"
    images = [*records, {"image": "broken.jpg", "error": "broken.jpg: empty file"}]
    page_json.write_text(json.dumps({"model": "cellnet_bccd.pt", "thresholds": {}, "images": images}))
    summary = build_report(page_json, images_dir=slide.parent, out=tmp_path / "r.html")
    assert summary.fields == 3 and summary.totals["RBC"] == 100 and summary.failed_images == ("broken.jpg",)
    html = (tmp_path / "r.html").read_text()
    assert "1 field failed to process, not counted: broken.jpg" in html
    assert main(["report", str(page_json), "--images", str(slide.parent), "--out", str(tmp_path / "c.html")]) == 1
    assert "1 field failed to process, not counted: broken.jpg" in capsys.readouterr().out
    header = "image,width,height,RBC,RBC_lo90,RBC_hi90,RBC_threshold,warnings,error\n"
    page_csv = tmp_path / "counts.csv"
    shutil.copy(slide.parent / "a.jpg", slide.parent / "-a.jpg")  # the page writes it as '-a.jpg (no formula)
    rows = '"a.jpg",64,48,40,38,43,0.64,"",""\n"\'-a.jpg",64,48,4,3,5,0.64,"",""\n'
    page_csv.write_text(header + rows + '"b.jpg","","","","","","","","empty file"\n')
    summary = build_report(page_csv, images_dir=slide.parent, out=tmp_path / "r2.html")
    assert summary.fields == 2 and summary.totals["RBC"] == 44 and summary.missing_images == ()
    assert summary.failed_images == ("b.jpg",)
    assert "counted at operating points RBC 0.64." in (tmp_path / "r2.html").read_text()  # the page's thresholds
    pngs = tmp_path / "downloads"  # the page's "Annotated PNGs" button saves <name>_annotated.png
    pngs.mkdir()
    for name in ("a.jpg", "-a.jpg"):
        Image.new("RGB", (64, 48), (200, 40, 40)).save(pngs / f"{name}_annotated.png")
    assert build_report(page_csv, images_dir=pngs, out=tmp_path / "r3.html").missing_images == ()
    # f.jpg and f.png are two fields with two PNGs; an older page's f_annotated.png is still found
    for name in ("f.jpg", "f.png"):
        Image.new("RGB", (64, 48)).save(pngs / f"{name}_annotated.png")
    Image.new("RGB", (64, 48)).save(pngs / "old_annotated.png")
    fields = ("f.jpg", "f.png", "old.jpg")
    found = {n: source_image({"image": n, "annotated": True}, page_csv, pngs).name for n in fields}
    assert found == {"f.jpg": "f.jpg_annotated.png", "f.png": "f.png_annotated.png", "old.jpg": "old_annotated.png"}


def test_the_report_says_which_operating_points_counted(tmp_path: Path):
    """A server run with `--conf RBC=0.6` (or predict --conf) writes its points into every record."""
    records = [
        {**record("a.jpg", 40, 1, 3), "conf": [0.6, 0.55, 0.62]},
        {**record("b.jpg", 35, 0, 5), "conf": [0.6, 0.55, 0.62]},
    ]
    build_report(make_slide(tmp_path / "s", records), out=tmp_path / "r.html")
    assert "counted at operating points RBC 0.60, WBC 0.55, Platelets 0.62." in (tmp_path / "r.html").read_text()
    records[1]["conf"] = [0.64, 0.55, 0.62]
    summary = build_report(make_slide(tmp_path / "t", records), out=tmp_path / "t.html")
    assert "counted at each field's operating points." in (tmp_path / "t.html").read_text()
    # two fields at other points (a rerun with --conf, the page's slider): their sum is no one count
    said = "fields counted at 2 sets of operating points (0.6/0.55/0.62; 0.64/0.55/0.62): the totals mix"
    assert f"warning: {said}" in str(summary) and said in (tmp_path / "t.html").read_text()
    for r in records:  # a predict or watch counts CSV records none: not claimed to be the model's
        del r["conf"]
    build_report(make_slide(tmp_path / "u", records), out=tmp_path / "u.html")
    assert "counted at operating points the results do not record." in (tmp_path / "u.html").read_text()


def test_a_slide_counted_by_two_models_is_warned_of(tmp_path: Path):
    """Fields counted by another model or refit (a rerun of some fields) sum counts of other operating points."""
    records = [{**record("a.jpg", 40, 1, 3), "model": "cellnet_bccd.pt@aaaa"}]
    records.append({**record("b.jpg", 35, 0, 5), "model": "refit.pt@bbbb"})
    summary = build_report(make_slide(tmp_path / "s", records), out=tmp_path / "r.html")
    said = "fields counted by 2 models (cellnet_bccd.pt@aaaa, refit.pt@bbbb): the totals mix their counts"
    assert summary.models == ("cellnet_bccd.pt@aaaa", "refit.pt@bbbb") and f"warning: {said}" in str(summary)
    assert said in (tmp_path / "r.html").read_text()
    del records[1]["model"]  # one that names none (an older results file merged in): said, not "counted by"
    summary = build_report(make_slide(tmp_path / "t", records), out=tmp_path / "t.html")
    said = "1 fields do not say which model counted them (the others: cellnet_bccd.pt@aaaa)"
    assert f"warning: {said}" in str(summary) and "counted by" not in str(summary)
    assert (
        said in (tmp_path / "t.html").read_text()
        and "by cellnet_bccd.pt@aaaa." not in (tmp_path / "t.html").read_text()
    )


def test_the_report_never_writes_over_its_input_and_refuses_a_batch_archive(slide: Path, tmp_path: Path, capsys):
    before = slide.read_bytes()
    for out in (slide, slide.parent / "a.jpg"):  # its results, an image: refused, untouched
        assert main(["report", str(slide), "--out", str(out)]) == 2
        assert "the report is an HTML page; name it .html" in capsys.readouterr().err
    assert slide.read_bytes() == before and Image.open(slide.parent / "a.jpg").size == (64, 48)
    archive = tmp_path / "counts.parquet"
    (archive / "_runs").mkdir(parents=True)
    for given in (archive, archive / "_runs" / "r.csv"):
        assert main(["report", str(given), "--out", str(tmp_path / "r.html")]) == 2
        assert "`bloodcell batch`'s Parquet archive is not one" in capsys.readouterr().err
    (slide.parent / "bloodcell").mkdir()
    (slide.parent / "bloodcell" / "counts.csv").touch()
    assert main(["report", str(slide.parent), "--out", str(tmp_path / "r.html")]) == 2  # a watched slide's folder
    assert f"a folder, not a results file; its watch results are {slide.parent / 'bloodcell' / 'counts.csv'}" in (
        capsys.readouterr().err
    )


def test_an_image_of_another_size_than_counted_is_warned_of(slide: Path, tmp_path: Path, capsys):
    Image.new("RGB", (32, 24)).save(slide.parent / "a.jpg")  # the results say 64x48
    assert main(["report", str(slide), "--out", str(tmp_path / "r.html")]) == 0
    assert "a.jpg: 32x24, but a.jpg was counted at 64x48; its boxes are scaled to it" in capsys.readouterr().err


def test_fields_counted_with_warnings_are_flagged_in_the_report(tmp_path: Path, capsys):
    """predict's JSON records and the page's CSV carry warnings (a grayscale image, a scale that could not be
    measured): counted, but said in the summary, the table and the captions."""
    records = [record("a.jpg", 40, 1, 3), record("gray.png", 30, 0, 0), record("c.png", 25, 2, 0)]
    records[1]["warnings"] = ["grayscale image: white cells and platelets are told apart by the stain's colour"]
    slide = make_slide(tmp_path / "slide", records)
    summary = build_report(slide, out=tmp_path / "r.html")
    assert summary.doubtful_images == ("gray.png",) and summary.fields == 3  # still counted
    html = (tmp_path / "r.html").read_text()
    assert "1 field counted with warnings (their counts are doubtful; see the table): gray.png" in html
    assert "<th>Warnings</th>" in html and "grayscale image: white cells" in html
    assert "1 field counted with warnings (doubtful counts): gray.png" in str(summary)
    header = "image,width,height,RBC,RBC_lo90,RBC_hi90,RBC_threshold,warnings,error\n"
    page_csv = tmp_path / "counts.csv"
    page_csv.write_text(header + '"a.jpg",64,48,40,38,43,0.64,"too few red cells; grayscale image",""\n')
    summary = build_report(page_csv, images_dir=slide.parent, out=tmp_path / "r2.html")
    assert summary.doubtful_images == ("a.jpg",)
    assert "too few red cells; grayscale image" in (tmp_path / "r2.html").read_text()
    blank = [record("a.jpg", 40, 1, 3)]
    blank[0]["warnings"] = ["", " "]  # no words, no warning
    clean = make_slide(tmp_path / "clean", blank)
    assert "Warnings" not in (build_report(clean, out=tmp_path / "r3.html").path.read_text())


def test_a_byte_order_mark_is_read_and_an_image_is_named_as_one(tmp_path: Path, capsys):
    """Excel's "CSV UTF-8" and Notepad start the file with a BOM; an image given as the results says so."""
    rows = "image,width,height,RBC,RBC_lo90,RBC_hi90\na.jpg,64,48,3,2,4\n"
    (tmp_path / "counts.csv").write_text("\ufeff" + rows, encoding="utf-8")
    assert build_report(tmp_path / "counts.csv", out=tmp_path / "c.html").totals == {"RBC": 3}
    (tmp_path / "r.json").write_text("\ufeff" + json.dumps([record("a.jpg", 5, 1, 2)]), encoding="utf-8")
    assert build_report(tmp_path / "r.json", out=tmp_path / "r.html").totals["RBC"] == 5
    Image.new("RGB", (8, 8)).save(tmp_path / "field.jpg")
    assert main(["report", str(tmp_path / "field.jpg"), "--out", str(tmp_path / "x.html")]) == 2
    assert "field.jpg: an image, not a results file" in capsys.readouterr().err


def test_an_empty_title_is_refused(slide: Path, tmp_path: Path, capsys):
    assert main(["report", str(slide), "--title", " ", "--out", str(tmp_path / "r.html")]) == 2
    assert "--title is empty" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("value", ["a.jpg", "=x", "+1", "-a.jpg", "@s", "'a", "'=x", "''", "'", "", "=", "'''"])
def test_spreadsheet_text_is_never_a_formula_and_round_trips(value: str):
    from bloodcell.app.sinks import FORMULA_START, from_spreadsheet_text, spreadsheet_text

    cell = spreadsheet_text(value)
    assert cell[:1] not in tuple(FORMULA_START) and from_spreadsheet_text(cell) == value


def test_predict_csv_names_formulas_as_text_and_the_report_reads_them_back(tmp_path: Path):
    """`predict --csv` on files named like formulas: each name gets a leading ' (a spreadsheet shows it,
    never runs it) and `bloodcell report` finds every image under its own name."""
    import csv

    sample = default_model()[0].parents[1] / "assets" / "samples" / "BloodImage_00007.jpg"
    folder = tmp_path / "fields"
    folder.mkdir()
    for name in ("=1+2.jpg", "@cell.jpg", "'=odd.jpg", "plain.jpg"):
        shutil.copy(sample, folder / name)
    counts = tmp_path / "counts.csv"
    assert main(["predict", str(folder), "--csv", str(counts)]) == 0
    with open(counts, newline="") as f:
        names = sorted(row[0] for row in list(csv.reader(f))[1:])
    assert names == ["''=odd.jpg", "'=1+2.jpg", "'@cell.jpg", "plain.jpg"]
    summary = build_report(counts, images_dir=folder, out=tmp_path / "r.html")
    assert summary.fields == 4 and summary.missing_images == ()


def test_a_field_listed_twice_is_counted_once_and_said(tmp_path: Path):
    """Results files joined together (the same predict run twice): each field once, by its last record, as a
    counts CSV keeps an image's last row; said, not silently doubled."""
    records = [record("a.jpg", 40, 1, 3), record("b.jpg", 35, 0, 5)]
    once = build_report(make_slide(tmp_path / "s", records), out=tmp_path / "r.html")
    twice = build_report(make_slide(tmp_path / "t", records + [dict(r) for r in records]), out=tmp_path / "t.html")
    assert twice.fields == once.fields == 2 and twice.totals == once.totals
    said = "2 fields listed more than once (results files joined?), each counted once, by its last record: a.jpg, b.jpg"
    assert f"note: {said}" in str(twice) and said in (tmp_path / "t.html").read_text()
    assert "listed more than once" not in str(once)


def test_a_field_failed_in_one_joined_file_and_counted_in_another_is_taken_by_its_last_record(tmp_path: Path):
    failed = {"image": "a.jpg", "error": "a.jpg: cannot decode image"}
    slide = make_slide(tmp_path / "s", [failed, record("a.jpg", 40, 1, 3), record("b.jpg", 35, 0, 5)], False)
    summary = build_report(slide, out=tmp_path / "r.html")
    assert summary.fields == 2 and summary.failed_images == () and summary.repeated_images == ("a.jpg",)
    slide = make_slide(tmp_path / "t", [record("a.jpg", 40, 1, 3), record("b.jpg", 35, 0, 5), failed], False)
    summary = build_report(slide, out=tmp_path / "t.html")
    assert summary.fields == 1 and summary.failed_images == ("a.jpg",)
