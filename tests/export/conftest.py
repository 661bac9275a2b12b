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
            None, "tflite", out / "cellnet_int8.tflite", int8=True, calib_images=16, data=bccd_root
        ).path,
    }
    return paths
