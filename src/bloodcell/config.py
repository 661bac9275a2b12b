"""Typed settings. Unknown keys are errors, never silently ignored."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from bloodcell.errors import ConfigError

#: How negatives of a class that an image does not label exhaustively are treated:
#: plain       every unmatched point is background (what BCCD's missing RBCs taught the first model);
#: ignore      unmatched points the EMA teacher scores >= tau are left out of the loss;
#: pseudo      ... and those the teacher scores >= 2 * tau learn the teacher's score as a soft target;
#: downweight  every such negative weighs `1 - tau` (background recalibration, no teacher).
MISSING_LABEL_METHODS = ("plain", "ignore", "pseudo", "downweight")


@dataclass
class TrainConfig:
    model: str = "cellnet"
    data: str | None = None  # VOC folder or dataset YAML; None: $BLOODCELL_DATA or the cache
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 60
    batch: int = 8
    imgsz: int = 448  # side of the square training crops (cells keep their native scale)
    input_size: tuple[int, int] = (640, 480)  # (width, height) for validation and inference
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.02
    ema_decay: float = 0.999
    grad_clip: float = 10.0
    augment: str = "train"
    missing_labels: str = "ignore"  # how unlabelled cells of non-exhaustive classes train (cellnet_loss)
    missing_tau: float = 0.3
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    out: str = "runs/train"
    val_every: int = 5  # also always validates on the last epoch
    pretrained: bool = True
    weights: str | None = None  # backbone weights file instead of the packaged ImageNet ones
    max_images: int | None = None  # use only the first N training images (smoke tests)
    resume: bool = False

    def __post_init__(self) -> None:
        self.input_size = tuple(self.input_size)  # type: ignore[assignment]
        if self.epochs < 1 or self.batch < 1 or self.val_every < 1:
            raise ConfigError("--epochs, --batch and --val-every must be at least 1")
        if self.lr <= 0 or self.workers < 0:
            raise ConfigError("--lr must be positive and --workers not negative")
        if self.imgsz % 32 or any(s % 32 for s in self.input_size):
            raise ConfigError(f"--imgsz {self.imgsz} and input size {self.input_size} must be multiples of 32")
        if self.missing_labels not in MISSING_LABEL_METHODS:
            raise ConfigError(f"--missing-labels {self.missing_labels!r}: choose from {list(MISSING_LABEL_METHODS)}")
        if not 0.0 < self.missing_tau < 1.0:
            raise ConfigError(f"--missing-tau {self.missing_tau}: expected a value in (0, 1)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device {self.device!r}: use auto, cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training settings {sorted(unknown)}")
        return cls(**d)
