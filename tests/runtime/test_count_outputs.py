"""Counts with intervals and the scale used, in every output: predict JSON/CSV, the report; --conf per class.

On the numpy FakePredictor with per-class operating points and a calibration."""

import csv
import json

import pytest

from bloodcell.app.report import build_report
from bloodcell.cli import main
from bloodcell.runtime.counting import Calibration
from fakes import FakePredictor, save_slide, use_fake_model

NAMES = ("RBC", "WBC", "Platelets")


@pytest.fixture
def calibrated_model(monkeypatch, tmp_path):
    """A model file with per-class operating points, a calibration and no trained cell size."""
    calibration = Calibration({n: ((0.0, 0.5, 1.0), (0.0, 0.5, 0.9)) for n in NAMES}, floor=0.05)
    predictor = FakePredictor(conf=(0.3, 0.6, 0.4), calibration=calibration, class_names=NAMES)
    return use_fake_model(monkeypatch, predictor, tmp_path / "models" / "cal.pt")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    save_slide(d / "a.jpg", seed=1)
    save_slide(d / "sub" / "b.jpg", seed=2)
    return d


def run(model, image_dir, tmp_path, *flags):
    js, cs = tmp_path / "r.json", tmp_path / "c.csv"
    argv = ["predict", str(image_dir / "a.jpg"), "--model", str(model), "--json", str(js), "--csv", str(cs)]
    code = main([*argv, *flags])
    return code, json.loads(js.read_text()) if js.exists() else None, cs


def test_records_carry_intervals_operating_points_and_scale(calibrated_model, image_dir, tmp_path):
    code, records, cs = run(calibrated_model, image_dir, tmp_path, "--min-score", "0.05")
    assert code == 0
    r = records[0]
    assert r["conf"] == [0.3, 0.6, 0.4] and r["scale"] == 1.0
    for name in NAMES:
        lo, hi = r["count_intervals"][name]
        assert 0 <= lo <= r["counts"][name] <= hi  # a count never falls outside its own interval
        counted = sum(d["label"] == name and d["score"] >= r["conf"][NAMES.index(name)] for d in r["detections"])
        assert r["counts"][name] == counted  # each class at its own operating point
    rows = list(csv.DictReader(cs.open()))
    assert list(rows[0])[:7] == ["image", "width", "height", "scale", "RBC", "RBC_lo90", "RBC_hi90"]
    assert int(rows[0]["RBC"]) == r["counts"]["RBC"]
    assert [int(rows[0]["RBC_lo90"]), int(rows[0]["RBC_hi90"])] == r["count_intervals"]["RBC"]


def test_conf_per_class_overrides_only_the_named_class(calibrated_model, image_dir, tmp_path):
    _, base, _ = run(calibrated_model, image_dir, tmp_path / "a", "--min-score", "0.05")
    _, strict, _ = run(calibrated_model, image_dir, tmp_path / "b", "--min-score", "0.05", "--conf", "RBC=0.9")
    assert strict[0]["conf"] == [0.9, 0.6, 0.4]
    assert strict[0]["counts"]["WBC"] == base[0]["counts"]["WBC"]
    assert strict[0]["counts"]["RBC"] <= base[0]["counts"]["RBC"]


@pytest.mark.parametrize("flag", [["--conf", "NK=0.3"], ["--conf", "2"], ["--cell-size", "-4"], ["--cell-size", "big"]])
def test_bad_counting_flags_are_refused(calibrated_model, image_dir, tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:  # argparse refuses the form before anything runs
        code, _, _ = run(calibrated_model, image_dir, tmp_path, *flag)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag[0] in err and "Traceback" not in err


def test_cell_size_needs_a_model_that_knows_its_cell_size(calibrated_model, image_dir, tmp_path, capsys):
    code, _, _ = run(calibrated_model, image_dir, tmp_path, "--cell-size", "80")
    assert code == 2 and "--cell-size" in capsys.readouterr().err


def test_report_sums_intervals_over_fields(tmp_path):
    records = [
        {"image": f"{i}.jpg", "counts": {"RBC": 20, "WBC": 1}, "count_intervals": {"RBC": [18, 22], "WBC": [1, 1]},
         "detections": []}
        for i in range(4)
    ]  # fmt: skip
    path = tmp_path / "r.json"
    path.write_text(json.dumps(records))
    summary = build_report(path, out=tmp_path / "report.html")
    lo, hi = summary.intervals["RBC"]
    # four independent fields of +-2: the total's interval is about +-4 (sqrt(4) * 2), not +-8
    assert lo < 80 < hi and 3 <= 80 - lo <= 5 and 3 <= hi - 80 <= 5
    assert summary.intervals["WBC"] == (4, 4)
    assert "90% interval" in (tmp_path / "report.html").read_text()
    records[0]["count_intervals"] = {"RBC": [5, 2]}
    path.write_text(json.dumps(records))
    with pytest.raises(Exception, match="count_intervals"):
        build_report(path, out=tmp_path / "bad.html")


def test_same_file_names_in_different_folders_keep_their_own_outputs(calibrated_model, tmp_path):
    src = tmp_path / "in"
    for rel, seed in (("a/s.jpg", 1), ("b/s.jpg", 2), ("a/s.jpeg", 3)):
        save_slide(src / rel, seed)
    out, js, cs = tmp_path / "ann", tmp_path / "r.json", tmp_path / "c.csv"
    argv = [str(src / "a"), str(src / "b"), "--model", str(calibrated_model), "--out", str(out)]
    assert main(["predict", *argv, "--json", str(js), "--csv", str(cs)]) == 0
    names = sorted(r["image"] for r in json.loads(js.read_text()))
    assert names == ["a/s.jpeg", "a/s.jpg", "b/s.jpg"]
    assert sorted(r["image"] for r in csv.DictReader(cs.open())) == names
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a/s.jpeg.jpg", "a/s.jpg", "b/s.jpg"]
