"""`bloodcell benchmark`: a row for every format of the export table (fp32, and int8 where the table
allows it), one failed export reported without hiding the others; exports and models are stand-ins."""

import csv
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bloodcell.data.sources import load_dataset
from bloodcell.engine.evaluate import evaluate
from bloodcell.errors import BloodcellError
from bloodcell.export import benchmark as bench
from bloodcell.export.formats import FORMATS, ExportFormat
from bloodcell.runtime.images import load_image
from bloodcell.types import Detections
from fakes import FakePredictor


class HalfRightPredictor(FakePredictor):
    """Finds the labelled cells of the images it knows, every other one a box-width off (a false positive
    ranked first): a score between 0 and 1 that only the real evaluator gives."""

    def __init__(self, records) -> None:
        super().__init__()
        self.known = {load_image(r.image_path)[:4].tobytes(): r for r in records}

    def _detect(self, image: np.ndarray, min_score: float) -> Detections:
        record = self.known.get(image[:4].tobytes())
        if record is None:  # warm-up and timing inputs
            return Detections()
        boxes = record.boxes.copy()
        shift = boxes[1::2, 2] - boxes[1::2, 0]
        boxes[1::2, [0, 2]] += shift[:, None]
        scores = np.where(np.arange(len(boxes)) % 2, 0.9, 0.8)
        return Detections(boxes, record.labels, scores)


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
    monkeypatch.setattr("bloodcell.models.checkpoint.load_model", lambda path: (None, None))  # (its weights build)
    monkeypatch.setattr(bench, "load_predictor", lambda path, threads=None, **_: FakePredictor())
    return exported


def test_benchmark_runs_every_format_of_the_table(stand_ins, tiny_voc, tmp_path, monkeypatch, capsys):
    records = load_dataset(tiny_voc, split="val").records
    loaded = {}

    def load_predictor(path, threads=None, **options):
        loaded[Path(path).suffix] = options
        return HalfRightPredictor(records)

    monkeypatch.setattr(bench, "load_predictor", load_predictor)
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
    # scored as `bloodcell val` scores (the stand-in finds every other labelled cell), and timed
    expected = round(evaluate(HalfRightPredictor(records), records, cell_size="auto").voc_map50, 4)
    assert 0.2 < expected < 0.9
    for r in rows:
        if not r.format.startswith("onnx"):
            assert r.error == "" and r.map50 == expected and r.median_ms > 0, r
    assert by_name["npz fp32"].size_mb == 1.0
    assert loaded[".pt"] == {"device": "cpu"} and loaded[".npz"] == {}  # a .pt on the CPU, as the exports run
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
    sidecar = tmp_path / "m.onnx.json"  # a sidecar given for its export: the flag named is --extra
    sidecar.write_text("{}")
    message = f"--extra {sidecar}: the metadata of an export; give the model itself: {tmp_path / 'm.onnx'}"
    with pytest.raises(BloodcellError, match=f"^{re.escape(message)}$"):
        bench.benchmark(None, tiny_voc, out=tmp_path / "out", extra=[sidecar])
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


def test_an_extra_where_benchmark_writes_its_exports_is_refused(stand_ins, tiny_voc, tmp_path):
    """`--extra out/cell_int8.onnx` would be replaced by benchmark's own int8 export and timed as the user's."""
    from bloodcell.errors import ConfigError

    out, model = tmp_path / "out", tmp_path / "cell.pt"
    model.write_bytes(b"weights")
    out.mkdir()
    (out / "cell_int8.onnx").write_bytes(b"the user's")
    with pytest.raises(ConfigError, match=r"--extra .*cell_int8\.onnx: benchmark writes its own export there"):
        bench.benchmark(model, tiny_voc, out=out, extra=[out / "cell_int8.onnx"])
    assert stand_ins == [] and (out / "cell_int8.onnx").read_bytes() == b"the user's"


def test_a_split_with_no_image_to_score_is_one_error_before_any_export(stand_ins, tiny_voc, tmp_path):
    from bloodcell.errors import DatasetError

    data = shutil.copytree(tiny_voc, tmp_path / "voc", symlinks=True)  # the session's folder stays as it is
    (data / "ImageSets" / "Main" / "none.txt").write_text("gone\n")  # an id with no annotation
    model = tmp_path / "cell.pt"
    model.write_bytes(b"weights")
    with pytest.raises(DatasetError, match="split 'none' has no image to score \\(1 listed images left out"):
        bench.benchmark(model, data, split="none", out=tmp_path / "out")
    assert stand_ins == []


def test_extra_may_be_given_more_than_once():
    from bloodcell.cli import get_args_parser

    args = get_args_parser().parse_args(["benchmark", "--extra", "a.tflite", "b.onnx", "--extra", "c.onnx"])
    assert args.extra == ["a.tflite", "b.onnx", "c.onnx"]
