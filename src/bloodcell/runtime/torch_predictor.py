"""Predictor for PyTorch models (CellNet and torchvision detectors)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from bloodcell.models.checkpoint import ModelInfo
from bloodcell.models.fold import fold_batch_norms
from bloodcell.models.registry import MODELS
from bloodcell.runtime.counting import Calibration
from bloodcell.runtime.postprocess import PostprocessConfig, decode
from bloodcell.runtime.preprocess import letterbox
from bloodcell.types import Detections


class TorchPredictor:
    """Runs a model on RGB uint8 images; boxes come back in each image's own pixels."""

    def __init__(self, model: nn.Module, info: ModelInfo, device: str = "cpu") -> None:
        model = model.eval()
        if MODELS[info.name].kind == "dense":
            model = fold_batch_norms(model)[0]  # a copy; the same numbers, ~2x faster on CPU with channels_last
        self.model = model.to(device, memory_format=torch.channels_last)
        self.info = info
        self.device = device
        self.kind = MODELS[info.name].kind
        self.class_names = info.class_names
        self.input_size = tuple(info.input_size)
        self.conf = info.conf
        self.calibration = Calibration.from_dict(info.calibration) if info.calibration else None
        self.cell_size = info.cell_size
        self.post = PostprocessConfig(iou_threshold=info.iou_threshold)

    def describe(self) -> dict:
        """Architecture, format, metrics and name, from the model file's ModelInfo."""
        info = self.info
        return {"name": info.name, "architecture": info.name, "format": "pytorch", "metrics": info.metrics or None}

    @torch.inference_mode()
    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        canvas, lb = letterbox(image, self.input_size)
        x = torch.from_numpy(np.ascontiguousarray(canvas).copy()).permute(2, 0, 1)[None].float().to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.kind == "dense":
            cls, box = self.model(x)
            dets = decode(
                cls[0].float().cpu().numpy(),
                box[0].float().cpu().numpy(),
                self.input_size,
                tuple(self.model.strides),
                replace(self.post, min_score=min_score),
            )
        else:
            out = self.model(list(x / 255.0))[0]
            keep = out["scores"] >= min_score
            dets = Detections(
                out["boxes"][keep].cpu().numpy(),
                out["labels"][keep].cpu().numpy() - 1,
                out["scores"][keep].cpu().numpy(),
            )
        return Detections(lb.to_image(dets.boxes), dets.labels, dets.scores)
