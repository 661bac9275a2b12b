"""What a user gets without flags: every core, and per-stage times on request."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.timing import available_cores

SAMPLE = next((Path(__file__).resolve().parents[2] / "src/bloodcell/assets/samples").glob("*.jpg"))


def test_onnx_uses_every_core_unless_told(tiny_exports) -> None:
    ort = pytest.importorskip("onnxruntime")
    default = load_predictor(tiny_exports["onnx"])
    assert default.session.get_session_options().intra_op_num_threads == available_cores()
    one = load_predictor(tiny_exports["onnx"], threads=1)
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert ort.get_device() == "CPU"
    spinning = "session.intra_op.allow_spinning"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ort's own default: threads spin
        default.session.get_session_options().get_session_config_entry(spinning)
    # more threads than cores: waiting threads sleep instead of spinning (999 threads took 40 s an image spinning)
    many = load_predictor(tiny_exports["onnx"], threads=available_cores() + 1)
    assert many.session.get_session_options().get_session_config_entry(spinning) == "0"


def test_torch_uses_every_core_unless_told(tiny_model) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        load_predictor(tiny_model())
        assert torch.get_num_threads() == available_cores()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_verbose_predict_shows_where_time_goes(fmt: str, tiny_exports, capsys) -> None:
    from bloodcell.cli import main

    assert main(["predict", str(SAMPLE), "--model", str(tiny_exports[fmt]), "--verbose", "--cell-size", "none"]) == 0
    headline, line = capsys.readouterr().out.splitlines()[:2]
    found = re.fullmatch(r"load ([\d.]+) ms, then inference ([\d.]+) ms: (.*) ms · scale [\d.]+", line.strip())
    assert found, line
    stages = dict(part.split(" ") for part in found[3].split(" · "))
    assert list(stages) == ["letterbox", "network", "decode", "other"]
    assert all(float(v) >= 0 for v in stages.values()) and float(stages["network"]) > 0
    # the stages add up to the inference time, which the image's own line shows (load apart)
    assert abs(sum(map(float, stages.values())) - float(found[2])) < 0.3
    assert headline.endswith(f"({float(found[2]):.0f} ms)")


def test_litert_load_chatter_is_dropped_and_its_warnings_kept(capfd):
    """LiteRT prints an info line on every load from C++ (no log-level switch reaches it); what else
    the native side prints while loading, e.g. a warning, still reaches the user."""
    import os

    from bloodcell.runtime.exported import LITERT_CHATTER, _without_litert_chatter

    with _without_litert_chatter():
        os.write(2, f"{LITERT_CHATTER[0]}\nWARNING: a native warning\n".encode())
    err = capfd.readouterr().err
    assert err == "WARNING: a native warning\n"
