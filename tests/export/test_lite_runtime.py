"""The torch-free install: `pip install bloodcell[lite]` in a fresh virtualenv runs exported models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bloodcell.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lite_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("lite") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # A non-editable build of this checkout with only the lite extra: what a Raspberry Pi user installs.
    result = subprocess.run([*pip, f"{REPO}[lite]"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return venv


def test_lite_venv_has_no_torch(lite_venv):
    code = "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'timm') if u.find_spec(m)])"
    out = subprocess.run([str(lite_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_lite_predict_matches_full_install(lite_venv, exports, bccd_root, tmp_path, kind):
    images = [str(bccd_root / "JPEGImages" / f"BloodImage_0000{i}.jpg") for i in (0, 2)]
    lite_json, full_json = tmp_path / "lite.json", tmp_path / "full.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [
            str(lite_venv / "bin" / "bloodcell"),
            "predict",
            *images,
            "--model",
            str(exports[kind]),
            "--json",
            str(lite_json),
            "--csv",
            str(tmp_path / "lite.csv"),
            "--out",
            str(tmp_path / "annotated"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert main(["predict", *images, "--model", str(exports[kind]), "--json", str(full_json)]) == 0
    assert json.loads(lite_json.read_text()) == json.loads(full_json.read_text())
    assert len(list((tmp_path / "annotated").iterdir())) == 2


def test_lite_install_explains_torch_commands(lite_venv, capsys):
    run = subprocess.run(
        [str(lite_venv / "bin" / "bloodcell"), "train", "--epochs", "1"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert "pip install 'bloodcell[torch]'" in run.stderr and "Traceback" not in run.stderr
