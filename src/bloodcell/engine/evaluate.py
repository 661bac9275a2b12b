"""evaluate(predictor, dataset): one scorer for every model format."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from bloodcell.data.voc import VOCRecord
from bloodcell.engine.metrics import DetectionEvaluator, DetectionMetrics
from bloodcell.runtime.images import load_image
from bloodcell.types import Detections


def predict_records(predictor, records: Iterable[VOCRecord], progress: bool = False) -> list[Detections]:
    """Full ranked predictions (min score 0.001) for each record's image."""
    records = list(records)
    it = tqdm(records, desc="val", leave=False, disable=not progress)
    return [predictor.predict(load_image(r.image_path), min_score=0.001) for r in it]


def score(
    preds: list[Detections], records: list[VOCRecord], class_names: tuple[str, ...], conf: float
) -> DetectionMetrics:
    ev = DetectionEvaluator(class_names, conf=conf)
    for p, r in zip(preds, records, strict=True):
        ev.update(p, r.targets, (r.width, r.height), r.difficult)
    return ev.compute()


def choose_conf(preds: list[Detections], records: list[VOCRecord], num_classes: int) -> float:
    """The score threshold that minimizes the mean absolute count error over classes."""
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    gt = np.array([[int((r.labels == c).sum()) for c in range(num_classes)] for r in records])
    best, best_err = 0.5, float("inf")
    for t in grid:
        counts = np.array([[int(((p.labels == c) & (p.scores >= t)).sum()) for c in range(num_classes)] for p in preds])
        err = float(np.abs(counts - gt).mean())
        if err < best_err - 1e-9:
            best, best_err = float(t), err
    return best


def evaluate(
    predictor, records: list[VOCRecord], conf: float | None = None, progress: bool = False
) -> DetectionMetrics:
    """Score ``predictor`` on ``records``; counts use ``conf`` (default: the predictor's own)."""
    preds = predict_records(predictor, records, progress=progress)
    return score(preds, records, tuple(predictor.class_names), predictor.conf if conf is None else conf)
