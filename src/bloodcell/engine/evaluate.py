"""evaluate(predictor, dataset): one scorer for every model format."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from bloodcell import boxes as box_ops
from bloodcell.data.voc import VOCDataset, VOCRecord
from bloodcell.engine.metrics import DetectionEvaluator, DetectionMetrics
from bloodcell.errors import DatasetError
from bloodcell.runtime.counting import (
    Calibration,
    Conf,
    class_thresholds,
    conformal_min_images,
    fit_interval_width,
    fit_isotonic,
    resolve_conf,
)
from bloodcell.runtime.images import load_image
from bloodcell.runtime.predict import api_cell_size, check_predictor
from bloodcell.runtime.scaling import detect_cells_batch, rbc_sizes
from bloodcell.types import Detections

if TYPE_CHECKING:
    from bloodcell.runtime.predict import Predictor


def predict_records(
    predictor: Predictor,
    records: Iterable[VOCRecord],
    progress: bool = False,
    cell_size: float | str | None = None,
    batch: int = 1,
) -> list[Detections]:
    """Full ranked predictions (min score 0.001) for each record's image, through the same scale
    handling as `bloodcell predict` (``cell_size`` None: the images as they are). ``batch``: images
    per network pass where the predictor batches (torch on a GPU); the results do not depend on it."""
    records = list(records)
    preds: list[Detections] = []
    with tqdm(total=len(records), desc="val", leave=False, disable=not progress) as bar:
        for start in range(0, len(records), batch):
            images = [load_image(r.image_path) for r in records[start : start + batch]]
            preds += [s.detections for s in detect_cells_batch(predictor, images, 0.001, cell_size)]
            bar.update(len(images))
    return preds


def score(
    preds: list[Detections],
    records: list[VOCRecord],
    class_names: tuple[str, ...],
    conf: Conf,
    calibration: Calibration | None = None,
) -> DetectionMetrics:
    ev = DetectionEvaluator(class_names, conf=conf, calibration=calibration)
    for p, r in zip(preds, records, strict=True):
        ev.update(p, r.targets, (r.width, r.height), r.difficult, r.exhaustive_mask(len(class_names)))
    return ev.compute()


def choose_conf(preds: list[Detections], records: list[VOCRecord], num_classes: int) -> tuple[float, ...]:
    """Per class, the score threshold that minimizes the mean absolute count error per image, over
    the images that label that class exhaustively (ties: the smallest total error, then the middle of
    the widest run of equally good thresholds: the most margin for scores that shift a little on
    another microscope or after int8 quantization; on a small val set whole ranges tie, and their lower
    end counts every doubtful candidate). A class no image labels exhaustively keeps 0.5."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 3)
    out = []
    for c in range(num_classes):
        use = [i for i, r in enumerate(records) if r.exhaustive_mask(num_classes)[c]]
        if not use:
            out.append(0.5)
            continue
        gt = np.array([int((records[i].labels == c).sum()) for i in use])
        scores = [preds[i].scores[preds[i].labels == c] for i in use]
        counts = np.array([[int((s >= t).sum()) for s in scores] for t in grid])  # (T, images)
        err = counts - gt
        mae, total = np.round(np.abs(err).mean(axis=1), 9), np.abs(err.sum(axis=1))
        first = np.lexsort((grid, total, mae))[0]
        tied = (mae == mae[first]) & (total == total[first])
        out.append(float(grid[_middle_of_widest_run(tied)]))
    return tuple(out)


def _middle_of_widest_run(flags: np.ndarray) -> int:
    """Index of the middle of the longest run of True in ``flags`` (the lower middle for even runs;
    the first such run on a tie)."""
    best_start, best_len, start = 0, 0, None
    for i, flag in enumerate([*flags.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    return best_start + (best_len - 1) // 2


def fit_calibration(
    preds: list[Detections],
    records: list[VOCRecord],
    class_names: tuple[str, ...],
    floor: float = 0.05,
    iou_threshold: float = 0.5,
) -> Calibration:
    """Isotonic P(real cell | score) per class, from detections >= ``floor`` matched greedily (by
    score) to true boxes at IoU >= ``iou_threshold``, on images labelling that class exhaustively;
    then the split-conformal width factor of the count intervals on the same images."""
    knots = {}
    for c, name in enumerate(class_names):
        scores, hits = [], []
        for p, r in zip(preds, records, strict=True):
            if not r.exhaustive_mask(len(class_names))[c]:
                continue
            keep = (p.labels == c) & (p.scores >= floor)
            pb, ps = p.boxes[keep], p.scores[keep]
            order = np.argsort(-ps, kind="stable")  # the isotonic fit's order on tied scores
            matched = box_ops.match_greedy(pb, ps, r.boxes[r.labels == c], iou_threshold)
            scores += ps[order].tolist()
            hits += (matched[order] >= 0).tolist()
        knots[name] = fit_isotonic(np.asarray(scores), np.asarray(hits, float))
    plain = Calibration(knots, floor=floor)
    width = {}
    for c, name in enumerate(class_names):
        residuals = []
        for p, r in zip(preds, records, strict=True):
            if not r.exhaustive_mask(len(class_names))[c]:
                continue
            mean, lo, hi = plain.plain_interval(name, p.scores[p.labels == c])
            residuals.append((mean, lo, hi, int((r.labels == c).sum())))
        width[name] = round(fit_interval_width(residuals, plain.level), 4)
    return Calibration(knots, floor=floor, width=width)


def evaluate(
    predictor: Predictor,
    records: list[VOCRecord] | VOCDataset,
    conf: Conf | Mapping[str, float] | str | None = None,
    progress: bool = False,
    cell_size: float | str | None = None,
    batch: int = 1,
) -> DetectionMetrics:
    """Score ``predictor`` on ``records`` (or a dataset's: ``load_dataset(...)``); counts use ``conf``
    (one number, one per class, ``{"RBC": 0.4}``; default: the predictor's own). ``cell_size``: None scores
    images at the model's input scale, as training chose it; "auto" as `bloodcell val` does."""
    check_predictor(predictor)
    if isinstance(records, (str, os.PathLike)):
        raise DatasetError(f"records: {records!r} is a path; load it with bloodcell.load_dataset (or use validate)")
    if isinstance(records, VOCDataset):
        records = records.records
    if not records:  # a score of nothing would read as 0.0000, as if the model had found nothing
        raise DatasetError("no image to score (an empty list of records)")
    thresholds = resolve_conf(conf, tuple(predictor.class_names), predictor.conf)
    cell_size = api_cell_size(predictor, cell_size)
    preds = predict_records(predictor, records, progress=progress, cell_size=cell_size, batch=batch)
    calibration = predictor.calibration
    return score(preds, records, tuple(predictor.class_names), thresholds, calibration)


#: Fewer labelled cells of a class on val than this, and its operating point is a guess: said as a warning.
MIN_FIT_CELLS = 20
#: Fewer counted red cells on val than this, and their median size is no reference to rescale images by.
MIN_SIZE_CELLS = 20


@dataclass
class CountingFit:
    conf: tuple[float, ...]
    calibration: Calibration
    cell_size: float | None
    warnings: tuple[str, ...] = ()


def fit_counting(
    preds: list[Detections],
    records: list[VOCRecord],
    class_names: tuple[str, ...],
    input_scale: float = 1.0,
    prior: tuple[Conf, Calibration | None] | None = None,
    split: str = "val",
) -> CountingFit:
    """Everything counting needs, fitted on val: per-class operating points, score calibration
    for the intervals, and the reference red-cell size for rescaling other microscopes' images
    (in network pixels: the val images' cells times the model's ``input_scale``).

    ``prior``: the model's fitted operating points and calibration, which a class that no val image
    labels exhaustively, or whose val images hold none of its cells, keeps (val holds nothing to fit it on;
    0.5 and an uninformed calibration else). ``split``: the records' split, as the warnings name it."""
    k = len(class_names)
    conf = list(choose_conf(preds, records, k))
    calibration = fit_calibration(preds, records, class_names)
    knots, width = dict(calibration.knots), dict(calibration.width)
    earlier = prior[1] if prior is not None else None
    few_images = conformal_min_images(calibration.level)

    warnings = []
    for c, name in enumerate(class_names):
        labelled = [int((r.labels == c).sum()) for r in records if r.exhaustive_mask(k)[c]]  # cells per image
        if not sum(labelled):  # nothing to fit on: with no cell, any point above every false one "counts best"
            why = (
                f"no {split} image labels it exhaustively"
                if not labelled
                else f"{split} holds no {name} cell (in the {len(labelled)} images that box it exhaustively)"
            )
            if _restore_earlier(name, earlier, knots, width):
                old = float(class_thresholds(prior[0], k)[c])
                conf[c] = old
                warnings.append(
                    f"{name}: {why}, so it keeps the model's operating point {old:.2f} and interval calibration "
                    "(fitted before; refit it on images with its cells, each boxed)"
                )
            else:
                conf[c] = 0.5
                if labelled:  # fitted on no hit (every score "no cell"): uninformed, as for a class never boxed
                    knots[name] = fit_isotonic(np.zeros(0), np.zeros(0))
                    width[name] = fit_interval_width([])
                warnings.append(
                    f"{name}: {why}: operating point left at 0.50 and its intervals uninformed; its counts may be "
                    "off (fit it on images with its cells, each boxed)"
                )
        elif sum(labelled) < MIN_FIT_CELLS:
            # a calibration fitted on a handful of cells is a step (every score certain), and its intervals
            # collapse to the count itself ("2 (2-2)"): false certainty; the model's earlier fit, if any, stays
            # (after train --model: the starting model's, fitted on its weights; the closest to a fit there is)
            kept = _restore_earlier(name, earlier, knots, width)
            what = "operating point" if kept else "operating point and intervals"
            where = f"{sum(labelled)} labelled cells in {len(labelled)} {split} images (fewer than {MIN_FIT_CELLS})"
            kept_note = ", its intervals keep the calibration the model had (too few cells to fit one)" if kept else ""
            warnings.append(
                f"{name}: {what} fitted on {where}{kept_note}: its counts may be off; label more {split} images"
            )
        elif len(labelled) < few_images:
            # many cells, too few images: the conformal width has no quantile at the intervals' level to take
            # (see conformal_min_images), so the model's earlier calibration, fitted on more images, stays
            level = f"{calibration.level:.0%}"
            where = (
                f"{name}: {len(labelled)} {split} images box it exhaustively, fewer than the {few_images} that fit a "
                f"{level} interval's width"
            )
            if _restore_earlier(name, earlier, knots, width):
                warnings.append(f"{where}: its intervals keep the calibration the model had; label more {split} images")
            else:
                cover = f"{len(labelled) / (len(labelled) + 1):.0%}"
                warnings.append(f"{where}: its intervals cover about {cover} of new images, not {level}; label more")
    reference, said = _reference_cell_size(preds, conf[0], input_scale, split)
    warnings += [said] if said else []
    fitted = Calibration(knots, floor=calibration.floor, level=calibration.level, width=width)
    return CountingFit(tuple(conf), fitted, reference, tuple(warnings))


def _restore_earlier(name: str, earlier: Calibration | None, knots: dict, width: dict) -> bool:
    """Put the class's interval calibration from the model's earlier fit into ``knots`` and ``width``, where
    there is one; whether there was."""
    if earlier is None or name not in earlier.knots:
        return False
    knots[name] = earlier.knots[name]
    width.pop(name, None)
    if name in earlier.width:
        width[name] = earlier.width[name]
    return True


def _reference_cell_size(
    preds: list[Detections], rbc_conf: float, input_scale: float, split: str = "val"
) -> tuple[float | None, str | None]:
    """The red-cell reference size in network pixels: the median diameter of the counted red cells, measured as
    ``runtime.scaling`` measures new images (None: too few of them, so the model's stays), and a warning when
    some were counted but too few: a median of a few cells would move every later image's scale."""
    sizes = np.concatenate([rbc_sizes(p, rbc_conf) for p in preds]) if preds else np.zeros(0)
    measured = len(sizes)
    if measured < MIN_SIZE_CELLS:
        said = (
            None
            if not measured
            else (
                f"red-cell size: {measured} counted red cells on {split} (fewer than {MIN_SIZE_CELLS}) are too few to "
                "measure it; the model's reference size, if it has one, stays"
            )
        )
        return None, said
    return round(round(float(np.median(sizes)), 1) * input_scale, 1), None
