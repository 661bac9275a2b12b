"""Typed settings. Unknown keys are errors, never silently ignored.

Every ``TrainConfig`` field is declared once, with its command-line flag (``Flag`` in the field's
metadata): ``bloodcell train``'s options are generated from ``fields(TrainConfig)``, and the same
ranges and choices are checked again when a TrainConfig is built in Python, before any data is read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from bloodcell.errors import ConfigError

#: How negatives of a class that an image does not label exhaustively are treated:
#: plain       every unmatched point is background (what BCCD's missing RBCs taught the first model);
#: ignore      unmatched points the EMA teacher scores >= tau are left out of the loss;
#: pseudo      ... and those the teacher scores >= 2 * tau learn the teacher's score as a soft target;
#: downweight  every such negative weighs `1 - tau` (background recalibration, no teacher).
MISSING_LABEL_METHODS = ("plain", "ignore", "pseudo", "downweight")

#: The magnifications `--scale` accepts (also what export metadata may record as input_scale).
SCALE_LIMITS = (0.25, 2.0)

# Copies of bloodcell.models.registry.MODELS and bloodcell.data.transforms.PRESETS (tests keep them
# equal): those modules import torch, and a bad choice must fail in milliseconds, before torch loads.
MODEL_NAMES = ("cellnet", "cellnet-mnv2", "fasterrcnn")
AUGMENT_PRESETS = ("train", "train-mild", "train-v1", "light", "none")


@dataclass(frozen=True)
class Number:
    """An int or float setting's range; the CLI turns it into a parse-time ``type=`` validator."""

    cast: type  # int or float
    low: float
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False
    multiple: int = 1  # checked when the config is built (argparse only checks the range)

    def problem(self, value: Any) -> str | None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.cast is int and not isinstance(value, int)) or not math.isfinite(value):
            return f"expected {self.describe()}"
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (above and below):
            return f"expected {self.describe()}"
        if self.multiple > 1 and value % self.multiple:
            return f"expected a multiple of {self.multiple}"
        return None

    def describe(self) -> str:
        what = "an integer" if self.cast is int else "a number"
        if self.high is None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Choice:
    """One of ``names``, or a value matching ``other`` (a regex, shown to the user as ``other_name``)."""

    names: tuple[str, ...]
    other: str | None = None
    other_name: str | None = None

    @property
    def metavar(self) -> str:
        return "{" + ",".join((*self.names, *filter(None, [self.other_name]))) + "}"

    def problem(self, value: Any) -> str | None:
        if value in self.names or (self.other and isinstance(value, str) and re.fullmatch(self.other, value)):
            return None
        return f"choose from {', '.join(self.names)}" + (f" or {self.other_name}" if self.other_name else "")


@dataclass(frozen=True)
class Size:
    """WIDTHxHEIGHT on the command line, a (width, height) tuple in the config."""

    multiple: int = 1

    def problem(self, value: Any) -> str | None:
        if len(value) != 2 or any(Number(int, 1).problem(v) for v in value):
            return "expected two integers >= 1 (WIDTHxHEIGHT)"
        if any(v % self.multiple for v in value):
            return f"width and height must be multiples of {self.multiple}"
        return None


@dataclass(frozen=True)
class Flag:
    """How a TrainConfig field appears as a ``bloodcell train`` option.

    The flag is ``--field-name``; a bool field is a switch (``--name`` if it defaults to False,
    ``--no-name`` if True). The CLI appends "(default ...)" to ``help`` unless the default is None
    (then ``help`` says what happens) or the field is a switch. A field that must not be an option
    says so with ``metadata={"flag": None}``; one with no "flag" key fails the tests.
    """

    help: str
    check: Number | Choice | Size | None = None  # None: free text (paths, split names) or a switch
    metavar: str | None = None


def _option(default: Any, help: str, check: Number | Choice | Size | None = None, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"flag": Flag(help, check, metavar)})


_POSITIVE_INT = Number(int, 1)
_NON_NEGATIVE = Number(float, 0)


@dataclass
class TrainConfig:
    """Every setting of ``bloodcell train``, one field per flag (``data`` is ``--data``, ``input_size``
    ``--input-size``; ``pretrained=False`` is ``--no-pretrained``, whose help each field's metadata holds).
    Values are checked when the config is made (ConfigError naming the flag); unknown keys in
    ``from_dict`` are errors. ``bloodcell.train(TrainConfig(...))`` runs it."""

    model: str = _option(
        "cellnet",
        "architecture to train, or a .pt model file to fine-tune on the same classes",
        Choice(MODEL_NAMES, other=r".+\.pt", other_name="FILE.pt"),
    )
    data: str | None = _option(
        None,
        "VOC dataset folder or dataset YAML (several folders, label completeness); default: $BLOODCELL_DATA or "
        "the cache",
        metavar="PATH",
    )
    train_split: str = _option("train", "split the model learns from: ImageSets/Main/<split>.txt", metavar="SPLIT")
    val_split: str = _option("val", "split that picks the best epoch and fits the counting", metavar="SPLIT")
    epochs: int = _option(60, "training epochs", _POSITIVE_INT)
    batch: int = _option(8, "images per step (under --devices: all processes together)", _POSITIVE_INT)
    scale: float | None = _option(
        None,
        "magnification the model learns and runs at, relative to the training images: 0.75 shrinks them to "
        "3/4, so cells are smaller and images have 0.56x the pixels (the network input, rounded up to "
        "multiples of 32: 480x384 for 640x480); prediction applies the same "
        "factor to images from the training microscope (default: 1, or the fine-tuned model's)",
        Number(float, *SCALE_LIMITS),
    )
    # cells keep their (scaled) size: crops, not resizing to the input
    imgsz: int | None = _option(
        None,
        "side of the square training crops in px (default: 448 x --scale, rounded up to a multiple of 32)",
        Number(int, 1, multiple=32),
    )
    input_size: tuple[int, int] | None = _option(
        None,
        "WIDTHxHEIGHT for validation and inference (default: the 640x480 field at --scale, rounded up to "
        "multiples of 32)",
        Size(multiple=32),
        metavar="WxH",
    )
    lr: float = _option(2e-3, "peak learning rate of AdamW", Number(float, 0, low_open=True))
    weight_decay: float = _option(0.05, "AdamW weight decay, not on norms and biases", _NON_NEGATIVE)
    warmup_epochs: float = _option(2.0, "epochs of linear learning-rate warmup", _NON_NEGATIVE)
    min_lr_ratio: float = _option(
        0.02, "learning rate at the end of the cosine decay, as a fraction of --lr", Number(float, 0, 1)
    )
    ema_decay: float = _option(
        0.999, "decay of the weight average that is validated and saved", Number(float, 0, 1, high_open=True)
    )
    grad_clip: float = _option(10.0, "gradient norm clip", Number(float, 0, low_open=True))
    freeze_bn: bool = _option(
        False,
        "BatchNorm layers that have statistics (a pretrained backbone, a trained model) keep them while "
        "training; new layers learn theirs: for tiny per-process batches (DDP on CPUs, where torch has no "
        "SyncBatchNorm)",
    )
    augment: str = _option("train", "augmentation preset", Choice(AUGMENT_PRESETS))
    missing_labels: str = _option(
        "ignore",
        "how unlabelled cells train where a class is not exhaustive (a source's `exhaustive`, or an image with a box "
        "of an unknown class)",
        Choice(MISSING_LABEL_METHODS),
    )
    missing_tau: float = _option(
        0.3,
        "teacher score threshold of --missing-labels ignore and pseudo (downweight: negatives weigh 1 - tau)",
        Number(float, 0, 1, low_open=True, high_open=True),
    )
    seed: int = _option(0, "seed of every random number generator", Number(int, 0))
    workers: int = _option(0, "data loader processes", Number(int, 0))
    device: str = _option(
        "auto", "where to train; auto: a GPU when there is one", Choice(("auto", "cpu", "cuda"), r"cuda:\d+", "cuda:N")
    )
    threads: int | None = _option(None, "CPU threads for torch (default: torch's choice)", _POSITIVE_INT)
    out: str = _option("runs/train", "run folder, numbered if it exists", metavar="DIR")
    val_every: int = _option(5, "validate every N epochs and the last", _POSITIVE_INT)
    pretrained: bool = _option(True, "start the backbone from random weights instead of ImageNet's")
    weights: str | None = _option(
        None, "backbone weights file instead of the packaged ImageNet weights", metavar="FILE"
    )
    max_images: int | None = _option(None, "train on the first N images only (quick checks)", _POSITIVE_INT)
    resume: bool = _option(
        False,
        "continue the run in --out from its last.pt; only --epochs (more), --device, --workers, --threads and "
        "--val-every may change",
    )

    def __post_init__(self) -> None:
        for name in ("model", "data", "weights", "out"):  # a Path is a file name as the CLI gives it
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.scale is None and not self.model.endswith(".pt"):
            self.scale = 1.0  # a fine-tuned model file brings its own (see with_model_scale)
        if self.input_size is not None:
            self.input_size = tuple(self.input_size)  # type: ignore[assignment]
        for f in fields(self):
            flag, value = f.metadata.get("flag"), getattr(self, f.name)
            if flag is None or flag.check is None or value is None:  # None: an optional setting left unset
                continue
            problem = flag.check.problem(value)
            if problem:
                raise ConfigError(f"{flag_name(f.name)} {show(value)}: {problem}")

        if self.scale is not None:  # None: a fine-tuned model's, filled in by with_model_scale
            if self.imgsz is None:
                self.imgsz = _multiple_of_32(448 * self.scale)
            if self.input_size is None:
                self.input_size = default_input_size(self.scale)

    def refuse_unused(self, given: Collection[str]) -> None:
        """ConfigError for settings given (by name) that this run would not use, so none is silently dropped."""
        given = set(given)
        if self.model.endswith(".pt") and (given & {"weights", "pretrained"}):
            raise ConfigError(
                "--weights / --no-pretrained choose a new model's backbone weights; "
                f"--model {self.model} is fine-tuned from its own"
            )
        if self.weights is not None and not self.pretrained:
            raise ConfigError(f"--no-pretrained (random backbone) and --weights {self.weights} contradict each other")
        if self.model == "fasterrcnn" and given & {"missing_labels", "missing_tau"}:
            raise ConfigError("--missing-labels / --missing-tau shape CellNet's loss; Faster R-CNN trains with its own")
        if "missing_tau" in given and self.missing_labels == "plain":
            raise ConfigError(
                "--missing-tau is the teacher threshold of --missing-labels ignore or pseudo (and downweight's "
                "weight 1 - tau); --missing-labels plain does not use it"
            )

    def with_model_scale(self, scale: float, input_size: tuple[int, int]) -> TrainConfig:
        """Settings left unset taken from a model file being fine-tuned: its scale and input size."""
        if self.scale is not None:
            return self
        return replace(self, scale=scale, input_size=self.input_size or tuple(input_size))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.input_size is not None:
            d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training settings {sorted(unknown)}")
        return cls(**{"scale": 1.0, **d})  # saved before --scale existed: every run was at 1


def default_input_size(scale: float) -> tuple[int, int]:
    """The network input a model trained at ``scale`` gets unless --input-size says: BCCD's 640x480 field at that
    scale, rounded up to multiples of 32 (480x384 at 0.75)."""
    return _multiple_of_32(640 * scale), _multiple_of_32(480 * scale)


def _multiple_of_32(pixels: float) -> int:
    return max(32, 32 * math.ceil(round(pixels, 6) / 32))


def flag_name(name: str) -> str:
    """The ``bloodcell train`` flag of setting ``name``: ``--input-size``, ``--resume``, ``--no-pretrained``."""
    dashed = name.replace("_", "-")
    default = TrainConfig.__dataclass_fields__[name].default
    return f"--no-{dashed}" if default is True else f"--{dashed}"


def show(value: Any) -> str:
    """A setting as it is written on the command line."""
    if isinstance(value, tuple | list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return f"{value:g}" if isinstance(value, float) else str(value)
