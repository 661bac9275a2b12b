"""The network as exported: CellNet with image-layout input and probability outputs.

- Input (1, H, W, 3) RGB pixels 0..255 (channels last, the layout of an image array and of
  TFLite kernels), so neither the runtime nor the graph transposes the image.
- Scores leave the graph as probabilities in [0, 1]: an int8 output then spends its 256 levels
  on the range that matters (raw logits calibrated on a few images clipped confident scores:
  a logit range of [-6.6, 0.9] capped every score at 0.71 in a first int8 trial).
- Each level's maps are moved to channels-last before flattening; in TFLite that is a plain
  reshape, in ONNX a transpose. Point order equals CellNet's (levels, then row-major).
"""

from __future__ import annotations

import torch
from torch import nn


class ExportGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, boxes = [], []
        for c, b in self.model.level_maps(images.permute(0, 3, 1, 2)):
            scores.append(torch.sigmoid(c).permute(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1]))
            boxes.append(b.permute(0, 2, 3, 1).reshape(b.shape[0], -1, 4))
        return torch.cat(scores, 1), torch.cat(boxes, 1)
