"""The TFLite converter's log: kept out of a successful export, shown with --verbose or when it fails."""

import importlib.util
import os
import sys

import pytest

from bloodcell.export import exporter
from bloodcell.runtime.native_output import captured_output


def _noisy(*_args, **_kwargs) -> bytes:
    os.write(2, b"I0000 absl: Missing quantization parameter on the output\n")  # native, as absl writes
    print("(00:00) [START] LiteRT-Torch Convert")  # Python, as litert-torch's progress does
    return b"tflite bytes"


def _failing(*_args, **_kwargs) -> bytes:
    os.write(2, b"error: 'tfl.conv_2d' op quantization parameters violate the same scale constraint\n")
    raise RuntimeError("conversion failed")


def test_native_and_python_output_are_both_captured(capfd):
    with captured_output((1, 2)) as log:
        print("python out")
        os.write(1, b"native out\n")
        print("python err", file=sys.stderr)
        os.write(2, b"native err\n")
        with captured_output((2,)) as inner:  # nested (a TFLite load inside an export): no deadlock
            os.write(2, b"inner\n")
    assert log.text.splitlines() == ["python out", "native out", "python err", "native err"]  # in order
    assert inner.text == "inner\n"
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("verbose", [False, True])
def test_a_successful_conversion_is_quiet_unless_verbose(monkeypatch, capfd, tmp_path, verbose):
    if importlib.util.find_spec("litert_torch") is None:  # found, not imported: its import logs to fd 2
        pytest.skip("needs litert-torch")
    monkeypatch.setattr(exporter, "_convert_tflite", _noisy)
    converted = exporter._export_tflite(None, None, tmp_path / "m.tflite", True, None, None, {}, 3, verbose)
    assert converted == b"tflite bytes"
    out, err = capfd.readouterr()
    assert ("LiteRT-Torch Convert" in out and "Missing quantization" in err) == verbose
    assert verbose or (out, err) == ("", "")


def test_a_failed_conversion_shows_the_converters_log(monkeypatch, capfd, tmp_path):
    if importlib.util.find_spec("litert_torch") is None:  # found, not imported: its import logs to fd 2
        pytest.skip("needs litert-torch")
    monkeypatch.setattr(exporter, "_convert_tflite", _failing)
    with pytest.raises(RuntimeError, match="conversion failed"):
        exporter._export_tflite(None, None, tmp_path / "m.tflite", True, None, None, {}, 3)
    err = capfd.readouterr().err
    assert err.startswith("the converter's log (last lines):\n") and "same scale constraint" in err


@pytest.mark.parametrize(("used", "noted"), [(14, True), (32, False)])
def test_export_says_when_fewer_calibration_images_set_the_int8_ranges(monkeypatch, capsys, tmp_path, used, noted):
    from bloodcell.cli import main

    out = tmp_path / "m.tflite"

    def export(*_args, **_kwargs):
        return exporter.ExportResult(out, tmp_path / "m.tflite.json", 1, {"calibration_images": used})

    monkeypatch.setattr(exporter, "export_model", export)
    assert main(["export", "--format", "tflite", "--int8", "--out", str(out)]) == 0
    note = "note: int8 ranges set from 14 images: the train split has no more (asked for 32)"
    assert (note in capsys.readouterr().out) == noted


@pytest.mark.parametrize(
    ("ops", "said"),
    [
        (["CONV_2D", "ADD", "LOGISTIC"], "Edge TPU: every op maps onto it; compile with `edgetpu_compiler -s {out}`"),
        (["CONV_2D", "GELU", "ADD"], "Edge TPU: GELU not among its supported ops"),
    ],
)
def test_an_int8_tflite_export_says_what_the_edge_tpu_makes_of_it(monkeypatch, capsys, tmp_path, ops, said):
    from bloodcell.cli import main

    out = tmp_path / "m.tflite"

    def export(*_args, **_kwargs):
        return exporter.ExportResult(out, tmp_path / "m.tflite.json", 1, {"calibration_images": 32, "ops": ops})

    monkeypatch.setattr(exporter, "export_model", export)
    assert main(["export", "--format", "tflite", "--int8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"ops: {', '.join(ops)}\n" in printed and said.format(out=out) in printed
    assert main(["export", "--format", "tflite", "--out", str(out)]) == 0  # fp32: the Edge TPU runs int8 only
    assert "Edge TPU" not in capsys.readouterr().out


def test_a_stop_python_dropped_still_keeps_the_earlier_export(tmp_path, monkeypatch, capsys):
    """Ctrl-C raised inside jax's garbage-collector callback (litert-torch's import) is dropped by Python: the
    export ran on and replaced the file at --out, exit 0. The handler also records the stop, and the exporter
    checks it before writing."""
    from bloodcell import errors
    from bloodcell.cli import main
    from export_worker import tiny_model_file

    model, out = tiny_model_file(tmp_path / "m.pt"), tmp_path / "m.onnx"
    command = ["export", "--model", str(model), "--format", "onnx", "--out", str(out)]
    assert main(command) == 0
    sidecar = out.with_name("m.onnx.json")
    sidecar.write_text(
        sidecar.read_text().replace('"format": "bloodcell-export"', '"earlier": 1, "format": "bloodcell-export"')
    )
    earlier = {path: path.read_bytes() for path in (out, sidecar)}  # (a new export would write no "earlier")
    real = exporter._export_onnx

    def dropped_stop(*args, **kwargs):
        errors.ask_to_stop()  # what the handler did before its KeyboardInterrupt was lost
        return real(*args, **kwargs)

    monkeypatch.setattr(exporter, "_export_onnx", dropped_stop)
    assert main(command) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert {path: path.read_bytes() for path in earlier} == earlier
    monkeypatch.setattr(exporter, "_export_onnx", real)  # the next command starts unstopped
    assert main(command) == 0 and "interrupted" not in capsys.readouterr().err
