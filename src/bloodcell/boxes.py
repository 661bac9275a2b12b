"""Box maths on numpy arrays (xyxy, float pixels).

Hand-written because the torch-free runtime and the data layer must not import torch;
torchvision.ops is used wherever torch is already loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, shape (len(a), len(b)); empty or degenerate boxes give 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_greedy(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """One-to-one matching by descending score: each prediction takes the best still-free true box
    if their IoU reaches ``iou_threshold``. Returns, per prediction, the matched truth index or -1.
    (VOC's AP matching differs: a prediction whose best true box is taken is a false positive.)"""
    ious = iou_matrix(pred, truth)
    out = np.full(len(ious), -1, dtype=np.int64)
    if not ious.size:
        return out
    used = np.zeros(ious.shape[1], bool)
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        free = np.where(used, -1.0, ious[i])
        j = int(np.argmax(free))
        if free[j] >= iou_threshold:
            used[j], out[i] = True, j
    return out


def clip(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """xyxy -> top-left xy plus width/height (the COCO layout)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """The inverse of ``xyxy_to_xywh``: COCO boxes (an export, or another tool's labels) read back."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """xyxy -> centre xy plus width/height (the YOLO layout before normalizing)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """The inverse of ``xyxy_to_cxcywh``: YOLO boxes read back."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    half = boxes[:, 2:] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def normalize(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel coordinates -> [0, 1] fractions of the image size."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / np.array([width, height, width, height])


def denormalize(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """The inverse of ``normalize``: [0, 1] fractions -> pixel coordinates."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([width, height, width, height])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float | np.ndarray) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices by descending score.
    ``iou_threshold``: one number, or an array with one per box (a kept box suppresses others above
    its own); per-class thresholds go through ``batched_nms``."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    limits = np.broadcast_to(np.asarray(iou_threshold, dtype=np.float64), (len(boxes),))
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        ious = iou_matrix(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= limits[i]]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float | Sequence[float]
) -> np.ndarray:
    """NMS within each class: offsets boxes per class so classes never suppress each other.
    ``iou_threshold``: one number, or one per class (indexed by label)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes.size == 0:
        return np.zeros((0,), dtype=np.int64)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if _opencv_can_run(boxes, scores):
        return _batched_nms_opencv(boxes, scores, labels, iou_threshold)
    limits = np.asarray(iou_threshold, dtype=np.float64)
    limits = limits[labels] if limits.ndim else limits
    # The span (not just the max, as in torchvision) keeps classes apart when coordinates are negative.
    offset = (boxes.max() - boxes.min() + 1.0) * labels.astype(np.float64)[:, None]
    return nms(boxes + offset, scores, limits)


def _opencv_can_run(boxes: np.ndarray, scores: np.ndarray) -> bool:
    """OpenCV's NMS gives ``nms``'s answer for float32 scores above 0 on boxes of positive area (it ranks
    float32 scores, keeps scores > 0 only, and takes two empty boxes as identical)."""
    if scores.dtype != np.float32 or len(scores) < 2 or not (scores > 0).all():
        return False
    return bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())


def _batched_nms_opencv(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float | Sequence[float]
) -> np.ndarray:
    """``batched_nms`` by cv2.dnn.NMSBoxes per class: the same greedy rule in C++, 2-3x faster than the
    numpy loop on a decoder's ~1000 candidates (the largest cost after the network)."""
    import cv2

    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        limit = float(iou_threshold if np.ndim(iou_threshold) == 0 else iou_threshold[int(c)])  # type: ignore[index]
        found = cv2.dnn.NMSBoxes(xywh[members], scores[members], 0.0, limit)
        kept.append(members[np.asarray(found, dtype=np.int64).reshape(-1)])
    keep = np.sort(np.concatenate(kept))
    return keep[np.argsort(-scores[keep], kind="stable")]  # best first; ties in index order, as ``nms``
