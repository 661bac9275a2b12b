"""Exports of the shipped model: agreement with torch, full-integer int8, Edge TPU ops, bad input."""

import datetime as dt
import json

import numpy as np
import pytest

from bloodcell.cli import main
from bloodcell.data.voc import load_voc
from bloodcell.engine.evaluate import evaluate
from bloodcell.errors import ConfigError, MetadataError, ModelError
from bloodcell.export.edgetpu import unsupported_ops
from bloodcell.export.exporter import export_model, tflite_ops
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def val_images(bccd_root):
    records = load_voc(bccd_root, split="val", decode_images=False).records
    return records, [load_image(r.image_path) for r in records[:4]]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_fp32_export_matches_torch(exports, val_images, fmt):
    torch_p, exported = load_predictor(None), load_predictor(exports[fmt])
    assert exported.post.iou_threshold == torch_p.post.iou_threshold  # per class, from the model file
    assert exported.conf == torch_p.conf
    for image in val_images[1]:
        a = torch_p.predict(image, min_score=0.05)
        b = exported.predict(image, min_score=0.05)
        assert len(a) > 5
        # same detections in the same order (up to near-ties at the score floor)
        n = min(len(a), len(b))
        assert abs(len(a) - len(b)) <= 2
        assert np.abs(a.scores[:n] - b.scores[:n]).max() < 1e-3
        assert np.abs(a.boxes[:n] - b.boxes[:n]).max() <= 1.0
        assert (a.labels[:n] == b.labels[:n]).all()


def test_int8_is_full_integer_with_edge_tpu_ops(exports):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    meta = json.loads(exports["int8"].with_name(exports["int8"].name + ".json").read_text())
    assert meta["int8"] and meta["tflite_input"]["dtype"] == "int8"
    assert {o["dtype"] for o in meta["tflite_outputs"].values()} == {"int8"}
    ops = tflite_ops(exports["int8"])
    assert unsupported_ops(ops) == [], ops
    assert "DEQUANTIZE" not in ops
    # Normalization lives in the input's quantization, not in a multiply-add over the whole image.
    assert "MUL" not in ops and meta["input_normalization"]["shift"] == [-1.0, -1.0, -1.0]
    # the shipped model's per-class NMS: runtimes older than version 3 refuse the file instead of misreading it
    assert meta["iou_threshold"] == [0.5, 0.3, 0.5] and meta["format_version"] == 3
    it = Interpreter(
        str(exports["int8"]), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    float_tensors = [t["name"] for t in it.get_tensor_details() if t["dtype"] == np.float32]
    assert float_tensors == []  # weights, activations and I/O all integer
    assert exports["int8"].stat().st_size <= 6 * 2**20


def test_onnx_int8_takes_uint8_levels_and_scores_like_fp32(exports, val_images, tmp_path):
    """onnxruntime's int8 (the fastest format on AVX2-only CPUs): its input is uint8 levels that the runtime
    looks up per pixel (no float QuantizeLinear over the image), and it ranks cells as the fp32 file does."""
    import onnx
    import onnxruntime as ort

    path = exports["onnx_int8"]
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["int8"] and meta["onnx_input"]["dtype"] == "uint8" and meta["format_version"] == 4
    assert meta["calibration_images"] == 32 and meta["input_normalization"]["shift"] == [-1.0, -1.0, -1.0]
    graph = onnx.load(path).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    first = [n.op_type for n in graph.node if "images" in n.input]
    assert first in (["Transpose"], ["DequantizeLinear"])  # layout only, or the levels read directly
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and path.stat().st_size <= 5 * 2**20
    assert ort.InferenceSession(str(path)).get_inputs()[0].type == "tensor(uint8)"
    records = val_images[0]
    fp32 = evaluate(load_predictor(exports["onnx"]), records).voc_map50
    int8 = evaluate(load_predictor(path), records).voc_map50
    assert int8 >= fp32 - 0.005, (fp32, int8)
    # A sidecar of another quantization is from another export: refused, not read with the wrong levels.
    copy = tmp_path / "m.onnx"
    copy.write_bytes(path.read_bytes())
    meta["onnx_input"]["quantization"][1] += 1
    (tmp_path / "m.onnx.json").write_text(json.dumps(meta))
    with pytest.raises(MetadataError, match=r"field 'onnx_input'.*from another export"):
        load_predictor(copy)
    # Nor a sidecar refitted on another int8 export of the same checkpoint (other calibration images): the
    # converted graph's sha256 tells them apart where every other field agrees.
    meta["onnx_input"]["quantization"][1] -= 1
    fp32_graph = json.loads(exports["onnx"].with_name("cellnet.onnx.json").read_text())["graph_sha256"]
    assert len(meta["graph_sha256"]) == 64 and meta["graph_sha256"] != fp32_graph
    (tmp_path / "m.onnx.json").write_text(json.dumps({**meta, "graph_sha256": "0" * 64}))
    with pytest.raises(MetadataError, match=r"field 'graph_sha256'.*from another export"):
        load_predictor(copy)
    (tmp_path / "m.onnx.json").write_text(json.dumps(meta))
    assert load_predictor(copy).metadata.graph_sha256 == meta["graph_sha256"]


def test_a_uint8_onnx_without_its_quantization_is_refused(exports, tmp_path):
    """A uint8-input graph whose metadata lost onnx_input (hand-edited), and a float graph claiming one."""
    import onnx

    from bloodcell.export.embed import onnx_with_metadata

    levels, norm = {"dtype": "uint8", "quantization": [0.01, 128]}, {"scale": [0.01] * 3, "shift": [-1.0] * 3}
    for kind, edit, message in (
        ("onnx_int8", lambda m: m.pop("onnx_input"), "its input is uint8 but its metadata has no 'onnx_input'"),
        ("onnx", lambda m: m.update(onnx_input={"dtype": "uint8", "quantization": [0.01, 128]}), "belongs to int8"),
        (
            "onnx",
            lambda m: m.update(int8=True, format_version=4, onnx_input=levels, input_normalization=norm),
            "not uint8",
        ),
    ):
        meta = json.loads(exports[kind].with_name(exports[kind].name + ".json").read_text())
        edit(meta)
        model = tmp_path / f"{kind}.onnx"
        onnx.save(onnx_with_metadata(onnx.load(exports[kind]), meta), model)  # no sidecar: the copy inside
        with pytest.raises((ModelError, MetadataError), match=message):
            load_predictor(model)
    # an ONNX file of another integer input (another tool's): refused at load, not at the first image
    model = onnx.load(exports["onnx"])
    for node in model.graph.node:
        node.input[:] = ["as_float" if name == "images" else name for name in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Cast", ["images"], ["as_float"], to=onnx.TensorProto.FLOAT))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT8
    onnx.save(model, tmp_path / "int8_input.onnx")
    with pytest.raises(ModelError, match=r"its input is tensor\(int8\); bloodcell's ONNX files take float"):
        load_predictor(tmp_path / "int8_input.onnx")


def test_quantization_aware_training_exports_to_tflite_only(tmp_path):
    with pytest.raises(ConfigError, match="exports to TFLite only"):
        export_model(None, "onnx", tmp_path / "q.onnx", int8=True, qat_state={"graph": None, "quantizer": None})
    assert list(tmp_path.iterdir()) == []


def test_int8_map_within_half_a_point_of_fp32(exports, val_images):
    """Min/max activation ranges: with litert's default histogram observers int8 lost 1.1 points here."""
    records = val_images[0]  # all of val: on 30 images calibration noise alone moves int8 by 1-2 points
    fp32 = evaluate(load_predictor(exports["tflite"]), records).voc_map50
    int8 = evaluate(load_predictor(exports["int8"]), records).voc_map50
    assert int8 >= fp32 - 0.005, (fp32, int8)


def test_calibrate_refits_an_int8_export_into_its_sidecar(exports, dense_root, tmp_path, capsys):
    """The int8 file counts red cells on dense val close to the .pt at the operating points it inherits
    (histogram activation ranges undercounted: MAE 1.69, the .pt 1.10), and a refit on dense val with the
    export's own scores is no worse and within the shipped model's CI guard."""
    import shutil

    from bloodcell.data.sources import load_dataset

    dense = dense_root
    model = tmp_path / "int8.tflite"
    shutil.copyfile(exports["int8"], model)
    shutil.copyfile(exports["int8"].with_name(exports["int8"].name + ".json"), tmp_path / "int8.tflite.json")
    records = load_dataset(dense, "val", decode_images=False).records
    unfitted = load_predictor(model)
    assert unfitted.notes and "bloodcell calibrate --model" in unfitted.notes[0]  # said by predict, serve, val...
    inherited = evaluate(unfitted, records, cell_size="auto")
    assert inherited.count_mae["RBC"] <= 1.3 and abs(inherited.count_total_error["RBC"]) <= 0.03, inherited.count_mae
    assert main(["calibrate", "--model", str(model), "--data", str(dense)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {model}.json and the metadata inside int8.tflite" in out
    assert "; NMS IoU RBC 0.50, WBC 0.30, Platelets 0.50)" in out  # the stored thresholds, said
    sidecar = json.loads((tmp_path / "int8.tflite.json").read_text())
    assert sidecar["fitted"]["images"] == 42 and sidecar["fitted"]["data"] == str(dense)
    assert dt.datetime.fromisoformat(sidecar["fitted"]["at"]).tzinfo is not None  # dated: a stale copy is older
    assert sidecar["fitted"]["generation"] == 1  # the export's first refit
    refit = load_predictor(model)
    assert refit.conf == tuple(sidecar["conf"]) and refit.describe()["metrics"] == sidecar["fitted"]["metrics"]
    assert refit.notes == []
    from bloodcell.engine.validate import in_sample_note  # val on those 42 images says they are in-sample

    assert in_sample_note(refit, load_dataset(dense, "val", decode_images=False)).startswith("note: 42 of the 42")
    # before its refit, the export carries the shipped .pt's fit (BCCD val, dense labels where they exist)
    assert in_sample_note(unfitted, load_dataset(dense, "val", decode_images=False)).startswith("note: 42 of the 42")
    assert in_sample_note(unfitted, load_dataset(dense, "train", decode_images=False)) is None
    alone = tmp_path / "pi" / "int8.tflite"  # the file copied without its sidecar counts the same
    alone.parent.mkdir()
    shutil.copyfile(model, alone)
    assert load_predictor(alone).metadata.raw == sidecar
    fitted = evaluate(refit, records, cell_size="auto")
    assert fitted.count_mae["RBC"] <= min(inherited.count_mae["RBC"], 1.5), (inherited.count_mae, fitted.count_mae)


def test_image_of_another_size_is_letterboxed(exports, val_images):
    from PIL import Image

    image = val_images[1][0]
    big = np.asarray(Image.fromarray(image).resize((1280, 960)))
    p = load_predictor(exports["int8"])
    small_dets, big_dets = p.predict(image, 0.3), p.predict(big, 0.3)
    assert abs(len(small_dets) - len(big_dets)) <= 3
    assert big_dets.boxes[:, 2].max() > 640  # boxes are in the big image's pixels


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "caffe", "--out", "m.caffemodel"], "unknown export format"),
        (["--format", "onnx", "--out", "m.tflite"], "must end in .onnx"),
        (["--format", "tflite", "--imgsz", "650x480", "--out", "m.tflite"], "multiples of 32"),
        (["--format", "onnx", "--verbose", "--out", "m.onnx"], "the ONNX export prints none"),
        (["--format", "tflite", "--data", "voc", "--out", "m.tflite"], "--data is for int8 calibration"),
        (["--format", "onnx", "--calib-images", "50", "--out", "m.onnx"], "--calib-images is for int8 calibration"),
        # too small to hold a few of the model's cells (it counted nothing at 32x32), too large for memory
        (["--format", "onnx", "--imgsz", "160x128", "--out", "m.onnx"], "must hold 3 red cells of the model's"),
        (["--format", "onnx", "--imgsz", "4800x3840", "--out", "m.onnx"], "sides up to 2048"),
    ],
)
def test_export_refuses_nonsense(tmp_path, capsys, args, message):
    args = [a if not a.startswith("m.") else str(tmp_path / a) for a in args]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_the_python_export_refuses_what_the_command_refuses(tmp_path):
    """Settings a float export would not use are refused from Python too, never silently dropped."""
    with pytest.raises(ConfigError, match="--data is for int8 calibration; add --int8"):
        export_model(None, "onnx", tmp_path / "m.onnx", data=tmp_path)
    with pytest.raises(ConfigError, match="--calib-images is for int8 calibration"):
        export_model(None, "tflite", tmp_path / "m.tflite", calib_images=10)
    with pytest.raises(ConfigError, match="the ONNX export prints none"):
        export_model(None, "onnx", tmp_path / "m.onnx", verbose=True)
    with pytest.raises(ConfigError, match="--calib-images 0: expected an integer >= 1"):  # not "0: the default"
        export_model(None, "tflite", tmp_path / "m.tflite", int8=True, calib_images=0)
    assert list(tmp_path.iterdir()) == []


def test_missing_or_corrupt_exported_model(tmp_path, exports, capsys):
    broken = tmp_path / "m.tflite"
    broken.write_bytes(exports["int8"].read_bytes()[:5000])
    (tmp_path / "m.tflite.json").write_bytes(exports["int8"].with_name("cellnet_int8.tflite.json").read_bytes())
    with pytest.raises(ModelError, match=r"m\.tflite"):
        load_predictor(broken)
    lonely = tmp_path / "x.onnx"  # without its sidecar: the metadata embedded in the file
    lonely.write_bytes(exports["onnx"].read_bytes())
    assert load_predictor(lonely).metadata == load_predictor(exports["onnx"]).metadata
    with pytest.raises(ModelError, match="not found"):
        load_predictor(tmp_path / "nope.tflite")


def test_edgetpu_without_runtime_is_a_clear_error(exports, monkeypatch):
    import gc
    import sys

    unraisable = []  # LiteRT's Delegate prints a traceback when collected after its library failed to open
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(ModelError, match="Edge TPU runtime"):
        load_predictor(exports["int8"], edgetpu=True)
    gc.collect()
    assert unraisable == []
    with pytest.raises(ModelError, match=r"needs a \.tflite"):
        load_predictor(exports["onnx"], edgetpu=True)


def test_fasterrcnn_cannot_be_exported(tmp_path):
    import torch

    from bloodcell.models.checkpoint import make_info, model_payload, save_checkpoint
    from bloodcell.models.registry import build_model, model_config

    cfg = model_config("fasterrcnn")
    path = tmp_path / "frcnn.pt"
    torch.manual_seed(0)
    save_checkpoint(
        path,
        model_payload(
            build_model("fasterrcnn", cfg, pretrained=False),
            make_info("fasterrcnn", cfg, ("RBC", "WBC", "Platelets"), (640, 480)),
        ),
    )
    with pytest.raises(ConfigError, match="cannot be exported"):
        export_model(path, "onnx", tmp_path / "f.onnx")


def test_export_refuses_what_it_found_only_after_converting(tmp_path, capsys):
    """An int8 export without a training image to set its ranges from (it detected nothing), and a
    metadata path that is a folder, are refused before the conversion, naming the fault."""
    empty = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (empty / sub).mkdir(parents=True)
    (empty / "ImageSets/Main/train.txt").write_text("")
    out = tmp_path / "m.tflite"
    assert main(["export", "--format", "tflite", "--int8", "--data", str(empty), "--out", str(out)]) == 2
    assert "has no images to set the int8 ranges from" in capsys.readouterr().err
    (tmp_path / "m.onnx.json").mkdir()
    assert main(["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert f"its metadata file {tmp_path / 'm.onnx.json'} is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.json", "voc"]


def test_an_input_smaller_than_the_models_says_it_tiles():
    """--imgsz below the model's own input is slower, not faster: every field becomes several tiles."""
    from bloodcell.export.exporter import smaller_input_note

    note = smaller_input_note((352, 288), (480, 384), 75.0)
    assert note.startswith("--imgsz 352x288 is smaller than the model's input 480x384") and "into 4 tiles" in note
    assert "bloodcell train --scale" in note
    assert smaller_input_note((480, 384), (480, 384), 75.0) is None
    assert smaller_input_note((640, 480), (480, 384), 75.0) is None  # larger: one pass, more margin


def test_a_models_own_input_too_small_is_named_as_such(tmp_path, capsys):
    """Without --imgsz the check reads the model's own input: the error says so and how to change it."""
    from bloodcell.models.checkpoint import load_model, model_payload, save_checkpoint
    from bloodcell.weights import shipped_by_name

    net, info = load_model(shipped_by_name("cellnet_bccd.pt"))
    info.input_size = (192, 160)  # as `train --input-size 192x160` would record it
    small = tmp_path / "small.pt"
    save_checkpoint(small, model_payload(net, info))
    assert main(["export", "--model", str(small), "--format", "onnx", "--out", str(tmp_path / "s.onnx")]) == 2
    err = capsys.readouterr().err
    assert "the model's input 192x160 (pass --imgsz): the shorter side must hold 3 red cells" in err
    assert not (tmp_path / "s.onnx").exists()


def test_an_existing_file_is_replaced_only_when_it_is_an_earlier_export(tmp_path, exports, capsys):
    """A re-export replaces the earlier one; a user's other file at --out (or at its .json) never."""
    from bloodcell.export.exporter import check_replaceable

    for kind in ("onnx", "int8", "onnx_int8"):  # the metadata inside the file marks it, with or without its sidecar
        earlier = tmp_path / f"earlier_{kind}{exports[kind].suffix}"
        earlier.write_bytes(exports[kind].read_bytes())
        check_replaceable(earlier, earlier.with_name(earlier.name + ".json"))
    for name, text in (("other.onnx", "important notes"), ("n.onnx.json", '{"my": "data"}')):
        (tmp_path / name).write_text(text)
        out = tmp_path / name.removesuffix(".json")
        assert main(["export", "--format", "onnx", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name} exists and is not a bloodcell export" in err
        assert (tmp_path / name).read_text() == text


def test_int8_is_refused_for_a_format_without_it(monkeypatch):
    from bloodcell.export.formats import FORMATS, ExportFormat, get_format

    monkeypatch.setitem(FORMATS, "npz", ExportFormat("npz", ".npz", int8=False, runtime="numpy"))
    with pytest.raises(ConfigError, match="--int8 is not available for npz; int8 formats: onnx, tflite"):
        get_format("npz", int8=True)
    assert get_format("onnx", int8=True).suffix == ".onnx"
