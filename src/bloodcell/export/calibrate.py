"""`bloodcell calibrate`: refit a model's counting on a split; an export's on its own scores, into its metadata.

A .pt model is refitted by ``engine.train.fit_counting_file`` (as a training run ends). An int8 graph does
not score cells exactly as the .pt it came from (quantization shifts scores by a few hundredths, and red cells
sit close to their operating point), so the operating points, calibration and reference cell size the export
inherited are refitted on val with the export itself. The result goes into the sidecar (``<model>.json``, read
first) and the metadata embedded in the model file, so a file copied alone counts with it too; only operating
points change, never the graph (``runtime.metadata.GRAPH_FIELDS``).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.atomic import check_outputs, write_files
from bloodcell.engine.evaluate import fit_counting, predict_records, score
from bloodcell.engine.metrics import DetectionMetrics
from bloodcell.errors import ConfigError, ModelError, check_stop, missing_model
from bloodcell.export.embed import with_metadata
from bloodcell.runtime.counting import parse_nms_iou, per_class
from bloodcell.runtime.exported import ExportedPredictor
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.metadata import PER_CLASS_NMS_VERSION, parse_metadata, refit_generation, sidecar_path
from bloodcell.runtime.timing import check_threads

if TYPE_CHECKING:
    from bloodcell.data.voc import VOCDataset


def calibrate(
    model: str | Path,
    data: str | Path | None = None,
    out: str | Path | None = None,
    split: str = "val",
    nms_iou: str | None = None,
    threads: int | None = None,
    on_read: Callable[[VOCDataset], None] | None = None,
) -> DetectionMetrics:
    """Refit a model's per-class operating points, interval calibration and reference red-cell size on
    ``split`` of ``data`` (a VOC folder or dataset YAML; None: $BLOODCELL_DATA or the cache), as `bloodcell
    calibrate` does. A .pt model's refit is written to ``out`` (required; it may be ``model`` itself); an
    .onnx/.tflite export's goes into the file and its sidecar (``out`` None, or the sidecar's path).
    ``nms_iou``: NMS IoU threshold(s) to store first ("0.45" or "WBC=0.3"). ``on_read``: called with the split
    as read (its findings say which listed images were left out). Returns the split's metrics at the new
    points (in-sample: fitted on these images)."""
    from bloodcell.data.check import findings_note
    from bloodcell.data.sources import load_dataset, resolve_data_root
    from bloodcell.runtime.metadata import MODEL_FORMATS
    from bloodcell.weights import shipped_by_name

    check_threads(threads)
    model, suffix = Path(model), Path(model).suffix.lower()
    flag = "--out"
    if suffix in MODEL_FORMATS:  # an export: its fit goes where the runtime reads it first
        sidecar = sidecar_path(model)
        if out is not None and Path(out).resolve() != sidecar.resolve():
            raise ConfigError(f"--out {out}: an export's fit goes to its sidecar {sidecar} (leave --out out)")
        flag = flag if out is not None else "the fit's sidecar"  # not a flag the user never gave
        out = sidecar
    elif suffix != ".pt":
        raise ConfigError(f"--model {model}: calibrate re-fits a .pt model or an .onnx/.tflite export")
    elif out is None:
        raise ConfigError("--out: name the new .pt model file (it may be --model itself)")
    elif Path(out).suffix.lower() != ".pt":
        raise ConfigError(f"--out {out}: calibrate writes a .pt model file; name it so")
    check_outputs({flag: str(out)})
    if not (found := shipped_by_name(model)).is_file():  # before the data is read and its notes printed
        raise missing_model(found)
    if suffix == ".pt":
        _check_pt(found, Path(out), nms_iou)
    else:  # an export that does not load, or a --nms-iou its classes refuse: before the data's notes too
        meta = load_predictor(found, threads=threads).metadata
        if nms_iou is not None:
            parse_nms_iou(nms_iou, meta.class_names, meta.iou_threshold)
    root = resolve_data_root(data)
    dataset = load_dataset(root, split=split)
    if not dataset.records:
        raise ConfigError(f"{root}: split {split!r} has no usable images")
    if note := findings_note(dataset):
        print(note, file=sys.stderr)
    if on_read is not None:
        on_read(dataset)
    if suffix == ".pt":
        import torch

        from bloodcell.engine.train import fit_counting_file

        if threads:
            torch.set_num_threads(threads)
        return fit_counting_file(model, dataset.records, out=Path(out), nms_iou=nms_iou, split=split)
    fit = fit_export_counting(model, dataset.records, str(root), split, nms_iou, threads)
    print(fit.metrics)
    names, points = fit.metrics.class_names, per_class(fit.metrics.class_names, fit.metrics.conf)
    print(
        f"wrote {fit.sidecar} and the metadata inside {model.name} (operating points {points}; "
        f"NMS IoU {per_class(names, fit.iou_threshold)})"
    )
    return fit.metrics


def _check_pt(model: Path, out: Path, nms_iou: str | None) -> None:
    """A .pt refit's faults, said before the data's notes: not a model file, a bad ``nms_iou``, an ``out``
    that exists and is no model (a model file is replaced, as asked; anything else was not ours to lose)."""
    from bloodcell.models.checkpoint import load_model, read_checkpoint

    if out.is_file() and not out.samefile(model):
        try:
            read_checkpoint(out)
        except ModelError:
            raise ConfigError(
                f"--out {out}: exists and is not a bloodcell model file; it would be overwritten (name a new file)"
            ) from None
    if nms_iou is None:
        read_checkpoint(model)
        return
    info = load_model(model)[1]
    parse_nms_iou(nms_iou, info.class_names, info.iou_threshold)


@dataclass(frozen=True)
class ExportFit:
    """What a refit of an export did: its val metrics (at the new operating points), the sidecar
    written, and the NMS IoU threshold(s) stored (``--nms-iou`` applied)."""

    metrics: DetectionMetrics
    sidecar: Path
    iou_threshold: float | tuple[float, ...]


def fit_export_counting(
    path: Path,
    val_records: list,
    data: str,
    split: str = "val",
    nms_iou: str | None = None,
    threads: int | None = None,
) -> ExportFit:
    """Refit ``path``'s (an .onnx or .tflite export) operating points, score calibration and reference
    red-cell size on ``val_records`` and write them to its sidecar and into the file. ``threads``: the
    runtime's CPU threads (default: every core)."""
    predictor = load_predictor(path, threads=threads)
    if not isinstance(predictor, ExportedPredictor):
        raise ConfigError(f"--model {path}: not an ONNX or TFLite export")
    meta = predictor.metadata
    if nms_iou is not None:
        iou = parse_nms_iou(nms_iou, meta.class_names, meta.iou_threshold)
        predictor.post = replace(predictor.post, iou_threshold=iou)
    names = tuple(meta.class_names)
    preds = predict_records(predictor, val_records)
    prior = None if meta.calibration is None else (meta.conf, meta.calibration)
    fit = fit_counting(preds, val_records, names, meta.input_scale, prior, split)
    for warning in fit.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = score(preds, val_records, names, fit.conf, fit.calibration)
    raw = dict(meta.raw)
    iou = predictor.post.iou_threshold
    raw.update(
        conf=list(fit.conf),
        calibration=fit.calibration.to_dict(),
        cell_size=fit.cell_size if fit.cell_size is not None else meta.cell_size,  # none found on val: kept
        iou_threshold=list(iou) if isinstance(iou, tuple) else iou,
        fitted={
            "data": data,
            "split": split,
            "images": len(val_records),
            "metrics": {split: metrics.to_dict()},
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "generation": refit_generation(meta.raw) + 1,  # a stale copy has a lower one, whatever the clocks say
            # val says when it scores these; inside "fitted", which any refit (an older bloodcell's too) replaces
            "image_ids": sorted({r.image_id for r in val_records}),
        },
    )
    if isinstance(iou, tuple):  # older runtimes read one threshold only: they must refuse this sidecar
        raw["format_version"] = max(int(raw.get("format_version", 1)), PER_CLASS_NMS_VERSION)
    target = sidecar_path(path)
    parse_metadata(raw, str(target))  # never write a sidecar the runtime would refuse
    files = [(target, (json.dumps(raw, indent=2) + "\n").encode())]
    try:
        files.append((path, with_metadata(path, raw)))
    except ModuleNotFoundError as e:  # an .onnx on an install without the onnx package (the lite extra)
        print(
            f"note: {e.name} is not installed, so the refit is in {target} only: copy it with {path.name} "
            f"(pip install 'bloodcell[export]' writes it into the file too)",
            file=sys.stderr,
        )
    # Both complete before either replaces its file; the sidecar first (see exporter.export_model).
    check_stop()
    write_files(files)
    return ExportFit(metrics, target, iou)
