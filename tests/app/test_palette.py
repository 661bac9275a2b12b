"""One palette: every place that shows a class (annotated image, HTML report, web API, plots) uses one colour for it."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.app.report import build_report
from bloodcell.app.server import create_app
from bloodcell.data.stats import class_colour
from bloodcell.types import CLASS_NAMES, Detections
from fakes import FakePredictor

STATIC = Path(__file__).resolve().parents[2] / "src" / "bloodcell" / "app" / "static"


def hex_of(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


@pytest.fixture(scope="module")
def card_colors():
    app = create_app(FakePredictor(), model_name="fake.pt")
    with TestClient(app, base_url="http://localhost:8000") as client:
        card = client.get("/api/v1/model").json()
    assert card["classes"] == list(CLASS_NAMES)
    return {c: v.lower() for c, v in card["colors"].items()}


def annotator_colors() -> dict[str, str]:
    """The outline colour the annotator draws for each class, read back from the image."""
    image = np.full((120, 300, 3), 128, np.uint8)
    boxes = [(20 + 90 * i, 40, 80 + 90 * i, 100) for i in range(len(CLASS_NAMES))]
    dets = Detections(boxes, list(range(len(CLASS_NAMES))), [0.9] * len(CLASS_NAMES))
    drawn = np.asarray(BoxAnnotator(CLASS_NAMES, thickness=2, show_scores=False).annotate(image, dets))
    return {c: hex_of(drawn[70, x1]) for c, (x1, _, _, _) in zip(CLASS_NAMES, boxes, strict=True)}


def report_colors(tmp_path: Path) -> dict[str, str]:
    record = {"image": "a.jpg", "width": 64, "height": 48, "counts": dict.fromkeys(CLASS_NAMES, 0), "detections": []}
    results = tmp_path / "results.json"
    results.write_text(json.dumps([record]))
    build_report(results, out=tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    found = re.findall(r'class="swatch" style="background:(#[0-9a-fA-F]{6})"></span>([^<]+)<', text)
    return {name: colour.lower() for colour, name in found}


def test_report_annotator_api_and_plots_agree_per_class(card_colors, tmp_path):
    annotated = annotator_colors()
    reported = report_colors(tmp_path)
    plotted = {c: class_colour(c, CLASS_NAMES) for c in CLASS_NAMES}
    assert set(card_colors) == set(reported) == set(CLASS_NAMES)
    assert annotated == reported == card_colors == plotted
    assert len(set(annotated.values())) == len(CLASS_NAMES)  # classes are told apart


def test_web_page_takes_class_colours_from_the_api():
    """The page has no palette of its own: app.js colours classes from /api/v1/model's ``colors``."""
    js = (STATIC / "app.js").read_text()
    assert "model.colors[" in js
    assert not re.search(r"#[0-9a-fA-F]{3,8}\b|\brgba?\(|\bhsla?\(", js)
    for name in ("app.js", "style.css", "index.html"):
        text = (STATIC / name).read_text()
        assert not any(re.search(rf"\b{c}\b", text, re.IGNORECASE) for c in CLASS_NAMES), name
