"""torchvision's Faster R-CNN with an FPN over a bloodcell backbone: the seed's two-stage family.

Kept for side-by-side comparison with CellNet; it is not exported to int8 (the TF OD API
could not do that for Faster R-CNN either).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from bloodcell.models.backbones import BACKBONES, create_backbone


@dataclass(frozen=True)
class FasterRCNNConfig:
    backbone: str = "mobilenet_v2"
    num_classes: int = 3
    fpn_channels: int = 128
    min_size: int = 480
    max_size: int = 640


class _BackboneFPN(nn.Module):
    def __init__(self, name: str, channels: int, pretrained: bool, weights: str | None) -> None:
        super().__init__()
        self.body = create_backbone(name, pretrained=pretrained, weights=weights)
        self.fpn = FeaturePyramidNetwork(self.body.channels, channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_fasterrcnn(config: FasterRCNNConfig, pretrained: bool = True, weights: str | None = None) -> FasterRCNN:
    spec = BACKBONES[config.backbone]
    backbone = _BackboneFPN(config.backbone, config.fpn_channels, pretrained, weights)
    # Four maps (strides 8..64): platelets (~39 px) get 32 px anchors on stride 8.
    anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,)), aspect_ratios=((0.75, 1.0, 1.33),) * 4)
    model = FasterRCNN(
        backbone,
        num_classes=config.num_classes + 1,  # + background
        rpn_anchor_generator=anchors,
        min_size=config.min_size,
        max_size=config.max_size,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
        box_detections_per_img=300,
        box_score_thresh=0.001,
    )
    model.config = config
    return model
