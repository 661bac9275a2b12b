"""End to end in headless Chromium: the `bloodcell serve` page and a `bloodcell report` file (shipped model, BCCD).

Playwright drives Debian's Chromium at /usr/bin/chromium (installed by `.ci/run` with apt; never a browser
download). With BLOODCELL_UPDATE_DOCS=1 the screenshots are also copied to docs/ for the README.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from bloodcell.app.report import build_report
from bloodcell.app.server import create_app
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import predict_image

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
# The flags known to work on these machines: no GPU, no QUIC, and no background calls to Google's hosts.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMAGES = ("BloodImage_00001.jpg", "BloodImage_00002.jpg")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must provide it (.ci/run installs Debian's chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (dev extra)")
    return sync_playwright


@pytest.fixture
def page(sync_playwright, tmp_path: Path):
    """A page in a fresh Chromium with a new, empty profile folder."""
    profile = tmp_path / "profile"
    profile.mkdir()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(20_000)
            from playwright.sync_api import expect  # imported as the tests import it: playwright may be missing

            expect.set_options(timeout=20_000)  # assertions wait as actions do (5 s: counting on a busy 2-core CI)
            yield page
        finally:
            context.close()


@pytest.fixture(scope="module")
def shipped():
    return load_predictor(None)


def save_screenshot(page, path: Path, docs_name: str) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("BLOODCELL_UPDATE_DOCS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / docs_name)


def table_counts(page, classes: list[str], row: str) -> dict[str, int]:
    """The per-class cells of one row of the page's summary table (``row``: a selector inside #summary)."""
    head = page.locator("#summary thead th").all_inner_texts()
    cells = page.locator(f"#summary {row} td").all_inner_texts()
    assert head[2 : 2 + len(classes)] == classes, head
    return {name: int(cells[head.index(name)].split()[0]) for name in classes}  # "21 (19–24)": the count


def downloaded_report(page, button: str, saved: Path):
    """Click the page's download ``button``, save the file as ``saved`` and make a slide report of it."""
    with page.expect_download() as download:
        page.locator(button).click()
    download.value.save_as(saved)
    return build_report(saved, out=saved.with_suffix(".html"))


def test_page_counts_equal_the_api(page, shipped, serving, bccd_root: Path, tmp_path: Path):
    from playwright.sync_api import expect

    image = bccd_root / "JPEGImages" / IMAGES[0]
    with serving(create_app(shipped)) as url:
        model = httpx.get(f"{url}/api/v1/model", timeout=10).json()
        classes = model["classes"]
        api = httpx.post(f"{url}/api/v1/detect", files={"file": (image.name, image.read_bytes())}, timeout=30)
        assert api.status_code == 200, api.text
        api_counts = api.json()["counts"]
        assert sum(api_counts.values()) > 0

        page.goto(url + "/")
        # Waits go through locators: the page's CSP (no 'unsafe-eval') refuses wait_for_function's string eval.
        expect(page.locator("#thr-value")).to_have_text("+0.00")  # the slider starts at the model's operating points
        assert float(page.locator("#thr").input_value()) == 0
        page.locator("#files").set_input_files(str(image))
        expect(page.locator("#status")).to_have_text("1 image counted")
        page.locator("#summary").wait_for(state="visible")
        assert page.locator(".card.error").count() == 0

        # Boxes were drawn: the card's canvas shows the image at its own size, not blank.
        canvas = page.locator(".card canvas")
        assert canvas.is_visible()
        assert canvas.evaluate("c => [c.width, c.height]") == [api.json()["width"], api.json()["height"]]
        assert canvas.evaluate("c => c.toDataURL().length") > 10_000

        # Counts on the page (the image's row, the totals row and the card's caption) equal the API's.
        assert page.locator("#summary tbody td").first.inner_text() == image.name
        assert table_counts(page, classes, "tbody tr") == api_counts
        assert table_counts(page, classes, "tfoot tr") == api_counts
        caption = page.locator(".card .counts").inner_text()
        intervals = api.json()["count_intervals"]
        assert caption == " · ".join(
            f"{name} {api_counts[name]} ({intervals[name][0]}–{intervals[name][1]})" for name in classes
        )
        totals = page.locator("#summary tfoot td").all_inner_texts()
        assert totals[2] == f"{api_counts['RBC']} ({intervals['RBC'][0]}–{intervals['RBC'][1]})"
        save_screenshot(page, tmp_path / "serve.png", "serve.png")

        # Moving the slider shifts every class's operating point and re-counts in the page; the API agrees.
        page.locator("#thr").evaluate(
            "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', { bubbles: true })); }", "0.2"
        )
        expect(page.locator("#thr-value")).to_have_text("+0.20")
        low = httpx.post(
            f"{url}/api/v1/detect",
            params={"min_score": 0.05},
            files={"file": (image.name, image.read_bytes())},
            timeout=30,
        ).json()
        points = dict(zip(classes, model["conf"], strict=True))
        expected = {
            name: sum(d["label"] == name and d["score"] >= min(1.0, points[name] + 0.2) for d in low["detections"])
            for name in classes
        }
        assert table_counts(page, classes, "tbody tr") == expected
        assert sum(expected.values()) < sum(api_counts.values())
        assert "(" not in page.locator(".card .counts").inner_text()  # intervals hold at the model's own points only


def test_report_renders_the_summary_totals(page, shipped, bccd_root: Path, tmp_path: Path):
    images_dir = bccd_root / "JPEGImages"
    records = [
        predict_image(shipped, load_image(images_dir / name), Path(name), shipped.conf).to_record() for name in IMAGES
    ]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(records))
    summary = build_report(results, images_dir=images_dir, out=tmp_path / "report.html")
    assert summary.missing_images == () and summary.fields == len(IMAGES)
    for c in summary.classes:
        assert summary.totals[c] == sum(r["counts"].get(c, 0) for r in records)

    page.goto(summary.path.resolve().as_uri())
    rows = page.locator("table").first.locator("tr")
    assert rows.first.locator("th").all_inner_texts() == ["Class", "Total", "90% interval", "Mean per field"]
    shown = {}
    for i in range(1, rows.count()):
        name, total, interval, mean = rows.nth(i).locator("td").all_inner_texts()
        shown[name.strip()] = (int(total), tuple(int(v) for v in interval.split("–")), float(mean))
    assert shown == {
        c: (summary.totals[c], summary.intervals[c], round(summary.mean_per_field[c], 1)) for c in summary.classes
    }
    assert page.get_by_text(f"{summary.fields} fields of view").is_visible()
    ratios = dict(r.locator("td").all_inner_texts() for r in page.locator("table").nth(1).locator("tr").all())
    assert ratios["WBC per 100 RBC"] == f"{summary.wbc_per_100_rbc:.1f}"
    assert ratios["Platelets per 100 RBC"] == f"{summary.platelets_per_100_rbc:.1f}"
    # Every thumbnail is an embedded image that the browser decoded.
    thumbs = page.locator("figure img")
    assert thumbs.count() == len(IMAGES)
    assert all(w > 0 for w in thumbs.evaluate_all("imgs => imgs.map(i => i.naturalWidth)"))
    save_screenshot(page, tmp_path / "report.png", "report.png")


def test_page_shows_warnings_keeps_names_skips_repeats_and_its_json_makes_a_report(
    page, shipped, serving, bccd_root: Path, tmp_path: Path
):
    from PIL import Image
    from playwright.sync_api import expect

    gray = tmp_path / "patient #12 gray+1.png"  # a lab's name, kept as the browser sent it
    Image.open(bccd_root / "JPEGImages" / IMAGES[0]).convert("L").save(gray)
    color = bccd_root / "JPEGImages" / IMAGES[1]
    with serving(create_app(shipped)) as url:
        page.goto(url + "/")
        expect(page.locator("#thr-value")).to_have_text("+0.00")
        page.locator("#files").set_input_files([str(gray), str(color)])
        expect(page.locator("#status")).to_have_text("2 images counted")
        assert page.locator("#summary tbody tr").first.locator("td").first.inner_text() == gray.name
        warning = page.locator(".card .warnings").first.inner_text()
        assert warning.startswith("⚠ grayscale image")  # the API's warning, shown where the counts are
        assert page.locator("#summary tfoot td").last.inner_text() == "1 with warnings"

        page.locator("#files").set_input_files(str(gray))  # the same file again is not counted twice
        expect(page.locator("#status")).to_have_text("2 images counted; 1 file(s) already on the page, not added again")
        assert page.locator(".card").count() == 2

        summary = downloaded_report(page, "#json", tmp_path / "results.json")
        assert summary.fields == 2
        shown = [table_counts(page, list(summary.classes), f"tbody tr:nth-child({i})") for i in (1, 2)]
        assert summary.totals == {c: sum(counts[c] for counts in shown) for c in summary.classes}

        broken = tmp_path / "broken.jpg"
        broken.write_text("not an image")
        for _ in range(2):  # a failed upload dropped again is tried again, not refused as already there
            page.locator("#files").set_input_files(str(broken))
            expect(page.locator("#status")).to_have_text("2 images counted, 1 failed")
            assert page.locator(".card.error").count() == 1

        page.locator("#clear").click()
        expect(page.locator("#status")).to_have_text("0 images counted")
        assert page.locator(".card").count() == 0 and page.locator("#summary").is_hidden()

        # a TIFF, which browsers cannot draw: its counts, and a line saying why there is no picture
        tiff = tmp_path / "field.tif"
        Image.open(color).save(tiff)
        page.locator("#files").set_input_files([str(tiff), str(color)])
        expect(page.locator("#status")).to_have_text("2 images counted")
        notes = page.locator(".card .no-preview")
        assert [notes.nth(i).is_visible() for i in range(2)] == [True, False]
        assert "cannot show this image" in notes.first.inner_text()
        page.reload()
        page.keyboard.press("Tab")  # the chooser is the page's first stop for the keyboard (not display: none)
        expect(page.locator("#files")).to_be_focused()


def test_two_files_of_one_name_are_two_fields_with_their_own_names(
    page, shipped, serving, bccd_root: Path, tmp_path: Path
):
    """a/s.jpg and b/s.jpg (two folders, two pictures) are "s.jpg" and "s (2).jpg" on the page, in its CSV
    so a report of its CSV counts both; a PNG is named after the whole file name (f.jpg and f.png differ)."""
    from playwright.sync_api import expect

    names = []
    for folder, image in (("a", IMAGES[0]), ("b", IMAGES[1])):
        (tmp_path / folder).mkdir()
        names.append(tmp_path / folder / "s.jpg")
        shutil.copy(bccd_root / "JPEGImages" / image, names[-1])
    with serving(create_app(shipped)) as url:
        page.goto(url + "/")
        page.locator("#files").set_input_files([str(p) for p in names])
        expect(page.locator("#status")).to_have_text("2 images counted")
        rows = page.locator("#summary tbody tr")
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(2)] == ["s.jpg", "s (2).jpg"]
        shown = [table_counts(page, list(shipped.class_names), f"tbody tr:nth-child({i})") for i in (1, 2)]
        summary = downloaded_report(page, "#csv", tmp_path / "counts.csv")
        assert summary.fields == 2
        assert summary.totals == {c: sum(counts[c] for counts in shown) for c in summary.classes}
        page.locator("#clear").click()
        page.locator("#files").set_input_files(str(names[1]))  # one field: one download to catch
        expect(page.locator("#status")).to_have_text("1 image counted")
        with page.expect_download() as download:
            page.locator("#png").click()
        assert download.value.suggested_filename == "s.jpg_annotated.png"  # the whole name: f.jpg and f.png differ


def test_the_pages_csv_keeps_formula_names_as_text(page, shipped, serving, bccd_root: Path, tmp_path: Path):
    """Files named like formulas: the page's counts.csv escapes them as bloodcell's own CSVs do (a leading ',
    also before a name that starts with ' and a formula sign), and the report reads every name back."""
    import csv

    from playwright.sync_api import expect

    files = [tmp_path / name for name in ("=1+2.jpg", "'=odd.jpg")]
    for path in files:
        shutil.copy(bccd_root / "JPEGImages" / IMAGES[0], path)
    with serving(create_app(shipped)) as url:
        page.goto(url + "/")
        page.locator("#files").set_input_files([str(p) for p in files])
        expect(page.locator("#status")).to_have_text("2 images counted")
        summary = downloaded_report(page, "#csv", tmp_path / "counts.csv")
    with open(tmp_path / "counts.csv", newline="") as f:
        assert sorted(row[0] for row in list(csv.reader(f))[1:]) == ["''=odd.jpg", "'=1+2.jpg"]
    # (no annotated PNGs were saved: the report names the two fields without pictures, by their own names)
    assert summary.fields == 2 and sorted(summary.missing_images) == ["'=odd.jpg", "=1+2.jpg"]


def test_files_chosen_before_the_page_has_read_the_model_are_counted_once_it_has(
    page, shipped, serving, bccd_root: Path
):
    """The page takes files at once (a drop before it is wired would open the image in place of the page) and
    counts them when the model's answer comes; here that answer is held back until the file is chosen."""
    from playwright.sync_api import expect

    held = []
    page.route("**/api/v1/model", lambda route: held.append(route))
    with serving(create_app(shipped)) as url:
        page.goto(url + "/")
        for _ in range(200):  # the route's handler runs while Playwright waits
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the page never asked for the model"
        page.locator("#files").set_input_files(str(bccd_root / "JPEGImages" / IMAGES[0]))
        page.wait_for_timeout(300)
        assert "operating points" not in page.locator("#model").inner_text()
        assert page.locator(".card").count() == 0
        held[0].continue_()
        expect(page.locator("#status")).to_have_text("1 image counted")
        assert page.locator(".card.error").count() == 0
