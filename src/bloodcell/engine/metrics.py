"""Detection metrics with update / compute / reset.

- VOC AP@0.5 with all-point interpolation, per class: the TF Object Detection API's
  PascalBoxes metric that the seed's 86.9% was reported with (hand-written: pycocotools only
  offers the 101-point COCO variant, and this one is 30 lines).
- COCO AP50 and AP50:95 from pycocotools.
- Counting per class at the operating points: mean absolute and mean signed error per image,
  total error in percent, and how often the 90% count interval holds the true count.

Images may label a class incompletely (``exhaustive`` False, e.g. BCCD's red cells): there, as
in LVIS's "not exhaustively annotated" categories, a detection that matches no box is neither
true nor false and is left out of AP (VOC and COCO alike), and the image is left out of that class's
count metrics.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np

from bloodcell import boxes as box_ops
from bloodcell.runtime.counting import Calibration, Conf, above, class_thresholds, count_intervals
from bloodcell.types import Detections


@dataclass
class ClassCurve:
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray


@dataclass
class DetectionMetrics:
    class_names: tuple[str, ...]
    voc_ap50: dict[str, float]
    voc_map50: float
    coco_ap50: float
    coco_ap50_95: float
    count_mae: dict[str, float]
    conf: Conf
    images: int
    count_me: dict[str, float] = field(default_factory=dict)  # mean signed error per image
    count_total_error: dict[str, float] = field(default_factory=dict)  # (sum predicted - sum true) / sum true
    count_coverage: dict[str, float] = field(default_factory=dict)  # share of images whose interval holds the truth
    count_images: dict[str, int] = field(default_factory=dict)  # images with the class exhaustively labelled
    curves: dict[str, ClassCurve] = field(default_factory=dict, repr=False)
    confusion: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "voc_map50": _json_number(self.voc_map50, 4),
            "voc_ap50": {k: _json_number(v, 4) for k, v in self.voc_ap50.items()},
            "coco_ap50": _json_number(self.coco_ap50, 4),
            "coco_ap50_95": _json_number(self.coco_ap50_95, 4),
            "count_mae": {k: _json_number(v, 3) for k, v in self.count_mae.items()},
            "count_me": {k: _json_number(v, 3) for k, v in self.count_me.items()},
            "count_total_error": {k: _json_number(v, 4) for k, v in self.count_total_error.items()},
            "count_coverage": {k: _json_number(v, 3) for k, v in self.count_coverage.items()},
            "count_images": dict(self.count_images),
            "conf": _round_conf(self.conf),
        }

    def __str__(self) -> str:
        thr = class_thresholds(self.conf, len(self.class_names))
        rows = [
            f"{'class':<10} {'AP50(VOC)':>9} {'conf':>5} {'count MAE':>9} {'mean err':>8} {'total':>7} "
            f"{'90% cover':>9} {'images':>6}"
        ]

        def shown(value: float | None, spec: str) -> str:  # "-": no image labels this class exhaustively
            return "-" if value is None or np.isnan(value) else format(value, spec)

        for i, n in enumerate(self.class_names):
            rows.append(
                f"{n:<10} {shown(self.voc_ap50[n], '.4f'):>9} {thr[i]:>5.3f} {shown(self.count_mae[n], '.3f'):>9} "
                f"{shown(self.count_me.get(n), '+.3f'):>8} {shown(self.count_total_error.get(n), '+.1%'):>7} "
                f"{shown(self.count_coverage.get(n), '.0%'):>9} {self.count_images.get(n, self.images):>6}"
            )
        rows.append(
            f"images {self.images}  VOC mAP@0.5 {self.voc_map50:.4f}  COCO AP50 {self.coco_ap50:.4f}  "
            f"AP50:95 {self.coco_ap50_95:.4f}"
        )
        return "\n".join(rows)


def _json_number(value: float, digits: int) -> float | None:
    """Rounded, or None where undefined (NaN: no image labels the class exhaustively): JSON has no NaN,
    and a model file or sidecar holding one breaks strict readers (the web API's model endpoint)."""
    return None if not np.isfinite(value) else round(float(value), digits)


def _round_conf(conf: Conf) -> float | list[float]:
    arr = np.asarray(conf, dtype=np.float64).reshape(-1)
    return round(float(arr[0]), 4) if arr.size == 1 else [round(float(v), 4) for v in arr]


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, all points (VOC2010+ and the TF OD API)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class DetectionEvaluator:
    """Accumulates (prediction, ground truth) pairs image by image."""

    def __init__(
        self,
        class_names: tuple[str, ...],
        conf: Conf = 0.5,
        iou_threshold: float = 0.5,
        calibration: Calibration | None = None,
    ) -> None:
        self.class_names = tuple(class_names)
        self.conf = conf
        self.thresholds = class_thresholds(conf, len(self.class_names))
        self.iou_threshold = iou_threshold
        self.calibration = calibration
        self.reset()

    def reset(self) -> None:
        self.preds: list[Detections] = []
        self.gts: list[Detections] = []
        self.difficult: list[np.ndarray] = []
        self.sizes: list[tuple[int, int]] = []
        self.exhaustive: list[np.ndarray] = []

    def update(
        self,
        pred: Detections,
        gt: Detections,
        size: tuple[int, int],
        difficult: np.ndarray | None = None,
        exhaustive: np.ndarray | None = None,
    ) -> None:
        k = len(self.class_names)
        self.exhaustive.append(np.ones(k, bool) if exhaustive is None else np.asarray(exhaustive, bool).reshape(k))
        self.preds.append(pred)
        self.gts.append(gt)
        self.difficult.append(np.zeros(len(gt), bool) if difficult is None else np.asarray(difficult, bool))
        self.sizes.append(size)

    def compute(self) -> DetectionMetrics:
        aps, curves = {}, {}
        for c, name in enumerate(self.class_names):
            ap, curve = self._voc_class(c)
            aps[name], curves[name] = ap, curve
        coco50, coco = self._coco()
        counting = self._counting()
        return DetectionMetrics(
            class_names=self.class_names,
            voc_ap50=aps,
            voc_map50=float(np.nanmean(list(aps.values()))) if not all(np.isnan(list(aps.values()))) else 0.0,
            coco_ap50=coco50,
            coco_ap50_95=coco,
            conf=self.conf,
            images=len(self.preds),
            curves=curves,
            confusion=self.confusion_matrix(),
            **counting,
        )

    def _counting(self) -> dict[str, dict]:
        out: dict[str, dict] = {key: {} for key in ("count_mae", "count_me", "count_total_error", "count_coverage")}
        out["count_images"] = {}
        counts = [above(p, self.thresholds, len(self.class_names)).counts(self.class_names) for p in self.preds]
        intervals = [
            count_intervals(p, self.class_names, self.calibration, n) for p, n in zip(self.preds, counts, strict=True)
        ]
        for c, name in enumerate(self.class_names):
            pred, true, covered = [], [], []
            for n, g, ex, iv in zip(counts, self.gts, self.exhaustive, intervals, strict=True):
                if not ex[c]:
                    continue
                n_pred = n[name]
                n_true = int((g.labels == c).sum())  # difficult boxes too: hard to find, yet cells to count
                pred.append(n_pred)
                true.append(n_true)
                if iv is not None:
                    covered.append(iv[name][0] <= n_true <= iv[name][1])
            err = np.asarray(pred) - np.asarray(true)
            out["count_images"][name] = len(pred)
            out["count_mae"][name] = float(np.abs(err).mean()) if len(err) else float("nan")
            out["count_me"][name] = float(err.mean()) if len(err) else float("nan")
            out["count_total_error"][name] = float(err.sum() / max(sum(true), 1)) if len(err) else float("nan")
            if covered:
                out["count_coverage"][name] = float(np.mean(covered))
        return out

    def _voc_class(self, c: int) -> tuple[float, ClassCurve]:
        scores, tps = [], []
        n_gt = 0
        for pred, gt, diff, ex in zip(self.preds, self.gts, self.difficult, self.exhaustive, strict=True):
            g = gt.labels == c
            gboxes, gdiff = gt.boxes[g], diff[g]
            n_gt += int((~gdiff).sum())
            p = pred.labels == c
            pboxes, pscores = pred.boxes[p], pred.scores[p]
            order = np.argsort(-pscores, kind="stable")
            pboxes, pscores = pboxes[order], pscores[order]
            matched = np.zeros(len(gboxes), bool)
            ious = box_ops.iou_matrix(pboxes, gboxes) if len(gboxes) else np.zeros((len(pboxes), 0))
            for i in range(len(pboxes)):
                j = int(np.argmax(ious[i])) if ious.shape[1] else -1
                if j >= 0 and ious[i, j] >= self.iou_threshold:
                    if gdiff[j]:
                        continue  # VOC: matches to difficult boxes count neither way
                    tps.append(not matched[j])
                    matched[j] = True
                elif not ex[c]:
                    continue  # may be a cell the labels left out: neither true nor false
                else:
                    tps.append(False)
                scores.append(pscores[i])
        if n_gt == 0:  # undefined, as in the TF OD API: left out of the mean
            return float("nan"), ClassCurve(np.zeros(0), np.zeros(0), np.zeros(0))
        order = np.argsort(-np.asarray(scores), kind="stable")
        tp = np.asarray(tps, dtype=np.float64)[order]
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        recall = ctp / n_gt
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        return voc_ap(recall, precision), ClassCurve(precision, recall, np.asarray(scores)[order])

    def _coco(self) -> tuple[float, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        images, anns, dets = [], [], []
        for i, (pred, gt, diff, (w, h)) in enumerate(
            zip(self.preds, self.gts, self.difficult, self.sizes, strict=True)
        ):
            images.append({"id": i, "width": w, "height": h})
            for b, lab, hard in zip(box_ops.xyxy_to_xywh(gt.boxes), gt.labels, diff, strict=True):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i,
                        "category_id": int(lab) + 1,
                        "bbox": b.tolist(),
                        "area": float(b[2] * b[3]),
                        # pycocotools' one ignore mark: a VOC difficult box is neither missed nor matched
                        "iscrowd": int(hard),
                    }
                )
            for b, lab, s in zip(box_ops.xyxy_to_xywh(pred.boxes), pred.labels, pred.scores, strict=True):
                dets.append({"image_id": i, "category_id": int(lab) + 1, "bbox": b.tolist(), "score": float(s)})
        if not anns or not dets:
            return 0.0, 0.0
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress we don't want
            gt = COCO()
            gt.dataset = {
                "images": images,
                "annotations": anns,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)],
            }
            gt.createIndex()
            dt = gt.loadRes(dets)
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            self._ignore_unlabelled(ev)
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[1]), float(ev.stats[0])

    def _ignore_unlabelled(self, ev) -> None:
        """LVIS's rule in pycocotools, as ``_voc_class`` applies it: in an image that boxes a class
        incompletely, a detection overlapping no box of it (IoU below each threshold) may be an unboxed cell,
        neither true nor false; one overlapping a box that another detection matched stays a false positive."""
        thresholds = ev.params.iouThrs[:, None]
        for e in ev.evalImgs:
            if e is None or self.exhaustive[e["image_id"]][e["category_id"] - 1]:
                continue
            ious = np.asarray(ev.ious[(e["image_id"], e["category_id"])])  # dets (by score, as in e) x boxes
            n = len(e["dtIds"])
            best = ious.max(axis=1)[:n] if ious.size else np.zeros(n)
            e["dtIgnore"] = np.logical_or(e["dtIgnore"], best[None, :] < thresholds)

    def confusion_matrix(self) -> np.ndarray:
        """(K+1) x (K+1) counts at the operating threshold; last row/col is background (missed / false)."""
        k = len(self.class_names)
        m = np.zeros((k + 1, k + 1), dtype=np.int64)  # rows: true class, cols: predicted class
        for pred, gt in zip(self.preds, self.gts, strict=True):
            p = above(pred, self.thresholds, k)
            ious = box_ops.iou_matrix(gt.boxes, p.boxes)
            used = np.zeros(len(p), bool)
            for gi in np.argsort(-ious.max(axis=1) if ious.size else np.zeros(len(gt))):
                j = int(np.argmax(np.where(used, -1, ious[gi]))) if len(p) else -1
                if j >= 0 and ious[gi, j] >= self.iou_threshold and not used[j]:
                    m[gt.labels[gi], p.labels[j]] += 1
                    used[j] = True
                else:
                    m[gt.labels[gi], k] += 1
            for j in np.nonzero(~used)[0]:
                m[k, p.labels[j]] += 1
        return m
