"""Batch-norm folding is exact; QAT fine-tunes and converts to a full-integer TFLite."""

import json

import pytest
import torch

from bloodcell.export.edgetpu import unsupported_ops
from bloodcell.export.qat import QATConfig, qat_finetune
from bloodcell.models.checkpoint import make_info, model_payload, save_checkpoint
from bloodcell.models.fold import fold_batch_norms
from bloodcell.models.registry import build_model, model_config
from bloodcell.runtime.counting import Calibration
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.types import CLASS_NAMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = model_config("cellnet", {"neck_channels": 16})
    net = build_model("cellnet", cfg, pretrained=False).eval()
    with torch.no_grad():  # give batch norms non-trivial statistics, as training would
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("qat") / "small.pt"
    trained = {"train_config": {"missing_labels": "ignore", "missing_tau": 0.3}}  # as the shipped model
    fitted = Calibration({name: ((0.0, 0.0), (1.0, 1.0)) for name in CLASS_NAMES}, floor=0.05).to_dict()  # and fitted
    info = make_info("cellnet", cfg, CLASS_NAMES, (256, 192), conf=0.3, extra=trained, calibration=fitted)
    save_checkpoint(path, model_payload(net, info))
    return path, net


def test_folding_is_exact(small_model):
    _, net = small_model
    folded, pairs = fold_batch_norms(net)
    assert pairs > 50
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 192, 256) * 255
    with torch.no_grad():
        (a_cls, a_box), (b_cls, b_box) = net(x), folded(x)
    torch.testing.assert_close(a_cls, b_cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a_box, b_box, rtol=1e-4, atol=1e-4)


def test_the_qat_command_writes_full_integer_tflite_and_prints_its_own_lines_only(small_model, tiny_voc, tmp_path):
    """One QAT run (the slowest step of the suite's exports), checked as a user sees it: torchao's and
    TensorFlow's import-time log lines stay hidden, as export hides its converter's, and a log (stderr not a
    terminal) gets no progress bars; the int8 file it writes counts."""
    import subprocess
    import sys

    path, _ = small_model
    out, spec = tmp_path / "qat.tflite", tmp_path / "sparse.yaml"
    spec.write_text(f"sources:\n  - path: {tiny_voc}\n    exhaustive: [WBC]\n")  # red cells left out, as BCCD
    cmd = [sys.executable, "-m", "bloodcell", "qat", "--model", str(path), "--data", str(spec), "--out", str(out)]
    run = subprocess.run([*cmd, "--epochs", "1", "--batch", "2", "--imgsz", "128"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.is_file() and run.stderr.splitlines() == [  # its own warning only: 4 images make its ranges
        "warning: QAT learns its int8 ranges from 4 training images (export --int8 calibrates on 32); check the "
        f"file's counts before use: `bloodcell val --model {out}`"
    ]
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    # the source model's missing-label method, with the fp32 source as its teacher
    assert meta["int8"] and meta["qat"]["epochs"] == 1 and meta["qat"]["missing_labels"] == "ignore"
    assert meta["tflite_input"]["dtype"] == "int8" and unsupported_ops(meta["ops"]) == []
    predictor = load_predictor(out)
    assert tuple(predictor.class_names) == CLASS_NAMES
    image = load_image(next((tiny_voc / "JPEGImages").glob("*.jpg")))
    h, w = image.shape[:2]
    dets = predictor.predict(image, min_score=0.001)
    # The int8 file runs on a real slide and gives usable detections: inside the image, with
    # positive size, scores between the floor asked for and 1, and labels naming known classes.
    assert len(dets) > 0
    x1, y1, x2, y2 = dets.boxes.T
    assert (x1 >= -1).all() and (y1 >= -1).all() and (x2 <= w + 1).all() and (y2 <= h + 1).all()
    assert (x2 > x1).all() and (y2 > y1).all()
    assert (dets.scores >= 0.001).all() and (dets.scores <= 1.0).all()
    assert set(dets.labels.tolist()) <= set(range(len(CLASS_NAMES)))


def test_qat_warns_of_an_unfitted_checkpoint_before_its_epochs(small_model, tiny_voc, tmp_path, monkeypatch, capsys):
    """A last.pt would make an int8 file that counts at its 0.5 points: said before minutes of QAT, once."""
    from bloodcell.export import qat as qat_module

    _, net = small_model
    unfitted = tmp_path / "last.pt"
    info = make_info("cellnet", model_config("cellnet", {"neck_channels": 16}), CLASS_NAMES, (256, 192), conf=0.5,
                     extra={"train_config": {}})  # fmt: skip
    save_checkpoint(unfitted, model_payload(net, info))

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # where QAT's work begins

    monkeypatch.setattr(qat_module, "fold_batch_norms", stop)
    config = QATConfig(model=str(unfitted), out=str(tmp_path / "q.tflite"), data=str(tiny_voc), batch=2, imgsz=256)
    with pytest.raises(KeyboardInterrupt):
        qat_finetune(config, progress=False)
    err = capsys.readouterr().err
    assert f"warning: {unfitted}: a training checkpoint whose counting was not fitted" in err
    assert err.count("not fitted") == 1


def test_qat_names_a_wrong_model_before_reading_the_data(tmp_path, capsys):
    """An export given as --model is said at once, not after the data (which may be a slow share) was read."""
    from bloodcell.cli import main

    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    argv = ["qat", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "no-such-data")]
    assert main([*argv, "--out", str(tmp_path / "q.tflite")]) == 2
    assert "m.onnx: an ONNX export; this needs the .pt model" in capsys.readouterr().err


def test_a_qat_config_is_checked_when_made_as_the_command_checks_it(tmp_path):
    """A Python caller's wrong output name or epoch count is said at once, not after the fine-tuning."""
    from bloodcell.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--out m\.onnx: QAT writes a \.tflite file"):
        QATConfig(model="cellnet_bccd.pt", out="m.onnx")
    with pytest.raises(ConfigError, match=r"--epochs 0: expected an integer >= 1"):
        QATConfig(model="cellnet_bccd.pt", out="m.tflite", epochs=0)
    with pytest.raises(ConfigError, match=r"--lr 0: expected a number > 0"):
        QATConfig(model="cellnet_bccd.pt", out="m.tflite", lr=0)
    assert QATConfig(model=tmp_path / "a.pt", out=tmp_path / "m.tflite").out == str(tmp_path / "m.tflite")
