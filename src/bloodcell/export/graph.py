"""The network as exported: CellNet with image-layout input and probability outputs.

- Input (1, H, W, 3) RGB pixels 0..255 (channels last, the layout of an image array and of
  TFLite kernels), so neither the runtime nor the graph transposes the image.
- Scores leave the graph as probabilities in [0, 1]: an int8 output then spends its 256 levels
  on the range that matters (raw logits calibrated on a few images clipped confident scores:
  a logit range of [-6.6, 0.9] capped every score at 0.71 in a first int8 trial).
- Each level's maps are moved to channels-last before flattening; in TFLite that is a plain
  reshape, in ONNX a transpose. Point order equals CellNet's (levels, then row-major).
- ``normalized_input``: the graph takes ``pixels * scale + shift`` instead of pixels. For int8 files:
  that affine map then lives in the input's quantization (the runtime looks bytes up in a 256-entry
  table) instead of a multiply-add over the whole image, which was a fifth of int8 TFLite time
  (benchmarks/profile_ops.py); the stem's padding stays exact (it pads with normalized zero).
"""

from __future__ import annotations

import torch
from torch import nn


class ExportGraph(nn.Module):
    def __init__(self, model: nn.Module, normalized_input: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.normalized_input = normalized_input

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, boxes = [], []
        for c, b in self.model.level_maps(images.permute(0, 3, 1, 2), self.normalized_input):
            scores.append(torch.sigmoid(c).permute(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1]))
            boxes.append(b.permute(0, 2, 3, 1).reshape(b.shape[0], -1, 4))
        return torch.cat(scores, 1), torch.cat(boxes, 1)
