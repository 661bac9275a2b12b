"""Metadata embedded in exported files: a model copied without its sidecar runs the same; a broken
sidecar is one line and exit 2 on the command line (a small random model keeps the exports fast)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bloodcell.cli import main
from bloodcell.errors import MetadataError
from bloodcell.export.embed import embed_tflite_metadata
from bloodcell.export.exporter import tflite_ops
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.metadata import EMBED_KEY, tflite_embedded

pytestmark = pytest.mark.slow


def sidecar_of(model):
    return model.with_name(model.name + ".json")


def alone(model, folder):
    """A copy of ``model`` without its sidecar."""
    folder.mkdir(exist_ok=True)
    return shutil.copy(model, folder / model.name)


@pytest.fixture(scope="module")
def image(bccd_root):
    return load_image(bccd_root / "JPEGImages" / "BloodImage_00001.jpg")


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_embedded_metadata_is_the_sidecar(tiny_exports, fmt):
    model = tiny_exports[fmt]
    if fmt == "onnx":
        import onnxruntime as ort

        embedded = ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map[EMBED_KEY]
    else:
        embedded = tflite_embedded(model)
    assert json.loads(embedded) == json.loads(sidecar_of(model).read_text())


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_model_without_sidecar_predicts_the_same(tiny_exports, image, tmp_path, fmt):
    with_sidecar = load_predictor(tiny_exports[fmt])
    without = load_predictor(alone(tiny_exports[fmt], tmp_path))
    assert with_sidecar.metadata.source.endswith(".json")
    assert without.metadata.source.endswith("(embedded metadata)")
    assert without.metadata == with_sidecar.metadata
    assert without.describe() == with_sidecar.describe()
    a, b = with_sidecar.predict(image, 0.01), without.predict(image, 0.01)
    assert len(a) > 10
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.labels, b.labels)


def test_embedding_leaves_the_tflite_graph_unchanged(tiny_exports, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    raw, embedded = tiny_exports["raw_tflite"], tiny_exports["tflite"]
    assert tflite_embedded(raw) is None
    x = np.random.default_rng(0).uniform(0, 255, (1, 256, 320, 3)).astype(np.float32)

    def run(path):
        it = Interpreter(str(path))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        details = [
            (d["name"], d["shape"].tolist(), np.dtype(d["dtype"]).name, d["quantization"])
            for d in it.get_tensor_details()
        ]
        outputs = [it.get_tensor(d["index"]) for d in it.get_output_details()]
        return details, it.get_signature_list(), outputs

    (raw_details, raw_sigs, raw_out), (details, sigs, out) = run(raw), run(embedded)
    assert details == raw_details and sigs == raw_sigs
    assert all(np.array_equal(a, b) for a, b in zip(raw_out, out, strict=True))
    assert tflite_ops(embedded) == tflite_ops(raw)
    # embedding again replaces the entry instead of adding a second one
    again = shutil.copy(embedded, tmp_path / "again.tflite")
    embed_tflite_metadata(again, '{"replaced": true}')
    assert json.loads(tflite_embedded(again)) == {"replaced": True}
    assert run(again)[0] == raw_details


def test_sidecar_retunes_operating_points(tiny_exports, tmp_path):
    model = alone(tiny_exports["onnx"], tmp_path)
    meta = json.loads(sidecar_of(tiny_exports["onnx"]).read_text())
    sidecar_of(model).write_text(json.dumps({**meta, "conf": [0.5, 0.6, 0.7], "iou_threshold": 0.4}))
    p = load_predictor(model)
    assert p.conf == (0.5, 0.6, 0.7) and p.post.iou_threshold == 0.4
    assert p.notes == []  # a retune by hand is how the sidecar is meant to be used


def test_a_sidecar_left_from_before_a_refit_is_said(tiny_exports, tmp_path):
    """`bloodcell calibrate` writes the refit into the file and its sidecar (dated); a sidecar from before
    it (no refit, or an earlier one) loses to the file's refit, and says so; undated refits that disagree:
    the sidecar is read first, and that is said."""
    from bloodcell.export.embed import with_metadata

    model = alone(tiny_exports["onnx"], tmp_path)
    old = json.loads(sidecar_of(tiny_exports["onnx"]).read_text())
    fitted = {"data": "d", "split": "val", "images": 4, "at": "2026-11-27T10:00:00+00:00"}
    refit = {**old, "conf": [0.5, 0.6, 0.7], "fitted": fitted}
    model.write_bytes(with_metadata(model, refit))
    stale = f"{model.name}.json is older than the refit inside {model.name} (`bloodcell calibrate`): the file's"
    for before in (old, {**old, "fitted": {**fitted, "at": "2026-11-26T09:00:00+00:00"}}):
        sidecar_of(model).write_text(json.dumps(before))
        p = load_predictor(model)
        assert p.conf == (0.5, 0.6, 0.7) and len(p.notes) == 1 and p.notes[0].startswith(stale)
    sidecar_of(model).write_text(json.dumps(refit))
    assert load_predictor(model).notes == []
    # a later refit into the sidecar alone (no onnx package on the lite install) counts on from the file's:
    # it wins though a Pi without a clock dated it earlier
    model.write_bytes(with_metadata(model, {**refit, "fitted": {**fitted, "generation": 1}}))
    later = {
        **old,
        "conf": [0.45, 0.45, 0.45],
        "fitted": {**fitted, "at": "2001-01-01T00:00:00+00:00", "generation": 2},
    }
    sidecar_of(model).write_text(json.dumps(later))
    assert load_predictor(model).conf == (0.45, 0.45, 0.45)
    undated = {**old, "conf": [0.4, 0.4, 0.4], "fitted": {"data": "other", "split": "val", "images": 4}}
    model.write_bytes(with_metadata(model, {**refit, "fitted": {**fitted, "at": None}}))
    sidecar_of(model).write_text(json.dumps(undated))
    p = load_predictor(model)
    assert p.conf == (0.4, 0.4, 0.4) and p.notes == [
        f"{model.name}.json sets operating points other than the refit inside {model.name} (`bloodcell calibrate`), "
        "and is read first: if it is older than that refit, delete it"
    ]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_sidecar_of_another_export_is_refused(tiny_exports, tmp_path, fmt):
    model = alone(tiny_exports[fmt], tmp_path)
    meta = json.loads(sidecar_of(tiny_exports[fmt]).read_text())
    sidecar_of(model).write_text(json.dumps({**meta, "class_names": ["WBC", "RBC", "Platelets"]}))
    with pytest.raises(MetadataError, match=rf"{model.name}\.json: field 'class_names' is .* embedded in"):
        load_predictor(model)


def test_sidecar_of_another_models_export_is_refused(tiny_exports, tmp_path):
    """Same graph shape, other weights (a re-export of a retrained model): its operating points, calibration
    and cell size belong to those weights."""
    model = alone(tiny_exports["onnx"], tmp_path)
    meta = json.loads(sidecar_of(tiny_exports["onnx"]).read_text())
    sidecar_of(model).write_text(json.dumps({**meta, "source_sha256": "0" * 64, "conf": [0.2, 0.9, 0.9]}))
    with pytest.raises(MetadataError, match=r"made for an export of another model \(source sha256 000000000000"):
        load_predictor(model)


def test_old_export_without_embedded_metadata(tiny_exports, tmp_path):
    """Exports from before embedding: the sidecar alone, checked against the graph."""
    import onnx

    proto = onnx.load(str(tiny_exports["onnx"]))
    kept = [p for p in proto.metadata_props if p.key != EMBED_KEY]
    del proto.metadata_props[:]
    model = tmp_path / "old.onnx"
    onnx.save(proto, str(model))
    with pytest.raises(MetadataError, match=r"old\.onnx\.json: metadata missing, and old\.onnx has none embedded"):
        load_predictor(model)
    meta = json.loads(sidecar_of(tiny_exports["onnx"]).read_text())
    sidecar_of(model).write_text(json.dumps(meta))  # the graph as exported, before its metadata went in
    assert load_predictor(model).class_names == ("RBC", "WBC", "Platelets")
    proto.metadata_props.extend(kept)  # the graph changed (here: only its Netron keys): another network's file
    onnx.save(proto, str(model))
    with pytest.raises(MetadataError, match=r"old\.onnx\.json: made for another network \(graph sha256 .*no bloodcell"):
        load_predictor(model)
    for key in ("format_version", "graph_sha256"):  # as sidecars were before either was written
        meta.pop(key)
    sidecar_of(model).write_text(json.dumps(meta))
    assert load_predictor(model).class_names == ("RBC", "WBC", "Platelets")
    sidecar_of(model).write_text(json.dumps({**meta, "class_names": ["RBC", "WBC", "Platelets", "Mono"]}))
    with pytest.raises(MetadataError, match=r"'class_names' has 4 names but old\.onnx outputs scores for 3 classes"):
        load_predictor(model)
    sidecar_of(model).write_text(json.dumps({**meta, "input_size": [640, 480]}))
    with pytest.raises(MetadataError, match=r"'input_size' is 640x480 but old\.onnx takes 320x256 images"):
        load_predictor(model)


def breakages():
    def drop(key):
        return lambda m: {k: v for k, v in m.items() if k != key}

    return [
        ("partial", lambda m: json.dumps(drop("strides")(m)), "field 'strides' is missing"),
        ("wrong type", lambda m: json.dumps({**m, "input_size": "320x256"}), "field 'input_size' must be 2"),
        ("class count", lambda m: json.dumps({**m, "conf": [0.3, 0.3]}), "field 'conf' has 2 values"),
        ("not json", lambda m: json.dumps(m)[:40], "not valid JSON"),
    ]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize(("case", "breakage", "fragment"), breakages(), ids=[b[0] for b in breakages()])
def test_cli_broken_sidecar_is_one_line(tiny_exports, bccd_root, tmp_path, capsys, fmt, case, breakage, fragment):
    model = tmp_path / f"broken.{fmt}"
    shutil.copy(tiny_exports[fmt], model)
    sidecar_of(model).write_text(breakage(json.loads(sidecar_of(tiny_exports[fmt]).read_text())))
    image = str(bccd_root / "JPEGImages" / "BloodImage_00001.jpg")
    assert main(["predict", image, "--model", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {model}.json: ") and fragment in err[0], err


def test_cli_process_exits_2_without_traceback(tiny_exports, bccd_root, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny_exports["onnx"].read_bytes()[:3000])  # no sidecar, truncated graph
    model = shutil.copy(tiny_exports["onnx"], tmp_path / "broken.onnx")
    meta = json.loads(sidecar_of(tiny_exports["onnx"]).read_text())
    sidecar_of(model).write_text(json.dumps({k: v for k, v in meta.items() if k != "class_names"}))
    image = str(bccd_root / "JPEGImages" / "BloodImage_00001.jpg")
    for path, fragment in [(model, "field 'class_names' is missing"), (corrupt, "onnxruntime cannot load it")]:
        run = subprocess.run(
            [sys.executable, "-m", "bloodcell", "predict", image, "--model", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
        assert lines[0].startswith(f"error: {path}") and fragment in lines[0] and "Traceback" not in run.stderr


def test_a_failed_export_leaves_the_earlier_one_and_its_refit_untouched(
    tiny_exports, tiny_model, tmp_path, monkeypatch
):
    """Re-exporting over a calibrated export: until the new file is complete, nothing on disk changes
    (not the model, not the sidecar `bloodcell calibrate` wrote, and no temporary file is left)."""
    import litert_torch

    from bloodcell.errors import BloodcellError
    from bloodcell.export import exporter

    model = alone(tiny_exports["tflite"], tmp_path / "out")
    meta = json.loads(sidecar_of(tiny_exports["tflite"]).read_text())
    sidecar_of(model).write_text(json.dumps({**meta, "conf": [0.41, 0.42, 0.43]}))
    before = {p.name: p.read_bytes() for p in model.parent.iterdir()}
    source = tiny_model(conf=0.3, cls_bias=3.5)
    with pytest.raises(BloodcellError, match="missing"):  # the calibration data is read after the checks
        exporter.export_model(source, "tflite", model, int8=True, data=tmp_path / "missing")

    class Converted:  # the converter's graph (not what is tested here, and 25 s a conversion on 2 cores)
        def export(self, path: str) -> None:
            Path(path).write_bytes(tiny_exports["tflite"].read_bytes())

    def broken(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(litert_torch, "convert", lambda *args, **kwargs: Converted())
    monkeypatch.setattr(exporter, "embed_tflite_metadata", broken)
    with pytest.raises(OSError):  # after the conversion, before anything is committed
        exporter.export_model(source, "tflite", model)
    assert {p.name: p.read_bytes() for p in model.parent.iterdir()} == before
    monkeypatch.setattr(exporter, "embed_tflite_metadata", embed_tflite_metadata)  # the fake converter stays

    import bloodcell.atomic

    synced, fsync = [], os.fsync

    def disk_fills(fd):  # the new sidecar is written, then the model's bytes do not fit
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        if synced[-1].startswith(f".{model.name}.") and not synced[-1].startswith(f".{model.name}.json"):
            raise OSError(28, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(bloodcell.atomic.os, "fsync", disk_fills)
    with pytest.raises(OSError, match=f"No space left on device: '{model}'"):
        exporter.export_model(source, "tflite", model)
    assert any(name.startswith(f".{model.name}.json") for name in synced)
    assert {p.name: p.read_bytes() for p in model.parent.iterdir()} == before
    assert load_predictor(model).conf == pytest.approx((0.41, 0.42, 0.43))


def test_exporting_over_a_refit_file_says_so(tiny_model, tmp_path, capsys):
    from bloodcell.cli import main

    out = tmp_path / "m.onnx"
    model = tiny_model()
    assert main(["export", "--model", str(model), "--format", "onnx", "--out", str(out)]) == 0
    assert "note:" not in capsys.readouterr().out
    meta = json.loads(sidecar_of(out).read_text())
    sidecar_of(out).write_text(json.dumps({**meta, "fitted": {"data": "d", "split": "val", "images": 4}}))
    assert main(["export", "--model", str(model), "--format", "onnx", "--out", str(out)]) == 0
    assert (
        "note: the m.onnx replaced had been refit by `bloodcell calibrate`; refit this one too"
        in capsys.readouterr().out
    )


def test_a_network_that_outputs_nan_is_an_error_not_zero_counts(tiny_exports, image, tmp_path):
    """Scores of NaN pass no threshold: without the check a broken file counts 0 cells, exit 0."""
    import onnx
    from onnx import helper, numpy_helper

    from bloodcell.errors import ModelError

    proto = onnx.load(str(tiny_exports["onnx"]))  # its metadata kept: it describes the outputs' shapes
    producer = next(n for n in proto.graph.node if "scores" in n.output)
    producer.output[list(producer.output).index("scores")] = "scores_raw"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
    proto.graph.node.append(helper.make_node("Mul", ["scores_raw", "nan"], ["scores"]))
    model = tmp_path / "nan.onnx"
    onnx.save(proto, str(model))
    with pytest.raises(ModelError, match=r"nan\.onnx: the network's outputs are not finite \(NaN or infinity\)"):
        load_predictor(model).predict(image)
