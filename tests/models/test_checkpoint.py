"""last.pt: a versioned training checkpoint; --resume reads only the version it writes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bloodcell.errors import ModelError
from bloodcell.models.checkpoint import (
    FORMAT_VERSION,
    TRAINING_KEYS,
    ModelInfo,
    load_model,
    model_payload,
    read_training_checkpoint,
    save_checkpoint,
    training_payload,
)

INFO = ModelInfo(name="cellnet", config={}, class_names=("RBC",), input_size=(64, 64))


def _state() -> dict:
    return {key: i for i, key in enumerate(TRAINING_KEYS)}  # stand-ins: the helpers do not look inside


def test_training_checkpoint_round_trips_with_the_format_version(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, training_payload(nn.Linear(2, 2), INFO, _state()))
    payload = read_training_checkpoint(path)
    assert payload["format_version"] == FORMAT_VERSION and payload["kind"] == "training"
    assert {k: payload[k] for k in TRAINING_KEYS} == _state() and set(payload["model"]) == {"weight", "bias"}
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind


def test_training_state_keys_are_checked_when_written() -> None:
    with pytest.raises(ValueError, match="training state keys"):
        training_payload(nn.Linear(2, 2), INFO, {**_state(), "format_version": 99})


@pytest.mark.parametrize(("version", "found"), [(None, "no format version"), (FORMAT_VERSION + 1, "format version 2")])
def test_other_versions_are_refused_with_a_clear_error(tmp_path, version, found) -> None:
    payload = training_payload(nn.Linear(2, 2), INFO, _state())
    if version is None:
        del payload["format_version"]
    else:
        payload["format_version"] = version
    torch.save(payload, tmp_path / "last.pt")
    with pytest.raises(ModelError) as info:
        read_training_checkpoint(tmp_path / "last.pt")
    message = str(info.value)
    assert found in message and f"resumes format version {FORMAT_VERSION} only" in message and "\n" not in message


def test_a_model_file_is_not_a_training_checkpoint(tmp_path) -> None:
    save_checkpoint(tmp_path / "best.pt", model_payload(nn.Linear(2, 2), INFO))
    with pytest.raises(ModelError, match="not a training checkpoint"):
        read_training_checkpoint(tmp_path / "best.pt")


@pytest.mark.parametrize(
    ("iou", "message"),
    [((0.5, 0.3), "has 2 values for 1 classes"), (0.0, r"0\.0: expected a number in \(0, 1\]"), ("high", "'high'")],
)
def test_bad_nms_thresholds_in_a_model_file_are_named(tmp_path, iou, message) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, model_payload(nn.Linear(1, 1), ModelInfo(**{**INFO.__dict__, "iou_threshold": iou})))
    with pytest.raises(ModelError, match=rf"m\.pt: bad model settings: iou_threshold .*{message}"):
        load_model(path)


def test_a_training_checkpoint_loads_as_a_model_with_its_ema_weights(tmp_path) -> None:
    """`val --model last.pt` scores the EMA weights, which validation scored and best.pt holds."""
    from bloodcell.models.checkpoint import make_info
    from bloodcell.models.registry import build_model, model_config

    cfg = model_config("cellnet", {"neck_channels": 16})
    raw, averaged = (build_model("cellnet", cfg, pretrained=False) for _ in range(2))
    with torch.no_grad():
        for p in averaged.parameters():
            p.add_(1.0)
    info = make_info("cellnet", cfg, ("RBC", "WBC", "Platelets"), (64, 64))
    state = {**_state(), "ema": {"module": averaged.state_dict(), "updates": 3}}
    save_checkpoint(tmp_path / "last.pt", training_payload(raw, info, state))
    loaded, _ = load_model(tmp_path / "last.pt")
    expected = averaged.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.pt", b"\xff\xd8\xff\xe0\x00\x10JFIF", r"m\.pt: not a bloodcell \.pt model file \(it is a JPEG image\)"),
        ("m.pt", b"", r"\(the file is empty\)"),
        ("m.pt", b"hello world", r"\(not a PyTorch file\)"),
        ("m.onnx", b"\x08\x07", r"m\.onnx: an ONNX export; this needs the \.pt model it was exported from"),
        ("m.tflite", b"TFL3", r"m\.tflite: a TFLite export; this needs the \.pt model it was exported from"),
    ],
)
def test_a_file_that_is_not_a_model_says_what_it_is(tmp_path, name, content, message) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / name)


@pytest.mark.parametrize("weights", [None, ["not", "a", "state"], {"conv.weight": 1}])
def test_a_model_file_with_settings_but_no_weights_is_named(tmp_path, weights) -> None:
    """Hand-made (or cut by a script): bloodcell's header and settings, no tensors. One line, not a traceback."""
    payload = model_payload(nn.Linear(1, 1), INFO)
    if weights is None:
        del payload["model"]
    else:
        payload["model"] = weights
    save_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(ModelError, match=r"m\.pt: bad model file: its settings are there, but no weights"):
        load_model(tmp_path / "m.pt")
