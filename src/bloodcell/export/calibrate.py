"""`bloodcell calibrate` for an export: refit its counting on its own scores, into its metadata.

An int8 graph does not score cells exactly as the .pt it came from (quantization shifts scores by a
few hundredths, and red cells sit close to their operating point), so the operating points,
calibration and reference cell size the export inherited are refitted on val with the export
itself. The result goes into the sidecar (``<model>.json``, read first) and the metadata embedded in
the model file, so a file copied alone counts with it too; only operating points change, never the
graph (``runtime.metadata.GRAPH_FIELDS``).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from bloodcell.atomic import write_files
from bloodcell.engine.evaluate import fit_counting, predict_records, score
from bloodcell.engine.metrics import DetectionMetrics
from bloodcell.errors import ConfigError, check_stop
from bloodcell.export.embed import with_metadata
from bloodcell.runtime.counting import parse_nms_iou
from bloodcell.runtime.exported import ExportedPredictor
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.metadata import PER_CLASS_NMS_VERSION, parse_metadata, refit_generation, sidecar_path


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
    fit = fit_counting(preds, val_records, names, meta.input_scale, prior)
    for warning in fit.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = score(preds, val_records, names, fit.conf, fit.calibration)
    raw = dict(meta.raw)
    iou = predictor.post.iou_threshold
    raw.update(
        conf=list(fit.conf),
        calibration=fit.calibration.to_dict(),
        cell_size=fit.cell_size,
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
