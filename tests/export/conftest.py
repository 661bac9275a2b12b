import shutil

import pytest

from bloodcell.export.exporter import export_model


@pytest.fixture(scope="session")
def exports(tmp_path_factory, bccd_root):
    """The shipped model exported once per test session to every format."""
    out = tmp_path_factory.mktemp("exports")
    paths = {
        "onnx": export_model(None, "onnx", out / "cellnet.onnx").path,
        "tflite": export_model(None, "tflite", out / "cellnet.tflite").path,
        "int8": export_model(
            None,
            "tflite",
            out / "cellnet_int8.tflite",
            int8=True,
            data=bccd_root,  # default calibration (32)
        ).path,
    }
    return paths


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, tiny_model):
    """A small random model exported to ONNX and fp32 TFLite (about 30 s), and under "raw_tflite"
    the .tflite file as the converter wrote it, before its metadata was embedded."""
    from bloodcell.export import exporter

    out = tmp_path_factory.mktemp("tiny_exports")
    model = tiny_model(conf=0.3, cls_bias=3.5)
    raw = out / "raw.tflite"
    embed = exporter.embed_tflite_metadata

    def keep_raw(path, text):
        shutil.copyfile(path, raw)
        embed(path, text)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "embed_tflite_metadata", keep_raw)
        paths = {fmt: export_model(model, fmt, out / f"tiny.{fmt}").path for fmt in ("onnx", "tflite")}
    assert raw.is_file()
    return {**paths, "raw_tflite": raw}
