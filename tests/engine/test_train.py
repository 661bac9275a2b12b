"""Smoke training, run-folder contents, and resume after SIGKILL (tiny 6-image dataset)."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bloodcell.config import TrainConfig
from bloodcell.engine.train import train
from bloodcell.errors import ConfigError
from bloodcell.models.checkpoint import load_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["cellnet", "cellnet-mnv2", "fasterrcnn"])
def test_smoke_train_two_iterations_writes_a_complete_run(tiny_voc, tmp_path, model):
    cfg = TrainConfig(
        model=model,
        data=str(tiny_voc),
        epochs=1,
        batch=2,
        imgsz=256,
        out=str(tmp_path / "run"),
        threads=2,
        pretrained=False,
    )
    result = train(cfg, progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "results.png", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["loss"]) > 0
    _net, info = load_model(result.best)
    assert info.name == model and 0 < info.conf < 1
    assert "val" in info.metrics


def test_refuses_nonsense_options(tiny_voc):
    with pytest.raises(ConfigError):
        TrainConfig(imgsz=100)
    with pytest.raises(ConfigError, match="resume"):
        train(TrainConfig(data=str(tiny_voc), out="/nonexistent/run", resume=True), progress=False)


def _train_cmd(data, out, *extra):
    return [
        sys.executable,
        "-m",
        "bloodcell.cli",
        "train",
        "--data",
        str(data),
        "--epochs",
        "3",
        "--batch",
        "2",
        "--imgsz",
        "128",
        "--val-every",
        "1",
        "--threads",
        "1",
        "--seed",
        "7",
        "--no-pretrained",
        "--out",
        str(out),
        *extra,
    ]


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_voc, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_voc, full), check=True, env=env, capture_output=True, timeout=300)

    proc = subprocess.Popen(
        _train_cmd(tiny_voc, killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:  # kill while epoch 2 runs, right after epoch 1 was saved
        if line.startswith("epoch 1/3"):
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    rows = list(csv.DictReader((killed / "metrics.csv").open()))
    assert len(rows) < 3  # really interrupted

    subprocess.run([*_train_cmd(tiny_voc, killed), "--resume"], check=True, env=env, capture_output=True, timeout=300)
    want = list(csv.DictReader((full / "metrics.csv").open()))
    got = list(csv.DictReader((killed / "metrics.csv").open()))
    assert [r["val_map50"] for r in got] == [r["val_map50"] for r in want]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    a = torch.load(full / "best.pt", weights_only=True)["model"]
    b = torch.load(killed / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
