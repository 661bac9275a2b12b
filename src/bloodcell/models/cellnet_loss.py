"""Training targets and losses for CellNet.

Assignment follows FCOS (centre sampling + per-level size ranges, ties to the smaller box);
classification uses the quality focal loss of GFL with the IoU of the predicted box as
the soft target, and boxes a GIoU loss. torchvision provides the box ops.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss

from bloodcell.config import MISSING_LABEL_METHODS
from bloodcell.models.cellnet import CellNetConfig, decode_boxes, make_points

INF = 1e8


class CellNetLoss(nn.Module):
    def __init__(
        self,
        config: CellNetConfig,
        strides: tuple[int, ...],
        box_weight: float = 2.0,
        probabilities: bool = False,
        missing: str = "plain",
        tau: float = 0.3,
    ) -> None:
        super().__init__()
        if missing not in MISSING_LABEL_METHODS:
            raise ValueError(f"missing-label method {missing!r}: choose from {MISSING_LABEL_METHODS}")
        self.missing = missing
        self.tau = tau
        self.probabilities = probabilities  # cls holds sigmoid outputs (the exported graph, for QAT)
        self.config = config
        self.strides = strides
        self.box_weight = box_weight
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

    def _grid(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (height, width)
        if key not in self._cache:
            points, strides = make_points(height, width, self.strides)
            ranges = torch.cat(
                [
                    torch.tensor(self.config.level_ranges[i]).expand((height // s) * (width // s), 2)
                    for i, s in enumerate(self.strides)
                ]
            )
            self._cache[key] = (points, strides, ranges)
        return tuple(t.to(device) for t in self._cache[key])

    @torch.no_grad()
    def assign(
        self, points: torch.Tensor, strides: torch.Tensor, ranges: torch.Tensor, gt_boxes: torch.Tensor
    ) -> torch.Tensor:
        """Index of the box each point learns from, or -1 for background. Shapes: (A,)."""
        if len(gt_boxes) == 0:
            return torch.full((len(points),), -1, dtype=torch.long, device=points.device)
        x, y = points[:, 0:1], points[:, 1:2]  # (A, 1)
        ltrb = torch.stack(
            [x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=2
        )  # (A, M, 4)
        inside = ltrb.min(dim=2).values > 0
        centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        radius = self.config.center_radius * strides[:, None]
        near = ((x - centres[:, 0]).abs() < radius) & ((y - centres[:, 1]).abs() < radius)
        reach = ltrb.max(dim=2).values
        in_range = (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
        ok = inside & near & in_range
        areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])).expand_as(ok)
        areas = torch.where(ok, areas, torch.full_like(areas, INF))
        best_area, best = areas.min(dim=1)
        return torch.where(best_area < INF, best, torch.full_like(best, -1))

    @property
    def needs_teacher(self) -> bool:
        return self.missing in ("ignore", "pseudo")

    def forward(
        self,
        cls: torch.Tensor,
        box: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
        image_size: tuple[int, int],
        teacher: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """cls (B, A, K) logits, box (B, A, 4); targets: dicts with 'boxes' (M, 4), 'labels' (M,) and
        optionally 'exhaustive' (K,) bool; teacher: (B, A, K) EMA-teacher probabilities (ignore, pseudo)."""
        height, width = image_size
        points, strides, ranges = self._grid(height, width, cls.device)
        pred_boxes = decode_boxes(box.float(), points, strides)

        cls_target = torch.zeros_like(cls, dtype=torch.float32)
        weight = torch.ones_like(cls_target)
        pos_pred, pos_gt = [], []
        for b, t in enumerate(targets):
            matched = self.assign(points, strides, ranges, t["boxes"])
            pos = (matched >= 0).nonzero(as_tuple=True)[0]
            if len(pos) == 0:
                continue
            gt = t["boxes"][matched[pos]]
            with torch.no_grad():
                iou = box_iou(pred_boxes[b, pos], gt).diagonal().clamp(min=0.01)
            cls_target[b, pos, t["labels"][matched[pos]]] = iou
            pos_pred.append(pred_boxes[b, pos])
            pos_gt.append(gt)

        self._missing_labels(cls_target, weight, targets, teacher)
        num_pos = max(_mean_over_ranks(sum(len(p) for p in pos_pred), cls.device), 1.0)
        # Quality focal loss: BCE towards the IoU target, modulated by |target - sigmoid|^2.
        if self.probabilities:
            prob = cls.float().clamp(1e-6, 1 - 1e-6)
            bce = nn.functional.binary_cross_entropy(prob, cls_target, reduction="none")
        else:
            prob = cls.float().sigmoid()
            bce = nn.functional.binary_cross_entropy_with_logits(cls.float(), cls_target, reduction="none")
        loss_cls = (weight * bce * (cls_target - prob).abs().pow(2)).sum() / num_pos
        if pos_pred:
            loss_box = generalized_box_iou_loss(torch.cat(pos_pred), torch.cat(pos_gt), reduction="sum") / num_pos
        else:
            loss_box = box.sum() * 0.0
        return {"cls": loss_cls, "box": self.box_weight * loss_box}

    @torch.no_grad()
    def _missing_labels(
        self, cls_target: torch.Tensor, weight: torch.Tensor, targets: list[dict], teacher: torch.Tensor | None
    ) -> None:
        """Change the negatives of non-exhaustive classes in place, per ``self.missing``."""
        if self.missing == "plain":
            return
        for b, t in enumerate(targets):
            exhaustive = t.get("exhaustive")
            if exhaustive is None or bool(exhaustive.all()):
                continue  # nothing missing here: the teacher is not needed (and not run) for this image
            if self.needs_teacher and teacher is None:
                raise ValueError(f"missing-label method {self.missing!r} needs teacher probabilities")
            partial = ~exhaustive.to(cls_target.device).bool()  # (K,)
            negative = (cls_target[b] == 0) & partial  # (A, K): unmatched points of partially labelled classes
            if self.missing == "downweight":
                weight[b][negative] = 1.0 - self.tau
                continue
            score = teacher[b].float()
            weight[b][negative & (score >= self.tau)] = 0.0
            if self.missing == "pseudo":
                sure = negative & (score >= 2 * self.tau)
                cls_target[b][sure] = score[sure]
                weight[b][sure] = 1.0


def _mean_over_ranks(n: int, device: torch.device) -> float:
    """Positives per process averaged over DDP processes: dividing by it makes the averaged
    gradients those of one process on the global batch (FCOS/YOLO references do the same)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(n)
    t = torch.tensor([float(n)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()
