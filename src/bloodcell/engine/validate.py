"""`bloodcell val`: score any model file on a split, print a table, write plots and JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from bloodcell.atomic import write_text
from bloodcell.data.check import findings_note
from bloodcell.data.sources import load_dataset
from bloodcell.data.voc import VOCDataset
from bloodcell.engine.evaluate import evaluate
from bloodcell.engine.metrics import DetectionMetrics
from bloodcell.engine.plots import plot_confusion, plot_pr_curves
from bloodcell.errors import DatasetError
from bloodcell.runtime.counting import parse_conf
from bloodcell.runtime.loader import load_predictor, print_model_notes


def validate(
    model: str | Path | None,
    data_root: str | Path,
    split: str = "val",
    conf: str | None = None,
    out: str | Path | None = None,
    json_path: str | Path | None = None,
    cell_size: float | str | None = "auto",
    device: str = "auto",
    batch: int = 1,
    threads: int | None = None,
    on_read: Callable[[VOCDataset], None] | None = None,
    progress: bool | None = None,
) -> DetectionMetrics:
    """Score a model file on a split of a VOC folder or dataset YAML. ``conf``: --conf text (None: the model's).
    ``device``/``batch``: where a .pt model runs and how many images per pass (results do not depend on them).
    ``on_read``: called with the split as read (its findings say which listed images were left out).
    ``progress``: a progress bar (default: when stderr is a terminal, so none in logs)."""
    predictor = load_predictor(model, device=device, threads=threads, batch=batch)
    print_model_notes(predictor)
    thresholds = None if conf is None else parse_conf(conf, tuple(predictor.class_names), predictor.conf)
    dataset = load_dataset(data_root, split=split, class_names=tuple(predictor.class_names))
    if note := findings_note(dataset):
        print(note, file=sys.stderr)
    if on_read is not None:
        on_read(dataset)
    if not dataset.records:  # a score of nothing would print as 0.0000, as if the model had found nothing
        left_out = sum(f.skips_image for f in dataset.findings)
        raise DatasetError(
            f"{data_root}: split {split!r} has no image to score ({left_out} listed images left out; "
            f"`bloodcell data check {data_root}` says why)"
        )
    metrics = evaluate(
        predictor,
        dataset.records,
        conf=thresholds,
        progress=sys.stderr.isatty() if progress is None else progress,
        cell_size=cell_size,
        batch=batch,
    )
    if out:
        plot_pr_curves(metrics, Path(out) / "pr_curves.png")
        plot_confusion(metrics, Path(out) / "confusion_matrix.png")
    if json_path:
        write_text(json_path, json.dumps({"split": split, **metrics.to_dict()}, indent=2) + "\n")
    return metrics
