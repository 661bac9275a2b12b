"""The exported-model metadata schema: every broken field is one line naming the file and the field."""

import copy
import json
from pathlib import Path

import pytest

from bloodcell.errors import MetadataError, ModelError
from bloodcell.runtime.metadata import (
    FORMAT_VERSION,
    parse_metadata,
    read_sidecar,
    resolve_metadata,
)

SOURCE = "/models/m.onnx.json"
VALID = {
    "format": "bloodcell-export",
    "format_version": 1,
    "version": "0.1.0",
    "date": "2026-01-01T00:00:00+00:00",
    "model_format": "onnx",
    "int8": False,
    "architecture": "cellnet",
    "class_names": ["RBC", "WBC", "Platelets"],
    "input_size": [640, 480],
    "input_layout": "NHWC RGB pixels 0..255",
    "outputs": {"scores": "(1, A, K)", "boxes": "(1, A, 4)"},
    "strides": [8, 16, 32],
    "conf": [0.67, 0.32, 0.62],
    "iou_threshold": 0.5,
    "calibration": {
        "floor": 0.05,
        "level": 0.9,
        "knots": {"RBC": {"score": [0.0, 0.5, 1.0], "prob": [0.0, 0.4, 1.0]}},
        "width": {"RBC": 1.78, "WBC": 0.0},
    },
    "cell_size": 99.5,
    "input_scale": 0.75,
    "source": "cellnet_bccd.pt",
    "source_sha256": "ab" * 32,
    "source_metrics": {"val": {"map50": 0.9}},
}


def broken(path: str, value: object = None, delete: bool = False) -> dict:
    """VALID with the field at dotted ``path`` set to ``value`` (or deleted)."""
    meta = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = meta
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return meta


def test_valid_metadata_is_typed():
    meta = parse_metadata(VALID, SOURCE)
    assert meta.class_names == ("RBC", "WBC", "Platelets")
    assert meta.input_size == (640, 480) and meta.strides == (8, 16, 32)
    assert meta.conf == (0.67, 0.32, 0.62) and meta.iou_threshold == 0.5
    assert meta.calibration.width == {"RBC": 1.78, "WBC": 0.0} and meta.cell_size == 99.5
    assert meta.input_scale == 0.75
    assert meta.model_format == "onnx" and meta.format_version == 1  # 2 only with input_normalization


def test_nms_iou_per_class():
    assert parse_metadata({**VALID, "iou_threshold": [0.5, 0.3, 0.5]}, SOURCE).iou_threshold == (0.5, 0.3, 0.5)


def test_optional_fields_and_unknown_keys():
    minimal = {k: VALID[k] for k in ("format", "model_format", "class_names", "input_size", "strides", "conf")}
    minimal["iou_threshold"] = 0.5
    meta = parse_metadata({**minimal, "conf": 0.3, "added_by_a_newer_bloodcell": {"x": 1}}, SOURCE)
    assert meta.conf == 0.3 and meta.calibration is None and meta.cell_size is None and not meta.int8
    assert meta.input_scale == 1.0  # exports from before --scale: the training images as they are
    assert meta.format_version == 1  # exports from before the field existed
    assert meta.raw["added_by_a_newer_bloodcell"] == {"x": 1}


@pytest.mark.parametrize(
    ("meta", "field", "fragment"),
    [
        (broken("strides", delete=True), "strides", "is missing"),
        (broken("class_names", delete=True), "class_names", "is missing"),
        (broken("iou_threshold", delete=True), "iou_threshold", "is missing"),
        (broken("format", "yolo-export"), "format", "bloodcell-export"),
        (broken("format_version", FORMAT_VERSION + 1), "format_version", "upgrade bloodcell"),
        (broken("format_version", "1"), "format_version", "positive integer"),
        (broken("model_format", "caffe"), "model_format", "must be one of"),
        (broken("int8", "yes"), "int8", "true or false"),
        (broken("class_names", "RBC,WBC"), "class_names", "list of non-empty strings"),
        (broken("class_names", ["RBC", "RBC", "WBC"]), "class_names", "duplicates"),
        (broken("class_names", []), "class_names", "non-empty"),
        (broken("input_size", "640x480"), "input_size", "2 positive integers"),
        (broken("input_size", [640]), "input_size", "2 positive integers"),
        (broken("input_size", [640.0, 480]), "input_size", "2 positive integers"),
        (broken("input_size", [True, 480]), "input_size", "2 positive integers"),
        (broken("input_size", [650, 480]), "strides", "must divide"),
        (broken("strides", [0, 16]), "strides", "positive integers"),
        (broken("conf", [0.5, 0.5]), "conf", "has 2 values but 'class_names' has 3"),
        (broken("conf", "high"), "conf", "one per class"),
        (broken("conf", 1.5), "conf", "(0.0, 1.0]"),
        (broken("conf", [0, 0.5, 0.5]), "conf", "(0.0, 1.0]"),  # 0 would count every detection: at load, not per image
        (broken("conf", [0.5, None, 0.5]), "conf", "must be a number"),
        (broken("iou_threshold", float("nan")), "iou_threshold", "NaN"),
        (broken("iou_threshold", 0), "iou_threshold", "(0.0, 1.0]"),
        (broken("iou_threshold", [0.5, 0.3]), "iou_threshold", "has 2 values but 'class_names' has 3"),
        (broken("iou_threshold", [0.5, 0.0, 0.5]), "iou_threshold", "(0.0, 1.0]"),
        (broken("cell_size", -3), "cell_size", "positive number"),
        (broken("input_scale", 0), "input_scale", "[0.25, 2.0]"),
        (broken("architecture", 7), "architecture", "must be a string"),
        (broken("source_metrics", [1]), "source_metrics", "must be an object"),
        (broken("ops", "CONV_2D"), "ops", "operator names"),
        (broken("calibration", [1, 2]), "calibration", "object or null"),
        (broken("calibration.knots", None), "calibration.knots", "per-class knots"),
        (broken("calibration.knots.Mono", {"score": [0], "prob": [0]}), "calibration.knots.Mono", "not one of"),
        (broken("calibration.knots.RBC.prob", [0.0, 1.0]), "calibration.knots.RBC", "3 scores but 2 probabilities"),
        (broken("calibration.knots.RBC.prob", [0.0, 0.5, 2.0]), "calibration.knots.RBC.prob", "[0, 1]"),
        (broken("calibration.knots.RBC.score", [0.0, 0.7, 0.5]), "calibration.knots.RBC.score", "increasing"),
        (broken("calibration.knots.RBC.score", delete=True), "calibration.knots.RBC.score", "list of numbers"),
        (broken("calibration.level", 0), "calibration.level", "(0.0, 1.0]"),
        (broken("calibration.width.WBC", -1), "calibration.width.WBC", "non-negative"),
        (broken("calibration.width.Mono", 1.0), "calibration.width.Mono", "not one of"),
    ],
)
def test_broken_field_is_named(meta, field, fragment):
    with pytest.raises(MetadataError) as e:
        parse_metadata(meta, SOURCE)
    message = str(e.value)
    assert message.startswith(f"{SOURCE}: field '{field}' "), message
    assert fragment in message and "\n" not in message
    assert isinstance(e.value, ModelError)  # callers that catch ModelError still do


def sidecar(tmp_path: Path, content: str | dict) -> Path:
    model = tmp_path / "m.onnx"
    text = content if isinstance(content, str) else json.dumps(content)
    (tmp_path / "m.onnx.json").write_text(text)
    return model


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{", "not valid JSON"), ("[1, 2]", "must be a JSON object, got list"), ("\xff", "not valid JSON")],
)
def test_unreadable_sidecar(tmp_path, content, fragment):
    model = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(MetadataError, match=r"m\.onnx\.json: ") as e:
        read_sidecar(model)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    if fragment == "not valid JSON":  # the model file has its own copy: say how to fall back to it
        assert str(e.value).endswith("; fix it, or delete it to use the metadata inside m.onnx")


def test_sidecar_then_embedded_then_error(tmp_path):
    model = tmp_path / "m.onnx"
    assert read_sidecar(model) is None
    inside = json.dumps({**VALID, "conf": 0.4})
    assert resolve_metadata(model, None, inside).conf == 0.4
    assert "(embedded metadata)" in resolve_metadata(model, None, inside).source
    with pytest.raises(MetadataError, match=r"m\.onnx\.json: metadata missing, and m\.onnx has none embedded"):
        resolve_metadata(model, None, None)
    with pytest.raises(MetadataError, match=r"m\.onnx \(embedded metadata\): field 'strides' is missing"):
        resolve_metadata(model, None, json.dumps(broken("strides", delete=True)))


def test_sidecar_wins_on_operating_points_but_not_on_the_graph(tmp_path):
    model = sidecar(tmp_path, {**VALID, "conf": 0.25, "cell_size": None})
    meta = resolve_metadata(model, read_sidecar(model), json.dumps(VALID))
    assert meta.conf == 0.25 and meta.cell_size is None and meta.source.endswith("m.onnx.json")
    for key, value in [("class_names", ["WBC", "RBC", "Platelets"]), ("input_size", [320, 256]), ("int8", True)]:
        model = sidecar(tmp_path, {**VALID, key: value})
        with pytest.raises(MetadataError, match=rf"m\.onnx\.json: field '{key}' is .* embedded in m\.onnx says"):
            resolve_metadata(model, read_sidecar(model), json.dumps(VALID))


def test_model_format_must_match_the_file(tmp_path):
    with pytest.raises(MetadataError, match=r"field 'model_format' is 'onnx' but m\.tflite is a \.tflite file"):
        resolve_metadata(tmp_path / "m.tflite", None, json.dumps(VALID))


def test_metadata_must_describe_the_graph():
    meta = parse_metadata(VALID, SOURCE)
    anchors = 80 * 60 + 40 * 30 + 20 * 15
    meta.check_graph(Path("m.onnx"), [1, 480, 640, 3], [[1, anchors, 3], [1, anchors, 4]])
    meta.check_graph(Path("m.onnx"), ["batch", 480, 640, 3], [["batch", "a", 3], [1, anchors, 4]])  # symbolic
    image, small = [1, 480, 640, 3], [1, 256, 320, 3]
    cases = [
        (small, [[1, anchors, 3], [1, anchors, 4]], "'input_size' is 640x480 but m.onnx takes 320x256"),
        (image, [[1, anchors, 4], [1, anchors, 4]], "'class_names' has 3 names but m.onnx outputs scores for 4"),
        (image, [[1, anchors, 5], [1, anchors, 4]], "'class_names' has 3 names but m.onnx outputs scores for 5"),
        (image, [[1, 4800, 3], [1, 4800, 4]], f"'strides' [8, 16, 32] give {anchors} anchors"),
    ]
    for input_shape, outputs, fragment in cases:
        with pytest.raises(MetadataError) as e:
            meta.check_graph(Path("m.onnx"), input_shape, outputs)
        assert str(e.value).startswith(f"{SOURCE}: field ") and fragment in str(e.value)
    with pytest.raises(MetadataError, match=r"m\.onnx: takes channels-first images \(1x3x480x640, NCHW\)"):
        meta.check_graph(Path("m.onnx"), [1, 3, 480, 640], [[1, anchors, 3], [1, anchors, 4]])


def test_input_normalization_is_read_and_checked():
    norm = {"scale": [1 / 127.5] * 3, "shift": [-1.0] * 3}
    meta = parse_metadata({**VALID, "input_normalization": norm}, SOURCE)
    assert meta.input_normalization == (tuple(norm["scale"]), (-1.0, -1.0, -1.0))
    assert parse_metadata(VALID, SOURCE).input_normalization is None  # plain pixels
    for bad, field_name in (
        ({"scale": [1.0] * 3}, "input_normalization"),
        ({"scale": [1.0] * 2, "shift": [0.0] * 3}, "input_normalization.scale"),
        ({"scale": [1.0, 0.0, 1.0], "shift": [0.0] * 3}, "input_normalization.scale"),
        ({"scale": [1.0] * 3, "shift": [0.0, "x", 0.0]}, "input_normalization.shift"),
    ):
        with pytest.raises(MetadataError, match=f"field '{field_name}'"):
            parse_metadata({**VALID, "input_normalization": bad}, SOURCE)


def test_onnx_input_quantization_is_read_and_checked():
    """int8 ONNX files take uint8 levels: their scale and zero point are part of the graph's description."""
    norm = {"scale": [1 / 127.5] * 3, "shift": [-1.0] * 3}
    int8_onnx = {**VALID, "int8": True, "input_normalization": norm, "format_version": 4}
    levels = {"dtype": "uint8", "quantization": [0.0078, 128]}
    assert parse_metadata({**int8_onnx, "onnx_input": levels}, SOURCE).onnx_input == (0.0078, 128)
    assert parse_metadata(VALID, SOURCE).onnx_input is None
    # only an int8 ONNX file of a normalized input has input levels: without normalization every pixel
    # would map to level 255 (a white image, no cells found and no error)
    for other in ({"model_format": "tflite"}, {"int8": False}, {"input_normalization": None}, {"format_version": 3}):
        with pytest.raises(MetadataError, match="field 'onnx_input' belongs to int8 ONNX files"):
            parse_metadata({**int8_onnx, **other, "onnx_input": levels}, SOURCE)
    for bad, field_name in (
        ({"dtype": "int8", "quantization": [0.01, 0]}, "onnx_input"),
        ({"dtype": "uint8"}, "onnx_input"),
        ({"dtype": "uint8", "quantization": [0.0, 128]}, "onnx_input.quantization"),
        ({"dtype": "uint8", "quantization": [0.01, 300]}, "onnx_input.quantization"),
        ({"dtype": "uint8", "quantization": [0.01, 1.5]}, "onnx_input.quantization"),
    ):
        with pytest.raises(MetadataError, match=f"field '{field_name}'"):
            parse_metadata({**int8_onnx, "onnx_input": bad}, SOURCE)


def test_which_refit_is_newer_follows_generations_before_clocks():
    from bloodcell.runtime.metadata import refit_inside_is_newer

    old = {"fitted": {"at": "2024-05-01T00:00:00+00:00"}}  # a refit from before generations were counted
    pi = {"fitted": {"at": "2001-01-01T00:00:00+00:00", "generation": 2}}  # after it, on a Pi without a clock
    assert not refit_inside_is_newer(sidecar=pi, inside=old) and refit_inside_is_newer(sidecar=old, inside=pi)
    assert refit_inside_is_newer(sidecar={}, inside=old)  # a sidecar with no refit at all
    later = {"fitted": {"at": "2024-05-02T00:00:00Z"}}  # both undated-generation: their dates, parsed
    assert refit_inside_is_newer(sidecar=old, inside=later) and not refit_inside_is_newer(sidecar=later, inside=old)
    assert not refit_inside_is_newer(sidecar=old, inside={"fitted": {"at": "not a date"}})
