"""`bloodcell val`: score any model file on a split, print a table, write plots and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bloodcell.atomic import write_text
from bloodcell.data.voc import load_voc
from bloodcell.engine.evaluate import evaluate
from bloodcell.engine.metrics import DetectionMetrics
from bloodcell.engine.plots import plot_confusion, plot_pr_curves
from bloodcell.runtime.loader import load_predictor


def validate(
    model: str | Path | None,
    data_root: str | Path,
    split: str = "val",
    conf: float | None = None,
    out: str | Path | None = None,
    json_path: str | Path | None = None,
) -> DetectionMetrics:
    predictor = load_predictor(model)
    dataset = load_voc(data_root, split=split, class_names=tuple(predictor.class_names))
    metrics = evaluate(predictor, dataset.records, conf=conf, progress=True)
    if out:
        plot_pr_curves(metrics, Path(out) / "pr_curves.png")
        plot_confusion(metrics, Path(out) / "confusion_matrix.png")
    if json_path:
        write_text(json_path, json.dumps({"split": split, **metrics.to_dict()}, indent=2) + "\n")
    return metrics
