"""Predictor for PyTorch models (CellNet and torchvision detectors), on the CPU or a GPU, batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from bloodcell.errors import ConfigError
from bloodcell.models.checkpoint import ModelInfo
from bloodcell.models.fold import fold_batch_norms
from bloodcell.models.registry import MODELS
from bloodcell.runtime.counting import Calibration
from bloodcell.runtime.postprocess import MAX_LOG_DISTANCE, PostprocessConfig, decode, make_points
from bloodcell.runtime.preprocess import letterbox
from bloodcell.runtime.timing import StageTimes
from bloodcell.types import Detections


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the first GPU when there is one; ``cuda`` without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


@lru_cache(maxsize=8)
def _device_points(height: int, width: int, strides: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_points`` uploaded once per input size and device."""
    points, point_strides = make_points(height, width, strides)
    return torch.from_numpy(points).to(device), torch.from_numpy(point_strides).to(device)


def _batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float | tuple[float, ...],
) -> torch.Tensor:
    """torchvision's batched NMS (one threshold) run once per distinct per-class threshold; kept
    indices best first, as with one threshold."""
    if not isinstance(iou_threshold, tuple | list) or len(set(iou_threshold)) == 1:
        value = iou_threshold[0] if isinstance(iou_threshold, tuple | list) else iou_threshold
        return batched_nms(boxes, scores, groups, float(value))
    parts = []
    for value in sorted(set(iou_threshold)):
        classes = torch.tensor([c for c, t in enumerate(iou_threshold) if t == value], device=labels.device)
        idx = torch.nonzero(torch.isin(labels, classes)).flatten()
        parts.append(idx[batched_nms(boxes[idx], scores[idx], groups[idx], float(value))])
    keep = torch.cat(parts).sort().values  # candidate order, then best first: ties as a single NMS orders them
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def decode_on_device(
    cls_logits: torch.Tensor,
    box_logd: torch.Tensor,
    input_size: tuple[int, int],
    strides: tuple[int, ...],
    config: PostprocessConfig,
) -> list[Detections]:
    """``postprocess.decode`` for a batch, in torch, where the outputs already are: cls (B, A, K),
    box (B, A, 4). Same rule per image (every point-class pair above min_score, at most top-k of
    them, exp distances, per-class NMS, max_detections); the whole batch goes through one top-k, one
    NMS (boxes of different images never suppress each other) and one copy to the host, instead of a
    dozen launches and host syncs per image. The numpy decoder stays the reference that every
    format is scored with."""
    batch, anchors, classes = cls_logits.shape
    width, height = input_size
    points, point_strides = _device_points(height, width, tuple(strides), str(cls_logits.device))
    scores = torch.sigmoid(cls_logits.float()).reshape(batch, anchors * classes)
    cand, flat = scores.topk(min(config.pre_nms_topk, anchors * classes), dim=1)  # per image, best first
    image = torch.arange(batch, device=scores.device)[:, None].expand_as(flat)
    above = cand >= config.min_score
    cand, flat, image = cand[above], flat[above], image[above]
    idx, labels = flat // classes, flat % classes
    d = torch.exp(box_logd[image, idx].float().clamp(max=MAX_LOG_DISTANCE)) * point_strides[idx, None]
    p = points[idx]
    boxes = torch.cat([p - d[:, :2], p + d[:, 2:]], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = _batched_nms(boxes, cand, image * classes + labels, labels, config.iou_threshold)  # best first
    kept = [t[keep].cpu().numpy() for t in (boxes, labels, cand, image)]
    out = []
    for i in range(batch):
        sel = np.flatnonzero(kept[3] == i)[: config.max_detections]
        out.append(Detections(kept[0][sel], kept[1][sel], kept[2][sel]))
    return out


class TorchPredictor:
    """Runs a model on RGB uint8 images; boxes come back in each image's own pixels.

    On the CPU decoding is the shared numpy decoder (identical to the exported formats); on a GPU
    it runs on the device (``decode_on_device``) so a batch does not wait on host copies.
    """

    def __init__(self, model: nn.Module, info: ModelInfo, device: str | torch.device = "cpu") -> None:
        model = model.eval()
        if MODELS[info.name].kind == "dense":
            model = fold_batch_norms(model)[0]  # a copy; the same numbers, ~2x faster on CPU with channels_last
        self.device = resolve_device(str(device))
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.info = info
        self.kind = MODELS[info.name].kind
        self.class_names = info.class_names
        self.input_size = tuple(info.input_size)
        if self.kind != "dense":
            # torchvision's detectors resize every input to their min_size (480); ours is letterboxed to the
            # input size already, at the scale training used (crops were not resized either), so it stays.
            model.transform.min_size, model.transform.max_size = (min(self.input_size),), max(self.input_size)
        self.conf = info.conf
        self.calibration = Calibration.from_dict(info.calibration) if info.calibration else None
        self.cell_size = info.cell_size
        self.input_scale = info.input_scale
        self.post = PostprocessConfig(iou_threshold=info.iou_threshold)
        self.notes: list[str] = []  # what the model file says about itself (print_model_notes)
        # fp16 on a GPU: CellNet was trained with autocast there; the CPU keeps fp32.
        self.half = self.device.type == "cuda"
        self.times = StageTimes()
        self.path: Path | None = None  # the file it was loaded from (load_predictor sets it)

    def describe(self) -> dict:
        """Architecture, format, metrics and name, from the model file's ModelInfo."""
        info = self.info
        return {"name": info.name, "architecture": info.name, "format": "pytorch", "metrics": info.metrics or None}

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        return self.predict_batch([image], min_score)[0]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray], min_score: float = 0.001) -> list[Detections]:
        """One network pass for all ``images`` (each letterboxed to the input size)."""
        if not images:
            return []
        with self.times.stage("letterbox"):
            placed = [letterbox(im, self.input_size) for im in images]
            canvas = torch.from_numpy(np.stack([c for c, _ in placed]))
            if self.device.type == "cuda":
                canvas = canvas.pin_memory().to(self.device, non_blocking=True)
            x = canvas.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        post = replace(self.post, min_score=min_score)
        if self.kind == "dense":
            with self.times.stage("network"), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
                cls, box = self.model(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # the network's time, not the decode's
            strides = tuple(self.model.strides)
            with self.times.stage("decode"):
                if self.device.type == "cpu":
                    cls_np, box_np = cls.float().numpy(), box.float().numpy()
                    dets = [decode(cls_np[i], box_np[i], self.input_size, strides, post) for i in range(len(images))]
                else:
                    dets = decode_on_device(cls, box, self.input_size, strides, post)
        else:
            outs = self.model(list(x / 255.0))
            dets = []
            for out in outs:
                keep = out["scores"] >= min_score
                dets.append(
                    Detections(
                        out["boxes"][keep].cpu().numpy(),
                        out["labels"][keep].cpu().numpy() - 1,
                        out["scores"][keep].cpu().numpy(),
                    )
                )
        return [Detections(lb.to_image(d.boxes), d.labels, d.scores) for d, (_, lb) in zip(dets, placed, strict=True)]
