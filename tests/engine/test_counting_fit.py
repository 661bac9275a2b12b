"""fit_counting on val sets too small for the count intervals' conformal width."""

from pathlib import Path

import numpy as np
import pytest

from bloodcell.data.voc import VOCRecord
from bloodcell.engine.evaluate import fit_counting
from bloodcell.runtime.counting import Calibration, conformal_min_images
from bloodcell.types import Detections

NAMES = ("RBC", "WBC", "Platelets")


@pytest.mark.parametrize(("level", "images"), [(0.5, 1), (0.8, 4), (0.9, 9), (0.95, 19)])
def test_conformal_quantile_exists_from_these_many_images(level, images):
    assert conformal_min_images(level) == images  # ceil(level (n+1)) <= n first holds at n = images


def fields(n: int, cells: int = 25, seed: int = 0) -> tuple[list[Detections], list[VOCRecord]]:
    """``n`` images of ``cells`` red cells each, a detection per cell (and a few false ones) at varied scores."""
    rng = np.random.default_rng(seed)
    preds, records = [], []
    for i in range(n):
        xy = np.stack([np.arange(cells) * 20.0, np.full(cells, 10.0)], 1)
        boxes = np.concatenate([xy, xy + 15], 1).astype(np.float32)
        false = np.array([[600, 400, 615, 415], [620, 400, 635, 415]], np.float32)
        scores = np.concatenate([rng.uniform(0.4, 1.0, cells), rng.uniform(0.05, 0.5, 2)])
        preds.append(Detections(np.concatenate([boxes, false]), np.zeros(cells + 2, np.int64), scores))
        labels = np.zeros(cells, np.int64)
        records.append(VOCRecord(Path(f"{i}.jpg"), Path(f"{i}.xml"), 640, 480, boxes, labels, np.zeros(cells, bool)))
    return preds, records


def test_too_few_val_images_keep_the_models_interval_calibration():
    """100+ red cells in 8 images refit the operating point, but no 90% conformal width exists on 8
    images: the model's calibration stays, and the warning says why; 9 images refit it."""
    prior_cal = Calibration({n: ((0.0, 1.0), (0.1, 0.9)) for n in NAMES}, width={"RBC": 1.7})
    prior = ((0.61, 0.5, 0.5), prior_cal)
    preds, records = fields(8)
    fit = fit_counting(preds, records, NAMES, prior=prior)
    assert fit.calibration.knots["RBC"] == prior_cal.knots["RBC"] and fit.calibration.width["RBC"] == 1.7
    assert fit.conf[0] != 0.61  # the operating point is refitted: 200 cells are plenty for it
    said = [w for w in fit.warnings if w.startswith("RBC")]
    assert said == [
        "RBC: 8 val images box it exhaustively, fewer than the 9 that fit a 90% interval's width: its intervals "
        "keep the calibration the model had; label more val images"
    ]
    # without a calibration to keep, the refit's intervals stand, and the warning says what they cover
    fit = fit_counting(preds, records, NAMES)
    assert fit.calibration.knots["RBC"] != prior_cal.knots["RBC"]
    assert any("its intervals cover about 89% of new images, not 90%" in w for w in fit.warnings)
    preds, records = fields(9)
    fit = fit_counting(preds, records, NAMES, prior=prior)
    assert fit.calibration.knots["RBC"] != prior_cal.knots["RBC"] and fit.calibration.width["RBC"] != 1.7
    assert not [w for w in fit.warnings if w.startswith("RBC")]


def test_a_red_cell_size_from_few_cells_is_not_refitted():
    preds, records = fields(1, cells=12)
    fit = fit_counting(preds, records, NAMES)
    assert fit.cell_size is None  # the model's reference size stays (the caller keeps it)
    assert any(w.startswith("red-cell size: ") and "fewer than 20" in w for w in fit.warnings)
    preds, records = fields(2, cells=12)
    assert fit_counting(preds, records, NAMES).cell_size == 15.0  # 24 cells of 15 px: measured
