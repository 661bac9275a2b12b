"""The sample images shipped in the package: present, small, attributed, and the shipped model finds cells in them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bloodcell.assets import SAMPLES_DIR, sample_images
from bloodcell.runtime.images import load_image

REPO = Path(__file__).resolve().parents[1]


def test_three_small_bccd_samples_with_their_licence() -> None:
    paths = sample_images()
    assert [p.name for p in paths] == ["BloodImage_00007.jpg", "BloodImage_00011.jpg", "BloodImage_00015.jpg"]
    for path in paths:
        assert path.is_file() and path.stat().st_size < 40_000, path.name
        image = load_image(path)
        assert image.shape == (480, 640, 3) and image.dtype == np.uint8
    attribution = (SAMPLES_DIR / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "Shenggan/BCCD_Dataset" in attribution and "MIT License" in attribution
    assert "Copyright (c) 2017 shenggan" in attribution


def test_samples_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"assets/samples/*.jpg", "assets/samples/*.md"} <= set(package_data["bloodcell"])


def _make_predict_line(*variables: str) -> str:
    """The `bloodcell predict` command `make predict` runs (make -n: printed, not run)."""
    make = shutil.which("make") or pytest.skip("make not installed")
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    out = subprocess.run(
        [make, "-n", "predict", *variables], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    return next(line for line in out.splitlines() if "bloodcell predict" in line)


def test_make_predict_defaults_to_the_samples() -> None:
    line = _make_predict_line()
    assert " src/bloodcell/assets/samples/BloodImage_*.jpg " in line and "--out runs/predict" in line
    line = _make_predict_line("DATA=/data/BCCD")  # the README's `make predict DATA=...`: its first ten images
    assert " /data/BCCD/JPEGImages/BloodImage_0000[0-9].jpg " in line and "samples" not in line


def test_shipped_model_finds_cells_in_every_sample() -> None:
    pytest.importorskip("torch")
    from bloodcell.runtime.loader import load_predictor

    predictor = load_predictor()  # the shipped model, sha256-checked
    for path in sample_images():
        detections = predictor.predict(load_image(path))
        sure = np.asarray(detections.labels)[np.asarray(detections.scores) >= 0.5]
        names = [predictor.class_names[i] for i in sure]
        # Each sample has one white cell and 14-17 labelled red cells (more are unlabelled).
        assert names.count("WBC") == 1 and names.count("RBC") >= 8, (path.name, names)
