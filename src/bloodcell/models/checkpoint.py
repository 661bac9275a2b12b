"""Checkpoint I/O: plain dicts, written atomically, read with ``weights_only=True``.

A model file holds what a user needs to run it: architecture name and settings, class
names, input size, the operating threshold chosen on val, metrics and provenance.
Training checkpoints (last.pt) add optimizer, scheduler, EMA and RNG state for --resume.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bloodcell.atomic import write_bytes
from bloodcell.digest import sha256_of
from bloodcell.errors import ModelError, missing_model
from bloodcell.models.registry import MODELS, build_model, config_dict, model_config
from bloodcell.weights import default_model, shipped_by_name, shipped_info_extra

FORMAT = "bloodcell-model"
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    name: str
    config: dict[str, Any]
    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (width, height) the model runs at
    conf: float | tuple[float, ...] = 0.5  # operating point(s) for counts, one per class, chosen on val
    iou_threshold: float | tuple[float, ...] = 0.5  # NMS IoU, one or one per class
    calibration: dict[str, Any] | None = None  # bloodcell.runtime.counting.Calibration.to_dict()
    cell_size: float | None = None  # median RBC diameter (px) the model was trained at
    #: Images from the training microscope are resized by this before the network (TrainConfig.scale).
    input_scale: float = 1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "class_names": list(self.class_names),
            "input_size": list(self.input_size),
            "conf": list(self.conf) if isinstance(self.conf, tuple | list) else self.conf,
            "iou_threshold": list(self.iou_threshold) if isinstance(self.iou_threshold, tuple) else self.iou_threshold,
            "calibration": self.calibration,
            "cell_size": self.cell_size,
            "input_scale": self.input_scale,
            "metrics": self.metrics,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(
            name=d["name"],
            config=dict(d["config"]),
            class_names=tuple(d["class_names"]),
            input_size=tuple(d["input_size"]),
            conf=_conf(d.get("conf", 0.5)),
            iou_threshold=_nms_iou(d.get("iou_threshold", 0.5), len(d["class_names"])),
            calibration=d.get("calibration"),
            cell_size=None if d.get("cell_size") is None else float(d["cell_size"]),
            input_scale=float(d.get("input_scale", 1.0)),
            metrics=dict(d.get("metrics", {})),
            extra=dict(d.get("extra", {})),
        )


def _nms_iou(value: Any, num_classes: int) -> float | tuple[float, ...]:
    """One NMS IoU threshold or one per class, each in (0, 1]; ValueError naming what is wrong."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    if isinstance(value, list | tuple) and len(values) != num_classes:
        raise ValueError(f"iou_threshold has {len(values)} values for {num_classes} classes (one per class)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < v <= 1.0:
            raise ValueError(f"iou_threshold {v!r}: expected a number in (0, 1]")
    return _conf(value)


def _conf(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, list | tuple):
        return tuple(float(v) for v in value)
    return float(value)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def model_payload(model: nn.Module, info: ModelInfo, half: bool = False) -> dict[str, Any]:
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info.to_dict(), "model": state}


#: What --resume needs from last.pt besides the model file's header, info and weights.
TRAINING_KEYS = ("ema", "optimizer", "scheduler", "scaler", "epoch", "rows", "best_map50", "elapsed_s", "train_config")
#: Later additions, absent from older last.pt files (readers use .get): how many processes trained it, and
#: each split's annotation digests (a resumed run says when its labels changed).
OPTIONAL_TRAINING_KEYS = ("processes", "labels")


def training_payload(model: nn.Module, info: ModelInfo, state: dict[str, Any]) -> dict[str, Any]:
    """last.pt: a model file (``load_model`` reads it) plus the training ``state`` (``TRAINING_KEYS``)."""
    if set(state) - set(OPTIONAL_TRAINING_KEYS) != set(TRAINING_KEYS):
        raise ValueError(f"training state keys {sorted(state)} != {sorted(TRAINING_KEYS)}")
    return {**model_payload(model, info), "kind": "training", **state}


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A last.pt written by ``training_payload`` of this format version; anything else is a clear ModelError."""
    payload = read_checkpoint(path)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        # The training state has no migration: an older or newer layout cannot be resumed safely.
        found = "no format version (an older bloodcell)" if version is None else f"format version {version}"
        raise ModelError(
            f"{path}: training checkpoint has {found}; this bloodcell resumes format version {FORMAT_VERSION} only: "
            f"start a new run (another --out), or fine-tune from it with --model"
        )
    if payload.get("kind") != "training" or any(key not in payload for key in TRAINING_KEYS):
        raise ModelError(f"{path}: a model file, not a training checkpoint (last.pt) that --resume can continue")
    return payload


def read_checkpoint(path: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    path = shipped_by_name(path)
    is_shipped = False  # the shipped file, or a copy of its bytes: the manifest's records are its
    if path.is_file():  # the shipped model is checked however it was named
        with contextlib.suppress(ModelError, OSError):  # no usable shipped model: this file is another one
            shipped, digest = default_model()
            if path.samefile(shipped):
                is_shipped = True
                expected_sha256 = expected_sha256 or digest
            elif path.stat().st_size == shipped.stat().st_size:  # (a hash only where it can be a copy)
                is_shipped = sha256_of(path) == digest
    if not path.is_file():
        raise missing_model(path)
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise ModelError(f"{path}: sha256 {actual[:12]}… does not match the expected {expected_sha256[:12]}…")
    if path.suffix.lower() in (".onnx", ".tflite"):
        kind = {".onnx": "an ONNX", ".tflite": "a TFLite"}[path.suffix.lower()]
        raise ModelError(f"{path}: {kind} export; this needs the .pt model it was exported from")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or its legacy pickle
        raise ModelError(f"{path}: not a bloodcell .pt model file ({_what_it_is(head)})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, pickle refused by weights_only, truncated file, ...
        raise ModelError(f"{path}: {_load_failure(e)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a bloodcell model file (no '{FORMAT}' header)")
    if is_shipped and isinstance(payload.get("info"), dict):  # the manifest's later records (its own win)
        payload["info"]["extra"] = {**shipped_info_extra(), **(payload["info"].get("extra") or {})}
    return payload


def _what_it_is(head: bytes) -> str:
    """What a file that is not a torch file starts like, for the error message."""
    if not head:
        return "the file is empty"
    kinds = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"II*\x00": "a TIFF image"}
    kind = next((name for magic, name in kinds.items() if head.startswith(magic)), None)
    if kind is None and head[4:8] == b"TFL3":
        kind = "a TFLite model"
    return f"it is {kind}" if kind else "not a PyTorch file"


def _load_failure(e: Exception) -> str:
    """One full line on why torch.load failed. Torch's own text for a refused pickle is several
    lines and suggests ``weights_only=False``, which would run whatever code the file holds."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch's ANSI bold
    if "Weights only load failed" in text:
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Please use|Check the documentation|$)", text, re.S)
        detail = " ".join(reason.group(1).split()).rstrip(".") if reason else "unsupported content"
        found = re.match(r"Unsupported global: GLOBAL (\S+)", detail)
        if found:
            return (
                f"refused: the file holds pickled Python objects ({found.group(1)}), not only weights; bloodcell "
                f"never runs code from a model file: use a model written by bloodcell, from a source you trust"
            )
        return f"not a readable bloodcell model (the safe loader stopped at: {detail})"
    return f"not a readable bloodcell model ({torch_load_reason(e)})"


def torch_load_reason(e: Exception) -> str:
    """torch.load's failure in a few words: its first sentence (a cut-off or damaged zip gets torch's
    paragraph about miniz and corrupted checkpoints otherwise), or the exception type for a bare code."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())
    if "PytorchStreamReader" in text:
        detail = text.split(". ")[0].removeprefix("PytorchStreamReader failed ").rstrip(".")
        return f"the file is damaged or cut short: {detail}"
    first = text.split(". ")[0].rstrip(".")
    if not first or first.isdigit():  # the unpickler's bare KeyError on bytes that are no pickle
        return "not a file torch.save wrote"
    return f"{type(e).__name__}: {first}"


def load_model(path: str | Path, expected_sha256: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the architecture from the file's settings and load its weights (eval mode). A training
    checkpoint (last.pt) gives its EMA weights: those are what validation scored and best.pt holds."""
    payload = read_checkpoint(path, expected_sha256)
    try:
        info = ModelInfo.from_dict(payload["info"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{path}: bad model settings: {e}") from None
    if info.name not in MODELS:
        raise ModelError(f"{path}: unknown architecture {info.name!r}")
    model = build_model(info.name, model_config(info.name, info.config), pretrained=False)
    ema = payload.get("ema") if payload.get("kind") == "training" else None
    weights = ema["module"] if isinstance(ema, dict) and isinstance(ema.get("module"), dict) else payload.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelError(f"{path}: bad model file: its settings are there, but no weights (tensors by layer name)")
    state = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not fit architecture {info.name!r}: {str(e)[:200]}") from None
    model.eval()
    return model, info


def make_info(
    name: str, config: Any, class_names: tuple[str, ...], input_size: tuple[int, int], **kw: Any
) -> ModelInfo:
    return ModelInfo(name=name, config=config_dict(config), class_names=tuple(class_names), input_size=input_size, **kw)
