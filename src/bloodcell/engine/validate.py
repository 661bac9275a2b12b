"""`bloodcell val`: score any model file on a split, print a table, write plots and JSON."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from bloodcell.atomic import write_text
from bloodcell.data.check import findings_note
from bloodcell.data.sources import load_dataset
from bloodcell.data.voc import VOCDataset
from bloodcell.engine.evaluate import evaluate
from bloodcell.engine.metrics import DetectionMetrics
from bloodcell.engine.plots import plot_confusion, plot_pr_curves
from bloodcell.errors import ConfigError, DatasetError
from bloodcell.runtime.counting import Conf, resolve_conf
from bloodcell.runtime.loader import load_predictor, print_model_notes, refuse_overwriting_model
from bloodcell.runtime.metadata import model_ref
from bloodcell.runtime.predict import Predictor
from bloodcell.runtime.scaling import check_cell_size
from bloodcell.weights import model_file

#: The plots ``validate`` writes into ``out``, in this order.
PLOTS = ("pr_curves.png", "confusion_matrix.png")


def validate(
    model: str | Path | Predictor | None,
    data_root: str | Path,
    split: str = "val",
    conf: Conf | Mapping[str, float] | str | None = None,
    out: str | Path | None = None,
    json_path: str | Path | None = None,
    cell_size: float | str | None = "auto",
    device: str = "auto",
    batch: int = 1,
    threads: int | None = None,
    on_read: Callable[[VOCDataset], None] | None = None,
    progress: bool | None = None,
) -> DetectionMetrics:
    """Score a model (a file, a loaded predictor, or None: the shipped one) on a split of a VOC folder or
    dataset YAML. ``conf``: --conf text, one number, one per class or ``{"RBC": 0.4}`` (None: the model's).
    ``device``/``batch``: where a .pt model runs and how many images per pass (results do not depend on them).
    ``on_read``: called with the split as read (its findings say which listed images were left out).
    ``progress``: a progress bar (default: when stderr is a terminal, so none in logs)."""
    loaded = model is None or isinstance(model, (str, os.PathLike))
    if not loaded and (device != "auto" or threads is not None):
        raise ConfigError("device and threads are for a model file; a loaded predictor keeps its own")
    if json_path and loaded:
        refuse_overwriting_model({"--json": str(json_path)}, None if model is None else str(model))
    plots = [Path(out) / name for name in PLOTS] if out else []
    if json_path and any(os.path.realpath(json_path) == os.path.realpath(plot) for plot in plots):
        raise ConfigError(f"--json {json_path}: is where --out puts a plot; name another file")
    predictor = load_predictor(model, device=device, threads=threads, batch=batch) if loaded else model
    # which model scored which data (--json): the file named, or the one a loaded predictor came from
    source = model_file(model) if loaded else getattr(model, "path", None)
    named = {"model": model_ref(Path(source))} if source is not None and Path(source).is_file() else {}
    print_model_notes(predictor)
    check_cell_size(predictor, cell_size)  # named as the CLI's option: --cell-size
    # the CLI's text: its errors name the option
    thresholds = resolve_conf(
        conf, predictor.class_names, predictor.conf, "--conf" if isinstance(conf, str) else "conf"
    )
    dataset = load_dataset(data_root, split=split, class_names=tuple(predictor.class_names))
    if note := findings_note(dataset):
        print(note, file=sys.stderr)
    if note := in_sample_note(predictor, dataset):
        print(note, file=sys.stderr)
    if note := trained_on_note(predictor, data_root, split):
        print(note, file=sys.stderr)
    if on_read is not None:
        on_read(dataset)
    if not dataset.records:  # a score of nothing would print as 0.0000, as if the model had found nothing
        left_out = sum(f.skips_image for f in dataset.findings)
        raise DatasetError(
            f"{data_root}: split {split!r} has no image to score ({left_out} listed images left out; "
            f"`bloodcell data check {shlex.quote(str(data_root))}` says why)"
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
        plot_pr_curves(metrics, plots[0])
        plot_confusion(metrics, plots[1])
    if json_path:
        where = {"data": str(Path(data_root).absolute()), "split": split, "cell_size": cell_size}
        record = {**named, **where, **metrics.to_dict()}
        write_text(json_path, json.dumps(record, indent=2) + "\n")
    return metrics


def in_sample_note(predictor: Predictor, dataset: VOCDataset) -> str | None:
    """A note when the images scored are (by name) those the model's counting was fitted on: its count
    errors and coverage there are in-sample, fitted to them, and say little about other images."""
    fitted = set(fitted_images(predictor))
    overlap = sum(r.image_id in fitted for r in dataset.records)
    if not overlap:
        return None
    return (
        f"note: {overlap} of the {len(dataset.records)} images scored here are named as those the model's operating "
        "points and calibration were fitted on: its count errors and coverage are in-sample (optimistic); "
        "score images it was not fitted on (a test split) to judge it"
    )


def trained_on_note(predictor: Predictor, data: str | Path, split: str) -> str | None:
    """A note when ``split`` of ``data`` is the one the model was trained on (its training run recorded both):
    every score there, mAP too, is in-sample."""
    info = getattr(predictor, "info", None)  # a .pt model's training settings (exports do not carry them)
    config = (info.extra or {}).get("train_config") if info is not None else None
    if not isinstance(config, dict) or config.get("train_split") != split or not isinstance(config.get("data"), str):
        return None
    if os.path.realpath(str(data)) != os.path.realpath(config["data"]):
        return None
    return (
        f"note: split {split!r} of {data} is the one this model was trained on: every score here, mAP too, is "
        "in-sample (optimistic); score a split it did not learn from to judge it"
    )


def fitted_images(predictor: Predictor) -> list[str]:
    """The image ids a model's counting was fitted on, as its file records them: a .pt's fit, an export's
    own refit (``fitted.image_ids``), else the fit it inherited from its .pt (``counting_fit``); none if
    the record is missing or malformed (a hand-edited sidecar)."""
    info, metadata = getattr(predictor, "info", None), getattr(predictor, "metadata", None)
    if info is not None:
        record = (info.extra or {}).get("counting_fit")
    else:
        raw = getattr(metadata, "raw", None) or {}
        refit = raw.get("fitted")
        record = {"images": refit.get("image_ids")} if isinstance(refit, dict) else raw.get("counting_fit")
    images = record.get("images") if isinstance(record, dict) else None
    return [i for i in images if isinstance(i, str)] if isinstance(images, list) else []
