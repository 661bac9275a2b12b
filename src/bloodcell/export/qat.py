"""Quantization-aware training: fine-tune with fake int8 quantization, then convert to TFLite.

Flow (torchao pt2e, which litert-torch converts): fold batch norms -> export the graph with
dynamic batch and image size -> prepare_qat_pt2e with the same quantizer as PTQ -> fine-tune
on training crops with the CellNet loss (on probabilities) -> convert_pt2e -> TFLite int8.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bloodcell.config import Number
from bloodcell.data.dataset import DetectionDataset, collate
from bloodcell.data.sources import load_dataset, resolve_data_root
from bloodcell.data.transforms import make_transforms
from bloodcell.engine.train import seed_epoch, train_one_epoch
from bloodcell.errors import ConfigError
from bloodcell.export.formats import CALIB_IMAGES
from bloodcell.export.graph import ExportGraph
from bloodcell.export.quantize import make_quantizer
from bloodcell.models.cellnet_loss import CellNetLoss
from bloodcell.models.checkpoint import load_model
from bloodcell.models.fold import fold_batch_norms
from bloodcell.models.registry import MODELS
from bloodcell.runtime.loader import unfitted_checkpoint_note

if TYPE_CHECKING:
    from bloodcell.export.exporter import ExportResult


@dataclass
class QATConfig:
    """Settings of ``bloodcell qat`` (each field its flag), checked when made: a Python caller's mistake is
    said before the model loads, as the CLI's is."""

    model: str
    out: str
    data: str | None = None
    epochs: int = 2
    batch: int = 8
    imgsz: int = 384
    lr: float = 1e-4
    seed: int = 0
    max_images: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        self.model, self.out = os.fspath(self.model), os.fspath(self.out)
        if self.data is not None:
            self.data = os.fspath(self.data)
        if Path(self.out).suffix.lower() != ".tflite":  # ".tflite" alone is a hidden file with no suffix
            raise ConfigError(f"--out {self.out}: QAT writes a .tflite file; name it like cellnet_qat.tflite")
        checks = {"epochs": Number(int, 1), "batch": Number(int, 1), "imgsz": Number(int, 1), "seed": Number(int, 0)}
        checks.update(lr=Number(float, 0, low_open=True), max_images=Number(int, 1), threads=Number(int, 1))
        for name, check in checks.items():
            value = getattr(self, name)
            if value is not None and (problem := check.problem(value)):
                raise ConfigError(f"--{name.replace('_', '-')} {value}: {problem}")


class _NHWCModel(nn.Module):
    """The prepared QAT graph (NHWC pixels in, probabilities out) as the engine's NCHW model; train()/eval()
    go through torchao's move_exported_model_to_train/eval (an exported graph refuses the usual ones)."""

    def __init__(self, graph: nn.Module, to_train, to_eval) -> None:
        super().__init__()
        self.graph = graph
        self._to_train, self._to_eval = to_train, to_eval

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.graph(images.permute(0, 2, 3, 1).contiguous())

    def train(self, mode: bool = True) -> _NHWCModel:
        (self._to_train if mode else self._to_eval)(self.graph)
        self.training = mode
        return self


class _FixedTeacher:
    """The fp32 source model in train_one_epoch's teacher slot (an EMA there), never updated."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def update(self, model: nn.Module) -> None:
        pass


MAX_BATCH, SIDE32 = 256, (2, 128)  # the exported graph's dynamic range: batch, and sides in units of 32 px


def qat_finetune(config: QATConfig, progress: bool = True) -> ExportResult:
    """Fine-tune ``config.model`` with fake quantization; write the int8 TFLite file and its metadata."""
    from torch.export import Dim

    from bloodcell.runtime.native_output import captured_output

    with captured_output((1, 2)):  # torchao's and TensorFlow's import-time log lines (export hides them too)
        import litert_torch  # noqa: F401  (the quantizer's; imported here, where its log is caught)
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train, quantize_pt2e

    from bloodcell.export.exporter import check_metadata_path, check_replaceable, export_model
    from bloodcell.models.input_size import check_input_size

    low, high = 32 * SIDE32[0], 32 * SIDE32[1]
    if config.imgsz % 32 or not low <= config.imgsz <= high:
        raise ConfigError(f"--imgsz {config.imgsz}: must be a multiple of 32 from {low} to {high}")
    if config.batch > MAX_BATCH:
        raise ConfigError(f"--batch {config.batch}: at most {MAX_BATCH} (the exported training graph's range)")
    if config.threads:
        torch.set_num_threads(config.threads)
    net, info = load_model(config.model)  # the model's faults before the data's (the data may be slow to read)
    width, height = info.input_size  # the export at the end: said now
    check_input_size((width, height), info.cell_size, f"{config.model}: input {width}x{height}")
    check_replaceable(Path(config.out), check_metadata_path(Path(config.out)))
    if MODELS[info.name].kind != "dense":
        raise ConfigError(f"{config.model}: QAT needs a one-stage model such as cellnet, not {info.name}")
    # A dataset YAML keeps each source's label completeness, as in training (a plain VOC folder: all exhaustive).
    records = load_dataset(resolve_data_root(config.data), split="train").records[: config.max_images]
    if len(records) < config.batch:
        raise ConfigError(f"QAT: {len(records)} training images, fewer than --batch {config.batch}")
    if len(records) < CALIB_IMAGES:  # as export --int8 says of fewer calibration images: its ranges rest on them
        print(
            f"warning: QAT learns its int8 ranges from {len(records)} training images (export --int8 calibrates on "
            f"{CALIB_IMAGES}); check the file's counts before use: `bloodcell val --model {config.out}`",
            file=sys.stderr,
        )
    if note := unfitted_checkpoint_note(Path(config.model), info):  # said before the QAT epochs, not after
        print(f"warning: {note}, then run qat on that", file=sys.stderr)
    folded, _ = fold_batch_norms(net)
    graph = ExportGraph(folded)
    example = torch.zeros(2, config.imgsz, config.imgsz, 3)
    dims = {
        "images": {
            0: Dim("batch", min=1, max=MAX_BATCH),
            1: 32 * Dim("h32", min=SIDE32[0], max=SIDE32[1]),
            2: 32 * Dim("w32", min=SIDE32[0], max=SIDE32[1]),
        }
    }
    exported = torch.export.export(graph, (example,), dynamic_shapes=dims).module()
    quantizer = make_quantizer(is_qat=True)
    quantizer.STATIC_QAT_ONLY_OPS = []  # batch norms are folded already
    model = quantize_pt2e.prepare_qat_pt2e(exported, quantizer)

    transforms = make_transforms("train", config.imgsz, info.input_scale)
    dataset = DetectionDataset(records, transforms, num_classes=len(info.class_names))
    # The source model's own missing-label method: QAT on BCCD's sparse XML with a plain loss would teach
    # the unboxed red cells as background again. Its teacher is the fp32 source model, held fixed.
    trained = info.extra.get("train_config", {})
    missing, tau = trained.get("missing_labels", "plain"), trained.get("missing_tau", 0.3)
    criterion = CellNetLoss(folded.config, folded.strides, probabilities=True, missing=missing, tau=tau)
    teacher = _FixedTeacher(net) if criterion.needs_teacher else None
    print(f"qat: {len(records)} images, missing labels: {missing}" + (f" (teacher score {tau})" if teacher else ""))
    student = _NHWCModel(model, move_exported_model_to_train, move_exported_model_to_eval)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # a constant learning rate
    t0 = time.time()
    for epoch in range(config.epochs):
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch,
            shuffle=True,
            drop_last=True,
            collate_fn=collate,
            generator=seed_epoch(config.seed, epoch),
        )
        stats = train_one_epoch(
            student, criterion, optimizer, scheduler, loader, teacher, torch.device("cpu"), epoch, 10.0,
            progress=progress,
        )  # fmt: skip
        minutes = (time.time() - t0) / 60
        print(f"qat epoch {epoch + 1}/{config.epochs} loss {stats['loss']:.3f} ({minutes:.1f} min)")
    student.eval()
    quantized = quantize_pt2e.convert_pt2e(model, fold_quantize=False)
    qat = {
        "epochs": config.epochs,
        "lr": config.lr,
        "imgsz": config.imgsz,
        "batch": config.batch,
        "seed": config.seed,
        "missing_labels": missing,
        "minutes": round((time.time() - t0) / 60, 1),
    }
    return export_model(
        config.model,
        "tflite",
        Path(config.out),
        int8=True,
        data=config.data,
        qat_state={"graph": quantized, "quantizer": quantizer},
        extra_metadata={"qat": qat},
    )
