"""`bloodcell benchmark`: a row for every format of the export table (fp32, and int8 where the table
allows it), one failed export reported without hiding the others; exports and models are stand-ins."""

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest

from bloodcell.errors import BloodcellError
from bloodcell.export import benchmark as bench
from bloodcell.export.formats import FORMATS, ExportFormat
from fakes import FakePredictor


@pytest.fixture
def stand_ins(monkeypatch):
    """Exports that write a 1 MiB file (onnx fails), models that load as a FakePredictor; returns the export calls."""
    exported = []

    def export_model(model, fmt, out, int8=False, calib_images=32, data=None):
        exported.append((fmt, Path(out).name, int8))
        if fmt == "onnx":
            raise BloodcellError("no onnx today")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"\0" * 2**20)
        return SimpleNamespace(metadata={"calibration_images": 3} if int8 else {})  # a split of 3 train images

    monkeypatch.setattr("bloodcell.export.exporter.export_model", export_model)  # benchmark imports it per call
    monkeypatch.setattr("bloodcell.models.checkpoint.read_checkpoint", lambda path: {})  # the stand-in .pt
    monkeypatch.setattr(bench, "load_predictor", lambda path, threads=None: FakePredictor())
    return exported


def test_benchmark_runs_every_format_of_the_table(stand_ins, tiny_voc, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(FORMATS, "npz", ExportFormat("npz", ".npz", int8=True, runtime="numpy"))
    model = tmp_path / "cell.pt"
    model.write_bytes(b"weights")
    rows = bench.benchmark(model, tiny_voc, split="val", threads=1, out=tmp_path / "out")

    assert {fmt for fmt, _, int8 in stand_ins if not int8} == set(FORMATS)  # a format added to the table is run
    assert {fmt for fmt, _, int8 in stand_ins if int8} == {n for n, f in FORMATS.items() if f.int8}
    assert ("npz", "cell.npz", False) in stand_ins and ("npz", "cell_int8.npz", True) in stand_ins
    by_name = {r.format: r for r in rows}
    assert [r.format for r in rows] == ["torch (.pt)", *(v.label for v in bench.variants())]
    assert by_name["npz int8 (PTQ)"].file == str(tmp_path / "out" / "cell_int8.npz")
    for failed in ("onnx fp32", "onnx int8 (PTQ)"):  # a failed export is its row's error; the others go on
        assert by_name[failed].map50 is None and "no onnx today" in by_name[failed].error
    for r in rows:
        if not r.format.startswith("onnx"):  # scored by the same evaluator as `bloodcell val`, and timed
            assert r.error == "" and 0 <= r.map50 <= 1 and r.median_ms > 0, r
    assert by_name["npz fp32"].size_mb == 1.0
    with open(tmp_path / "out" / "benchmark.csv", newline="") as f:
        assert [row["format"] for row in csv.DictReader(f)] == [r.format for r in rows]
    # int8 ranges from fewer images than asked: said, as `export --int8` says it
    assert "int8 ranges set from 3 images: the train split has no more (asked for 32)" in capsys.readouterr().err


def test_a_missing_model_or_extra_is_one_error_before_any_export(tiny_voc, tmp_path, monkeypatch):
    from bloodcell.errors import ModelError

    exported = []
    monkeypatch.setattr("bloodcell.export.exporter.export_model", lambda *a, **k: exported.append(a))
    with pytest.raises(ModelError, match=r"nope\.pt: model file not found"):
        bench.benchmark(tmp_path / "nope.pt", tiny_voc, out=tmp_path / "out")
    with pytest.raises(ModelError, match=r"there\.tflite: model file not found"):
        bench.benchmark(None, tiny_voc, out=tmp_path / "out", extra=[tmp_path / "there.tflite"])
    (tmp_path / "broken.onnx").write_bytes(b"not a model")  # there, but no model: said before the exports too
    with pytest.raises(ModelError, match=r"broken\.onnx"):
        bench.benchmark(None, tiny_voc, out=tmp_path / "out", extra=[tmp_path / "broken.onnx"])
    assert exported == [] and not (tmp_path / "out").exists()


def test_the_table_stays_aligned_with_long_names():
    rows = [
        bench.BenchmarkRow("torch (.pt)", "m.pt", 7.0, 0.9, 50.0),
        bench.BenchmarkRow("extra: cellnet_int8_calibrated_on_my_slides.tflite", "x", 3.9, 0.89, 14.2),
    ]
    header, *lines = bench.format_table(rows, "val", 2).splitlines()
    ends = {line.index(f"{r.size_mb:.2f}") + len(f"{r.size_mb:.2f}") for line, r in zip(lines, rows, strict=True)}
    assert ends == {header.index("size MB") + len("size MB")}  # the size column ends under its header


def test_a_model_that_cannot_be_exported_is_one_error(tiny_voc, tmp_path, monkeypatch):
    from bloodcell.errors import ConfigError

    monkeypatch.setattr("bloodcell.models.checkpoint.read_checkpoint", lambda path: {"info": {"name": "fasterrcnn"}})
    with pytest.raises(ConfigError, match="a fasterrcnn model, which cannot be exported"):
        bench.benchmark(tmp_path / "frcnn.pt", tiny_voc, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
