"""Decoding CellNet's raw outputs into boxes: points, exp distances, score filter, NMS (numpy only).

The reference decoder: ONNX and TFLite files, and the torch model on the CPU, all end here, so every
format is scored by the same code. Two torch twins keep its rule: ``torch_predictor.decode_on_device``
(a batch on a GPU) and ``models.cellnet.decode_boxes`` (the training loss's boxes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bloodcell import boxes as box_ops
from bloodcell.types import Detections

#: Log distances are clamped here before exp (e^8 strides: far beyond any image), so an untrained or
#: int8-saturated output cannot overflow; the torch twins use the same bound.
MAX_LOG_DISTANCE = 8.0


@dataclass(frozen=True)
class PostprocessConfig:
    min_score: float = 0.001
    iou_threshold: float | tuple[float, ...] = 0.5  # one, or one per class
    pre_nms_topk: int = 1000
    max_detections: int = 300


@lru_cache(maxsize=8)
def make_points(height: int, width: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Point centres (A, 2) and strides (A,), in the order of the model's outputs."""
    points, point_strides = [], []
    for s in strides:
        ys = (np.arange(height // s, dtype=np.float32) + 0.5) * s
        xs = (np.arange(width // s, dtype=np.float32) + 0.5) * s
        xx, yy = np.meshgrid(xs, ys)
        points.append(np.stack([xx.ravel(), yy.ravel()], 1))
        point_strides.append(np.full(xx.size, s, dtype=np.float32))
    return np.concatenate(points), np.concatenate(point_strides)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form


def decode(
    cls_logits: np.ndarray,
    box_logd: np.ndarray,
    input_size: tuple[int, int],
    strides: tuple[int, ...],
    config: PostprocessConfig = PostprocessConfig(),
    probabilities: bool = False,
) -> Detections:
    """One image: cls (A, K) logits (or probabilities) and box (A, 4) log distances -> detections
    on the input canvas. Every (point, class) pair above ``min_score`` is a candidate, as in
    torchvision's FCOS.
    """
    width, height = input_size
    points, point_strides = make_points(height, width, tuple(strides))
    scores = cls_logits.astype(np.float32) if probabilities else sigmoid(cls_logits.astype(np.float32))
    idx, labels = np.nonzero(scores >= config.min_score)
    cand_scores = scores[idx, labels]
    if len(cand_scores) > config.pre_nms_topk:
        top = np.argpartition(-cand_scores, config.pre_nms_topk)[: config.pre_nms_topk]
        idx, labels, cand_scores = idx[top], labels[top], cand_scores[top]
    d = np.exp(np.minimum(box_logd[idx].astype(np.float32), MAX_LOG_DISTANCE)) * point_strides[idx, None]
    p = points[idx]
    boxes = np.concatenate([p - d[:, :2], p + d[:, 2:]], axis=1)
    boxes = box_ops.clip(boxes, width, height)
    keep = box_ops.batched_nms(boxes, cand_scores, labels, config.iou_threshold)[: config.max_detections]
    return Detections(boxes[keep], labels[keep], cand_scores[keep])
