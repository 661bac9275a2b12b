"""CellNet: a small anchor-free one-stage detector made for int8 edge export.

Backbone (stride 8/16/32) -> FPN -> one light head per level. The graph holds only
convolutions, batch norms (folded on export), ReLU, nearest upsampling, adds, reshapes
and a concat, so it converts to a full-integer TFLite model. It outputs raw maps:

- ``cls``: (B, A, K) class logits; sigmoid gives an IoU-aware score (trained as in GFL's
  quality focal loss), so one number ranks boxes by class and localization at once.
- ``box``: (B, A, 4) log distances (l, t, r, b) from each point to the box sides, in units
  of the level's stride. Decoding is ``exp(box) * stride`` in numpy
  (``bloodcell.runtime.postprocess``): the exponent keeps every gradient alive, unlike the
  ReLU regression that collapsed to zero-width boxes in an FCOS probe.

A = sum over levels of (H / stride) * (W / stride), points ordered level by level, row-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bloodcell.models.backbones import BACKBONES, create_backbone
from bloodcell.runtime.postprocess import MAX_LOG_DISTANCE


@dataclass(frozen=True)
class CellNetConfig:
    backbone: str = "efficientnet_lite0"
    num_classes: int = 3
    neck_channels: int = 64
    #: Points whose longest side distance max(l,t,r,b) falls in a level's range learn on that level.
    level_ranges: tuple[tuple[float, float], ...] = ((0.0, 64.0), (64.0, 128.0), (128.0, 1e8))
    #: Positive points lie within radius * stride of a box centre (FCOS centre sampling).
    center_radius: float = 2.5


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 laterals, nearest upsampling + add, 3x3 smoothing."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_relu(c, out_channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(out_channels, out_channels) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [lat(f) for lat, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + nn.functional.interpolate(laterals[i + 1], scale_factor=2.0, mode="nearest")
        return [s(x) for s, x in zip(self.smooth, laterals, strict=True)]


class Head(nn.Module):
    """A shared 3x3 stem, then one 3x3 conv + 1x1 output per task (classes, box sides)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = conv_bn_relu(channels, channels)
        self.cls = nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, num_classes, 1))
        self.box = nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, 4, 1))
        prior = 0.01  # RetinaNet's prior: start with few confident points so the loss is stable
        nn.init.constant_(self.cls[-1].bias, -math.log((1 - prior) / prior))
        nn.init.normal_(self.box[-1].weight, std=0.01)
        nn.init.constant_(self.box[-1].bias, 1.0)  # exp(1) * stride: a box a few strides wide

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        return self.cls(x), self.box(x)


class CellNet(nn.Module):
    """Input: (B, 3, H, W) float RGB pixels in 0..255, H and W multiples of 32."""

    def __init__(self, config: CellNetConfig = CellNetConfig(), pretrained: bool = True, weights: str | None = None):
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config.backbone, pretrained=pretrained, weights=weights)
        self.strides = tuple(self.backbone.strides)
        self.neck = FPN(self.backbone.channels, config.neck_channels)
        self.heads = nn.ModuleList(Head(config.neck_channels, config.num_classes) for _ in self.strides)
        spec = BACKBONES[config.backbone]
        # Normalization lives in the graph so exported models take plain pixels (int8-friendly).
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(spec.std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer(
            "shift",
            -torch.tensor(spec.mean).view(1, 3, 1, 1) / torch.tensor(spec.std).view(1, 3, 1, 1),
            persistent=False,
        )

    def level_maps(self, images: torch.Tensor, normalized: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level: class logits (B, K, h, w) and box log distances (B, 4, h, w).
        ``normalized``: ``images`` are already ``pixels * scale + shift`` (int8 exports, see export.graph)."""
        feats = self.neck(self.backbone(images if normalized else images * self.scale + self.shift))
        return [head(f) for head, f in zip(self.heads, feats, strict=True)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.level_maps(images)
        cls = torch.cat([c.flatten(2) for c, _ in maps], 2)  # (B, K, A)
        box = torch.cat([b.flatten(2) for _, b in maps], 2)
        return cls.transpose(1, 2), box.transpose(1, 2)


def make_points(height: int, width: int, strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Point centres (A, 2) in input pixels and their strides (A,), in the model's output order."""
    points, point_strides = [], []
    for s in strides:
        ys = (torch.arange(height // s, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(width // s, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
        point_strides.append(torch.full((xx.numel(),), float(s)))
    return torch.cat(points), torch.cat(point_strides)


def decode_boxes(box: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(.., A, 4) log distances -> (.., A, 4) xyxy pixels (torch twin of the numpy decoder)."""
    d = box.clamp(max=MAX_LOG_DISTANCE).exp() * strides[:, None]
    return torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1)
