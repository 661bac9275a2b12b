"""Detection metrics with update / compute / reset.

- VOC AP@0.5 with all-point interpolation, per class: the TF Object Detection API's
  PascalBoxes metric that the seed's 86.9% was reported with (hand-written: pycocotools only
  offers the 101-point COCO variant, and this one is 30 lines).
- COCO AP50 and AP50:95 from pycocotools.
- Mean absolute count error per image and class, at the operating threshold.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np

from bloodcell import boxes as box_ops
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
    conf: float
    images: int
    curves: dict[str, ClassCurve] = field(default_factory=dict, repr=False)
    confusion: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "voc_map50": round(self.voc_map50, 4),
            "voc_ap50": {k: None if np.isnan(v) else round(v, 4) for k, v in self.voc_ap50.items()},
            "coco_ap50": round(self.coco_ap50, 4),
            "coco_ap50_95": round(self.coco_ap50_95, 4),
            "count_mae": {k: round(v, 3) for k, v in self.count_mae.items()},
            "conf": self.conf,
        }

    def __str__(self) -> str:
        rows = [f"{'class':<10} {'AP50(VOC)':>9} {'count MAE':>9}"]
        rows += [f"{n:<10} {self.voc_ap50[n]:>9.4f} {self.count_mae[n]:>9.3f}" for n in self.class_names]
        rows.append(f"{'all':<10} {self.voc_map50:>9.4f} {np.mean(list(self.count_mae.values())):>9.3f}")
        rows.append(
            f"images {self.images}  VOC mAP@0.5 {self.voc_map50:.4f}  COCO AP50 {self.coco_ap50:.4f}  "
            f"AP50:95 {self.coco_ap50_95:.4f}  (counts at conf {self.conf:.2f})"
        )
        return "\n".join(rows)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, all points (VOC2010+ and the TF OD API)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class DetectionEvaluator:
    """Accumulates (prediction, ground truth) pairs image by image."""

    def __init__(self, class_names: tuple[str, ...], conf: float = 0.5, iou_threshold: float = 0.5) -> None:
        self.class_names = tuple(class_names)
        self.conf = conf
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self.preds: list[Detections] = []
        self.gts: list[Detections] = []
        self.difficult: list[np.ndarray] = []
        self.sizes: list[tuple[int, int]] = []

    def update(
        self, pred: Detections, gt: Detections, size: tuple[int, int], difficult: np.ndarray | None = None
    ) -> None:
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
        mae = {}
        for c, name in enumerate(self.class_names):
            errs = [
                abs(int((p.labels[p.scores >= self.conf] == c).sum()) - int((g.labels == c).sum()))
                for p, g in zip(self.preds, self.gts, strict=True)
            ]
            mae[name] = float(np.mean(errs)) if errs else 0.0
        return DetectionMetrics(
            class_names=self.class_names,
            voc_ap50=aps,
            voc_map50=float(np.nanmean(list(aps.values()))) if not all(np.isnan(list(aps.values()))) else 0.0,
            coco_ap50=coco50,
            coco_ap50_95=coco,
            count_mae=mae,
            conf=self.conf,
            images=len(self.preds),
            curves=curves,
            confusion=self.confusion_matrix(),
        )

    def _voc_class(self, c: int) -> tuple[float, ClassCurve]:
        scores, tps = [], []
        n_gt = 0
        for pred, gt, diff in zip(self.preds, self.gts, self.difficult, strict=True):
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
        for i, (pred, gt, (w, h)) in enumerate(zip(self.preds, self.gts, self.sizes, strict=True)):
            images.append({"id": i, "width": w, "height": h})
            for b, lab in zip(box_ops.xyxy_to_xywh(gt.boxes), gt.labels, strict=True):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i,
                        "category_id": int(lab) + 1,
                        "bbox": b.tolist(),
                        "area": float(b[2] * b[3]),
                        "iscrowd": 0,
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
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[1]), float(ev.stats[0])

    def confusion_matrix(self) -> np.ndarray:
        """(K+1) x (K+1) counts at the operating threshold; last row/col is background (missed / false)."""
        k = len(self.class_names)
        m = np.zeros((k + 1, k + 1), dtype=np.int64)  # rows: true class, cols: predicted class
        for pred, gt in zip(self.preds, self.gts, strict=True):
            p = pred.above(self.conf)
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
