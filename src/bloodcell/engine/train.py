"""Training: plain functions, everything passed in; a run folder that describes itself.

run folder: config.yaml, metrics.csv (a row per epoch), results.png, last.pt (full state
for --resume), best.pt (model file, chosen by val mAP@0.5, with the operating threshold).
Every file is written atomically, so a kill at any moment leaves the last good state.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import random
import re
import shlex
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from bloodcell.atomic import blocked_reason, process_alive, write_text
from bloodcell.config import SCALE_LIMITS, TrainConfig, default_input_size, flag_name, show
from bloodcell.data.check import findings_note, skipped_note
from bloodcell.data.dataset import DetectionDataset, SeededSampler, collate
from bloodcell.data.sources import load_dataset, resolve_data_root
from bloodcell.data.transforms import make_transforms
from bloodcell.data.voc import VOCDataset
from bloodcell.engine.distributed import (
    DistContext,
    barrier,
    broadcast,
    cleanup,
    init_distributed,
    mean_over_ranks,
    unwrap,
    wrap,
)
from bloodcell.engine.ema import ModelEMA
from bloodcell.engine.evaluate import fit_counting, predict_records, score
from bloodcell.engine.metrics import DetectionMetrics
from bloodcell.engine.plots import plot_training
from bloodcell.errors import ConfigError, DatasetError, StopSaid, TrainingError, first_of, is_interrupt
from bloodcell.models.cellnet_loss import CellNetLoss
from bloodcell.models.checkpoint import (
    ModelInfo,
    make_info,
    model_payload,
    read_checkpoint,
    read_training_checkpoint,
    save_checkpoint,
    training_payload,
)
from bloodcell.models.input_size import MAX_INPUT_SIDE, MIN_CELLS_ACROSS, check_input_size
from bloodcell.models.registry import MODELS, build_model, model_config
from bloodcell.runtime.counting import Calibration, Conf
from bloodcell.runtime.timing import available_cores
from bloodcell.runtime.torch_predictor import TorchPredictor, resolve_device
from bloodcell.weights import shipped_by_name

#: Validation images per network pass (the results do not depend on it): batched on a GPU.
VAL_BATCH = {"cuda": 32}
CSV_FIELDS = ["epoch", "time_s", "lr", "loss_cls", "loss_box", "loss", "val_map50", "val_coco_ap50", "val_coco_ap50_95"]


@dataclass
class TrainResult:
    out: Path
    best: Path
    best_map50: float
    metrics: DetectionMetrics | None  # None on DDP ranks other than 0 (rank 0 validates)
    wall_time_s: float
    skipped: tuple[str, ...] = ()  # per split, which listed images were left out (data.check.skipped_note)

    def to_dict(self) -> dict:
        """JSON-ready: paths as strings, the best epoch's val metrics as ``DetectionMetrics.to_dict``."""
        return {
            "out": str(self.out),
            "best": str(self.best),
            "best_map50": self.best_map50,
            "metrics": None if self.metrics is None else self.metrics.to_dict(),
            "wall_time_s": self.wall_time_s,
            "skipped": list(self.skipped),
        }


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed every global RNG from (seed, epoch, rank), so a resumed epoch replays exactly as
    uninterrupted; the generator returned is for loaders without per-sample seeds (QAT).
    Training's augmentations are seeded per sample (``SeededSampler``)."""
    s = seed * 100_003 + epoch + rank * 7_919
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def lr_factor(it: int, total: int, warmup: int, min_ratio: float) -> float:
    if it < warmup:
        return 0.1 + 0.9 * it / max(warmup, 1)
    progress = (it - warmup) / max(total - warmup, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)  # no decay on norms and biases
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def _any_partial(targets: list[dict]) -> bool:
    """Whether some image leaves a class not exhaustively labelled: only then does the loss read the teacher."""
    return any("exhaustive" in t and not bool(t["exhaustive"].all()) for t in targets)


def compute_losses(
    model: nn.Module,
    criterion: nn.Module | None,
    images: torch.Tensor,
    targets: list[dict],
    teacher: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    if criterion is None:  # torchvision detectors compute their own losses
        # Their transform rescales every input to min_size; crops are already at native scale.
        transform = unwrap(model).transform
        saved = transform.min_size, transform.max_size
        transform.min_size, transform.max_size = (min(images.shape[-2:]),), max(images.shape[-2:])
        try:
            losses = model(list(images / 255.0), [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets])
        finally:
            transform.min_size, transform.max_size = saved
        return {
            "cls": losses["loss_classifier"] + losses["loss_objectness"],
            "box": losses["loss_box_reg"] + losses["loss_rpn_box_reg"],
        }
    teacher_probs = None
    if teacher is not None and getattr(criterion, "needs_teacher", False) and _any_partial(targets):
        with torch.no_grad():
            teacher_probs = teacher(images)[0].float().sigmoid()
    cls, box = model(images)
    return criterion(cls, box, targets, tuple(images.shape[-2:]), teacher=teacher_probs)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: torch.utils.data.DataLoader,
    ema: ModelEMA | None,
    device: torch.device,
    epoch: int,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = True,
    frozen_bn: Collection[str] = (),
) -> dict[str, float]:
    """One pass over ``loader``; ``ema`` (None: none) is updated after each step and is the distillation teacher.
    ``frozen_bn``: names (in the unwrapped model) of BatchNorm layers that normalise with, and keep, their
    running statistics (``--freeze-bn``; see ``bn_with_statistics``)."""
    model.train()
    for name, m in unwrap(model).named_modules():
        if name in frozen_bn:
            m.eval()
    totals = {"cls": 0.0, "box": 0.0}
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = compute_losses(model, criterion, images, targets, ema.module if ema else None)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise TrainingError(f"epoch {epoch + 1}: loss is {loss.item()}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(unwrap(model))
        n += 1
        for k in totals:
            totals[k] += float(losses[k].detach())
        bar.set_postfix(loss=f"{(totals['cls'] + totals['box']) / n:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    out = {f"loss_{k}": v / max(n, 1) for k, v in totals.items()}
    out["loss"] = out["loss_cls"] + out["loss_box"]
    out["lr"] = optimizer.param_groups[0]["lr"]
    return out


def _run_dir(config: TrainConfig) -> Path:
    if not str(config.out).strip():
        raise ConfigError("--out: the path is empty; name a run folder")
    out = Path(config.out)
    if out.is_file():
        raise ConfigError(f"--out {out}: is a file, expected a run folder")
    if config.resume:
        return out
    candidate, i = out, 2
    try:
        while not _claim(candidate):  # used, or claimed this instant by a run started beside this one
            candidate, i = out.with_name(f"{_numbering_prefix(out.name)}{i}"), i + 1
    except OSError as e:  # an unwritable place (/proc, a read-only share): named as the option
        raise ConfigError(
            f"--out {out}: cannot make the run folder {candidate} ({blocked_reason(candidate, e)})"
        ) from None
    return candidate


#: What a run folder's config.yaml holds from its claim until the run writes its settings there.
CLAIM = "# claimed by bloodcell train, process {pid}\n"


def _claim(folder: Path) -> bool:
    """Makes ``folder`` (new, or empty) this run's before the data loads: its config.yaml is created
    exclusively, so two runs started together into one --out get two folders, never one between them. A
    claim whose process has ended (a typo in --data, say) leaves the folder free for the next run."""
    if folder.is_file():
        return False
    folder.mkdir(parents=True, exist_ok=True)  # an unwritable place: said now, not after the data
    config = folder / "config.yaml"
    if [entry.name for entry in folder.iterdir()] == [config.name] and _ended_claim(config):
        config.unlink(missing_ok=True)
    if any(folder.iterdir()):
        return False
    try:
        fd = os.open(config, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(CLAIM.format(pid=os.getpid()))
    return True


def _ended_claim(config: Path) -> bool:
    """Whether ``config`` is a claim (nothing else) made by a process that is no longer running."""
    try:
        claimed = re.fullmatch(CLAIM.format(pid=r"(\d+)"), config.read_text())
    except OSError:
        return False
    if claimed is None:
        return False
    return not process_alive(int(claimed[1]))


def _numbering_prefix(name: str) -> str:
    """runs/train -> train2; a name that ends in a digit gets a dash: t1 -> t1-2, never t12 (another run's)."""
    return f"{name}-" if name[-1:].isdigit() else name


def _run_to_resume(config: TrainConfig, explicit: Collection[str] | None) -> Path:
    """--out, or without it the most recent run of the default name (runs/train, runs/train2, ...: a new
    run goes to the next free name, so the one to go on with is the last one written)."""
    if not str(config.out).strip():  # Path("") is the current folder: a run there would be resumed
        raise ConfigError("--out: the path is empty; name the run folder to resume")
    out = Path(config.out)
    if explicit is None or "out" in explicit:
        return out
    numbered = out.parent.glob(f"{glob.escape(_numbering_prefix(out.name))}[0-9]*")
    runs = [p for p in [out, *numbered] if (p / "last.pt").is_file()]
    if not runs:
        return out
    latest = max(runs, key=lambda p: (p / "last.pt").stat().st_mtime)
    if latest != out:
        print(f"resuming {latest}, the most recent run (--out names another)", file=sys.stderr)
    return latest


def _finished(out: Path) -> bool:
    """Whether the run's end (the counting fit into best.pt) was done: a run killed after its last epoch
    but before that may still be resumed to finish it."""
    from bloodcell.models.checkpoint import read_checkpoint

    best = out / "best.pt"
    return best.is_file() and "train_wall_time_s" in read_checkpoint(best).get("info", {}).get("extra", {})


def _write_csv(path: Path, rows: list[dict]) -> None:
    lines = [",".join(CSV_FIELDS)]
    for r in rows:
        lines.append(
            ",".join(
                "" if r.get(f) is None else (f"{r[f]:.6g}" if isinstance(r[f], float) else str(r[f]))
                for f in CSV_FIELDS
            )
        )
    write_text(path, "\n".join(lines) + "\n")


@dataclass
class InitialModel:
    config: TrainConfig  # with the source model's scale and input size filled in when fine-tuning
    arch: str
    model_config: object
    model: nn.Module
    iou_threshold: float | tuple[float, ...] = 0.5  # NMS, kept from the source model when fine-tuning
    #: the source model's operating points and calibration: kept by classes val cannot fit (fine-tuning)
    counting: tuple[Conf, Calibration | None] | None = None


def _split_notes(train: list, val: list, config: TrainConfig, given: set[str]) -> list[str]:
    """What `data check` would say of the two splits that changes what training means (not refused: a
    user may mean it)."""
    notes = []
    shared = sorted({r.image_id for r in train} & {r.image_id for r in val})
    if config.train_split == config.val_split:
        notes.append(
            f"--val-split {config.val_split} is the training split: the best epoch and the counting fit are chosen "
            "on images the model learns from"
        )
    elif shared:
        named = first_of(shared)
        notes.append(
            f"{len(shared)} image{'s are' if len(shared) > 1 else ' is'} in both {config.train_split} and "
            f"{config.val_split} ({named}): the best "
            "epoch and the counting fit are chosen on images the model learns from"
        )
    if given & {"missing_labels", "missing_tau"} and all(r.exhaustive is None or all(r.exhaustive) for r in train):
        notes.append(
            "--missing-labels / --missing-tau have nothing to do: every class is exhaustively labelled in "
            "every training image (a dataset YAML's `exhaustive:` says which classes are not)"
        )
    return notes


def _labelled_cell_size(records: list, class_names: tuple[str, ...], scale: float) -> float | None:
    """Median red-cell diameter (sqrt of box area) of the training labels at the model's scale, as
    ``runtime.scaling`` measures detections; None without labelled red cells."""
    if "RBC" not in class_names:
        return None
    rbc = class_names.index("RBC")
    sides = [r.boxes[r.labels == rbc, 2:] - r.boxes[r.labels == rbc, :2] for r in records]
    diameters = np.sqrt(np.prod(np.concatenate(sides), axis=1)) if sides else np.zeros(0)
    return round(float(np.median(diameters)) * scale, 1) if len(diameters) else None


def _check_input_size(config: TrainConfig, cell_size: float | None, given: bool) -> None:
    """The network input's limits (those export checks), now rather than after the epochs; ``given``: the
    size is --input-size's (else the default at --scale, or the fine-tuned model's own)."""
    width, height = config.input_size
    what = f"--input-size {width}x{height}" if given else f"the input {width}x{height} (--input-size sets another)"
    try:
        check_input_size((width, height), cell_size, what)
    except ConfigError as e:
        if max(width, height) > MAX_INPUT_SIDE:
            raise
        fix = "give a larger --input-size"  # the default input shrinks with --scale as the cells do
        fits = math.floor(20 * config.scale * min(width, height) / (MIN_CELLS_ACROSS * cell_size)) / 20
        if given and fits >= SCALE_LIMITS[0]:  # a fixed input holds more of smaller cells
            fix = f"train at a --scale of {fits:g} or less, or give a larger --input-size"
        raise ConfigError(
            f"{e} (red cells measured on the training labels at --scale {show(config.scale)}; {fix})"
        ) from None


def _input_size_given(config: TrainConfig, explicit: Collection[str] | None) -> bool:
    """Whether the network input is the user's --input-size, not the default at --scale (or, fine-tuning, the
    model's own: unset until the model is read)."""
    if explicit is not None:
        return "input_size" in explicit
    if config.input_size is None:
        return False
    return config.scale is None or tuple(config.input_size) != default_input_size(config.scale)


def given_settings(config: TrainConfig, explicit: Collection[str] | None) -> set[str]:
    """The settings the user gave: ``explicit``, or (None: called from Python) those that differ from
    TrainConfig's defaults; None values are left to the run (a fine-tuned model's scale and sizes)."""
    if explicit is not None:
        return set(explicit)
    default = TrainConfig()
    return {
        f.name
        for f in fields(TrainConfig)
        if getattr(config, f.name) is not None and getattr(config, f.name) != getattr(default, f.name)
    }


def _initial_model(config: TrainConfig, class_names: tuple[str, ...]) -> InitialModel:
    """An architecture name builds a fresh model; a .pt model file is fine-tuned (same classes) at
    its own scale, input size and NMS thresholds unless the config sets them."""
    if config.model.endswith(".pt"):
        from bloodcell.models.checkpoint import load_model

        model, info = load_model(config.model)
        if tuple(info.class_names) != tuple(class_names):
            raise ConfigError(f"{config.model}: classes {info.class_names} differ from the dataset's {class_names}")
        config = config.with_model_scale(info.input_scale, info.input_size)
        fitted = None if info.calibration is None else (info.conf, Calibration.from_dict(info.calibration))
        mcfg = model_config(info.name, info.config)
        return InitialModel(config, info.name, mcfg, model, info.iou_threshold, fitted)
    mcfg = model_config(config.model, {"num_classes": len(class_names)})
    model = build_model(config.model, mcfg, pretrained=config.pretrained, weights=config.weights)
    return InitialModel(config, config.model, mcfg, model)


def bn_with_statistics(model: nn.Module) -> set[str]:
    """The BatchNorm layers that hold statistics (a pretrained backbone, a trained model's every layer):
    what ``--freeze-bn`` freezes. A new layer's are the defaults (mean 0, variance 1): frozen, it would not
    normalise at all and a fresh head's activations blow up, so it learns from its batches."""
    names = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            fresh = int(m.num_batches_tracked) == 0 and bool((m.running_mean == 0).all() and (m.running_var == 1).all())
            if not fresh:
                names.add(name)
    return names


def _stopped_note(out: Path, epochs_done: int, epochs: int) -> str:
    if not epochs_done:
        return f"stopped before its first epoch ended: {out} holds no epoch to resume; start the run again"
    done = "all its epochs, not the final fit" if epochs_done >= epochs else f"epoch {epochs_done} of {epochs}"
    resume = f"bloodcell train --resume --out {shlex.quote(str(out))}"
    return f"stopped: {out / 'last.pt'} holds {done}; `{resume}` goes on from there"


#: Settings a resumed run takes from the command line: how the run goes on, not what it learns.
RESUME_OVERRIDES = ("epochs", "device", "workers", "threads", "val_every")
#: Settings that name files: stored absolute, so a run resumes from any folder; compared as files.
PATH_SETTINGS = ("data", "model", "weights")


def _is_path(name: str, value: object) -> bool:
    return name in PATH_SETTINGS and isinstance(value, str) and (name != "model" or value.endswith(".pt"))


def _same_file(name: str, a: str, b: str) -> bool:
    if name == "model":  # `cellnet_bccd.pt` names the packaged model from any folder
        a, b = str(shipped_by_name(a)), str(shipped_by_name(b))
    return os.path.realpath(a) == os.path.realpath(b)


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its file settings (--data, a --model file, --weights) made absolute (the shipped
    model's bare file name, ``cellnet_bccd.pt``, becomes the packaged file's path; no --data, the dataset
    the environment names)."""
    if _is_path("model", config.model):
        config = replace(config, model=str(shipped_by_name(config.model)))
    # no --data: the folder $BLOODCELL_DATA or the cache names now (a resume must not follow a changed variable)
    config = replace(config, data=str(resolve_data_root(config.data)))
    return replace(
        config, **{n: os.path.abspath(getattr(config, n)) for n in PATH_SETTINGS if _is_path(n, getattr(config, n))}
    )


def resume_config(config: TrainConfig, saved: dict, out: Path, explicit: Collection[str] | None = None) -> TrainConfig:
    """The saved run's settings with the given ones of ``RESUME_OVERRIDES`` applied.

    ``explicit``: the settings the user gave (None: those that differ from TrainConfig's defaults).
    Any other given setting must equal the run's, since it would change the model or its data.
    """
    run = TrainConfig.from_dict({**saved["train_config"], "resume": True, "out": str(out)})
    changes = {}
    for name in sorted(given_settings(config, explicit) - {"out", "resume"}):
        value, before = getattr(config, name), getattr(run, name)
        if value == before or (_is_path(name, value) and _is_path(name, before) and _same_file(name, value, before)):
            continue
        if name not in RESUME_OVERRIDES:
            if isinstance(value, bool):  # an on/off flag: say whether the run had it
                had = "with" if before != TrainConfig.__dataclass_fields__[name].default else "without"
                change = f"{flag_name(name)}: the run was started {had} it, which"
            elif before is None:
                change = f"{flag_name(name)} {show(value)}: the run was started without it, which"
            else:
                change = f"{flag_name(name)} {show(value)} differs from the run's {show(before)} and"
            raise ConfigError(
                f"--resume: {change} would change the model or its data; resume without it, or start a new run "
                "(another --out)"
            )
        changes[name] = value
    done = saved["epoch"] + 1
    if "epochs" in changes and changes["epochs"] <= done:
        raise ConfigError(
            f"--resume --epochs {changes['epochs']}: the run in {out} already trained {done} epochs; "
            f"give more to train on"
        )
    return replace(run, **changes)


def train(config: TrainConfig, progress: bool = True, explicit: Collection[str] | None = None) -> TrainResult:
    """Train ``config.model`` on the train split, pick the best epoch on val, return the run.

    With ``config.resume`` the run in ``config.out`` goes on from its last.pt with its own settings;
    ``explicit`` names the settings the user gave (see ``resume_config``).

    Under torchrun every process runs this; ``config.batch`` is the global batch, shared out."""
    if config.resume:
        out = _run_to_resume(config, explicit)
        if not (out / "last.pt").is_file():
            if (out / "config.yaml").is_file():  # a run stopped before its first epoch ended
                raise ConfigError(f"--resume: {out} holds no finished epoch (no last.pt); start the run again")
            raise ConfigError(f"--resume: {out / 'last.pt'} not found")
        saved = read_training_checkpoint(out / "last.pt")
        config = resume_config(config, saved, out, explicit)
        if saved["epoch"] + 1 >= config.epochs and _finished(out):
            raise ConfigError(
                f"--resume: the run in {out} finished its {config.epochs} epoch{'s' if config.epochs != 1 else ''}; "
                "give --epochs N (more) to train on"
            )
    else:
        config.refuse_unused(given_settings(config, explicit))  # as the CLI does: a Python caller's too
        config = absolute_paths(config)  # the run's config.yaml and last.pt name files so --resume works anywhere
    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = init_distributed(resolve_device(config.device))
    if ctx.distributed and ctx.device.type == "cpu" and not config.threads:
        # torchrun sets OMP_NUM_THREADS=1 for several processes; share this node's cores out instead.
        torch.set_num_threads(max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))))
    try:
        return _train(config, ctx, progress, saved if config.resume else None, explicit)
    finally:
        cleanup(ctx)


@dataclass
class _Loop:
    """What the epoch loop carries from one epoch to the next: the (wrapped) model, its weight average,
    the optimiser's state and the run's history so far (restored from last.pt on --resume)."""

    model: nn.Module
    criterion: CellNetLoss | None  # None: torchvision detectors compute their own losses
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    sampler: SeededSampler
    loader: torch.utils.data.DataLoader
    frozen_bn: set[str]
    start_epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    best_map: float = -1.0
    elapsed: float = 0.0
    saved_epochs: int = 0  # the epochs last.pt holds (a stop's note says it)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # split -> image id -> its annotation's digest


def _data_loader(
    records: list, config: TrainConfig, ctx: DistContext, num_classes: int
) -> tuple[SeededSampler, torch.utils.data.DataLoader]:
    dataset = DetectionDataset(records, make_transforms(config.augment, config.imgsz, config.scale), num_classes)
    if config.workers:
        dataset.preload()  # forked workers share the decoded images instead of decoding them every epoch
    # The same sampler for one process or many: each global batch holds the same images either way;
    # each sample carries its augmentation seed, so workers can live across epochs.
    sampler = SeededSampler(
        torch.utils.data.DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed,
                                            drop_last=True), config.seed
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch // ctx.world_size, sampler=sampler, drop_last=True, collate_fn=collate,
        num_workers=config.workers, persistent_workers=config.workers > 0, pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),  # workers' base seed: not from the global RNG
    )  # fmt: skip
    return sampler, loader


def labels_digest(records: list) -> dict[str, str]:
    """Each image's annotation file, by a digest of its bytes: what a resumed run compares its data with."""
    digests = {}
    for record in records:
        try:
            digests[record.image_id] = hashlib.sha256(record.annotation_path.read_bytes()).hexdigest()[:16]
        except OSError:
            digests[record.image_id] = ""
    return digests


def labels_changed_note(before: dict | None, now: dict[str, dict[str, str]]) -> str | None:
    """What changed in the labels since last.pt was written (images added, removed, annotations edited), per split;
    None when nothing did, or the run's last.pt predates the record."""
    if not isinstance(before, dict):
        return None
    changes = []
    for split, digests in now.items():
        old = before.get(split) or {}
        added, removed = len(digests.keys() - old.keys()), len(old.keys() - digests.keys())
        edited = sum(1 for i in digests.keys() & old.keys() if digests[i] != old[i])
        parts = [f"{n} {what}" for n, what in ((added, "added"), (removed, "removed"), (edited, "edited")) if n]
        if parts:
            changes.append(f"{split}: {', '.join(parts)}")
    if not changes:
        return None
    return (
        f"the labels changed since last.pt was written ({'; '.join(changes)} images): the run goes on with them as "
        "they are now, so its epochs learnt from two sets of labels (start a new run to train on one)"
    )


def _restore(loop: _Loop, saved: dict, config: TrainConfig, total: int, warmup: int) -> None:
    """Put last.pt's optimiser, schedule, loss scale and history into ``loop`` (the weights are loaded)."""
    loop.optimizer.load_state_dict(saved["optimizer"])
    loop.scheduler.load_state_dict(saved["scheduler"])  # keeps this run's lambda: the schedule over config.epochs
    if config.epochs != saved["train_config"]["epochs"]:  # more epochs: the rest follows the longer schedule
        for group, base_lr in zip(loop.optimizer.param_groups, loop.scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * lr_factor(loop.scheduler.last_epoch, total, warmup, config.min_lr_ratio)
    if loop.scaler is not None and saved.get("scaler"):
        loop.scaler.load_state_dict(saved["scaler"])
    loop.start_epoch, loop.rows, loop.best_map = saved["epoch"] + 1, list(saved["rows"]), saved["best_map50"]
    loop.elapsed = saved["elapsed_s"]
    loop.saved_epochs = loop.start_epoch


def _train(
    config: TrainConfig, ctx: DistContext, progress: bool, saved: dict | None, explicit: Collection[str] | None
) -> TrainResult:
    device, main = ctx.device, ctx.is_main
    progress = progress and main
    log = print if main else (lambda *a, **k: None)
    if config.batch % ctx.world_size:
        raise ConfigError(f"--batch {config.batch} (global) must be a multiple of the {ctx.world_size} processes")
    if saved is None and Path(config.model).suffix.lower() == ".pt":  # a missing or wrong --model file: said
        arch = read_checkpoint(config.model)["info"].get("name")  # now, before the data's findings are printed
        loss_flags = given_settings(config, explicit) & {"missing_labels", "missing_tau"}
        if arch in MODELS and MODELS[arch].kind != "dense" and loss_flags:  # as refuse_unused does for fasterrcnn
            raise ConfigError(
                f"--missing-labels / --missing-tau shape CellNet's loss; {config.model} is a {arch} model, "
                "which trains with its own"
            )
    out = Path(config.out) if config.resume else broadcast(_run_dir(config) if main else None, ctx)
    root = resolve_data_root(config.data)
    train_set = load_dataset(root, config.train_split)
    val_set = load_dataset(root, config.val_split)
    for dataset, outcome in ((train_set, "training goes on with"), (val_set, "validation and the counting fit use")):
        if note := findings_note(dataset):
            log(note, file=sys.stderr)
        if note := skipped_note(dataset, "warning", outcome):  # now, not only after the epochs
            log(note, file=sys.stderr)
    records = train_set.records[: config.max_images] if config.max_images else train_set.records
    for note in _split_notes(train_set.records, val_set.records, config, given_settings(config, explicit)):
        log(f"warning: {note}", file=sys.stderr)
    if len(records) < config.batch:
        fits = len(records) // ctx.world_size * ctx.world_size  # a batch every process gets a share of
        cut = f" (--max-images {config.max_images} of {len(train_set.records)})" if config.max_images else ""
        skipped = next((f for f in train_set.findings if f.skips_image), None)
        why = f"; the first left out: {skipped.file}: {skipped.detail}" if skipped and not records else ""
        raise DatasetError(
            f"{root}: split {config.train_split!r} gives {len(records)} usable images{cut}, fewer than --batch "
            f"{config.batch}" + (f"; train with --batch {fits} or label more images" if fits else why)
        )
    if not val_set.records:  # nothing to pick the best epoch on or fit the counting to
        raise DatasetError(f"{root}: split {config.val_split!r} has no usable images (--val-split)")
    class_names = train_set.class_names

    torch.manual_seed(config.seed)
    sized = _input_size_given(config, explicit)  # (before a fine-tuned model's own is filled in)
    initial = _initial_model(config, class_names)
    config, arch, mcfg, model = initial.config, initial.arch, initial.model_config, initial.model
    if saved is None:  # a resumed run's settings are its own, checked when it started
        _check_input_size(config, _labelled_cell_size(records, class_names, config.scale), sized)
    partial = sum(r.exhaustive is not None and not all(r.exhaustive) for r in records)
    if partial and MODELS[arch].kind != "dense":  # nothing to refuse: the user may mean it, but must know
        log(
            f"warning: {partial} of {len(records)} training images box some class incompletely (a dataset YAML's "
            f"`exhaustive:`, or boxes of unknown classes); {arch} trains with torchvision's own loss, which takes "
            "every unboxed place as background (--missing-labels is CellNet's)",
            file=sys.stderr,
        )
    frozen_bn = bn_with_statistics(model) if config.freeze_bn else set()  # decided on the initial model, as resumed
    if config.freeze_bn:  # what --freeze-bn does to this model, never silently nothing
        layers = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        log(
            f"--freeze-bn: {len(frozen_bn)} of {layers} batch-norm layers keep their statistics; the other "
            f"{layers - len(frozen_bn)} are new (no pretrained or trained statistics) and learn theirs",
            file=sys.stderr,
        )
    if saved is not None:
        model.load_state_dict(saved["model"])
    model = model.to(device)
    criterion = None
    if MODELS[arch].kind == "dense":
        criterion = CellNetLoss(mcfg, model.strides, missing=config.missing_labels, tau=config.missing_tau)
    sampler, loader = _data_loader(records, config, ctx, len(class_names))
    ema = ModelEMA(model, config.ema_decay)  # plain BatchNorm, before DDP's SyncBatchNorm
    if saved is not None:
        ema.load_state_dict(saved["ema"])
    model = wrap(model, ctx)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    iters_per_epoch = len(sampler) // (config.batch // ctx.world_size)
    total, warmup = iters_per_epoch * config.epochs, int(iters_per_epoch * config.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup, config.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    loop = _Loop(model, criterion, ema, optimizer, scheduler, scaler, sampler, loader, frozen_bn)
    loop.labels = {"train": labels_digest(records), "val": labels_digest(val_set.records)}
    if saved is not None:
        if note := labels_changed_note(saved.get("labels"), loop.labels):
            log(f"warning: {note}", file=sys.stderr)
        _restore(loop, saved, config, total, warmup)
        log(f"resuming {out} after epoch {loop.start_epoch}")
        before = saved.get("processes")  # None: a last.pt from before this was recorded
        if before is not None and before != ctx.world_size:  # allowed (the same global batch), not silent
            log(
                f"note: the run was trained by {before} process(es) and goes on with {ctx.world_size} (same global "
                "batch; without SyncBatchNorm, batch-norm statistics come from each process's share)"
            )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))  # with any new settings
    where = f"{ctx.world_size} processes ({device.type}), global batch {config.batch}" if ctx.distributed else device
    log(f"training {config.model} on {len(records)} images ({root}), {config.epochs} epochs, {where}, run folder {out}")

    def model_info(conf: float = 0.5, metrics: dict | None = None) -> ModelInfo:
        extra = {"train_config": config.to_dict()}
        return make_info(
            arch, mcfg, class_names, config.input_size, conf=conf, metrics=metrics or {}, extra=extra,
            input_scale=config.scale, iou_threshold=initial.iou_threshold,
        )  # fmt: skip

    try:
        for epoch in range(loop.start_epoch, config.epochs):
            _train_epoch(loop, epoch, config, ctx, out, val_set, model_info, progress)
        if not main:
            return TrainResult(out, out / "best.pt", loop.best_map, None, loop.elapsed)
        extra = {"train_wall_time_s": round(loop.elapsed, 1)}
        metrics = fit_counting_file(
            out / "best.pt", val_set.records, extra=extra, prior=initial.counting, split=config.val_split
        )
        skipped = tuple(note for d in (train_set, val_set) if (note := skipped_note(d)))
        return TrainResult(out, out / "best.pt", metrics.voc_map50, metrics, loop.elapsed, skipped)
    except BaseException as e:  # Ctrl-C (or SIGTERM, which the CLI turns into it): say what is kept
        if not is_interrupt(e):
            raise
        if main:
            print(_stopped_note(out, loop.saved_epochs, config.epochs), file=sys.stderr, flush=True)
            raise StopSaid from None
        raise


def _train_epoch(
    loop: _Loop,
    epoch: int,
    config: TrainConfig,
    ctx: DistContext,
    out: Path,
    val_set: VOCDataset,
    model_info: Callable[..., ModelInfo],
    progress: bool,
) -> None:
    """Train one epoch; rank 0 validates (every --val-every and the last), keeps best.pt and writes
    last.pt, metrics.csv and the plot."""
    t0 = time.time()
    seed_epoch(config.seed, epoch, ctx.rank)
    loop.sampler.set_epoch(epoch)
    losses = train_one_epoch(
        loop.model, loop.criterion, loop.optimizer, loop.scheduler, loop.loader, loop.ema, ctx.device, epoch,
        config.grad_clip, loop.scaler, progress, loop.frozen_bn,
    )  # fmt: skip
    row = {"epoch": epoch + 1, **{k: mean_over_ranks(v, ctx) for k, v in losses.items()}}
    if not ctx.is_main:  # rank 0 validates and writes; the others wait for it
        barrier(ctx)
        return
    if epoch + 1 == config.epochs or (epoch + 1) % config.val_every == 0:
        predictor = TorchPredictor(loop.ema.module, model_info(), device=str(ctx.device))
        preds = predict_records(predictor, val_set.records, progress, batch=VAL_BATCH.get(ctx.device.type, 1))
        metrics = score(preds, val_set.records, val_set.class_names, 0.5)
        row.update(val_map50=metrics.voc_map50, val_coco_ap50=metrics.coco_ap50, val_coco_ap50_95=metrics.coco_ap50_95)
        if metrics.voc_map50 > loop.best_map:
            loop.best_map = metrics.voc_map50
            save_checkpoint(out / "best.pt", model_payload(loop.ema.module, model_info(metrics=metrics.to_dict())))
    loop.elapsed += time.time() - t0
    row["time_s"] = round(loop.elapsed, 1)
    loop.rows.append(row)
    _write_csv(out / "metrics.csv", loop.rows)
    save_checkpoint(out / "last.pt", training_payload(unwrap(loop.model), model_info(), {
        "ema": loop.ema.state_dict(), "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(), "epoch": epoch, "rows": loop.rows, "best_map50": loop.best_map,
        "elapsed_s": loop.elapsed, "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
        "processes": ctx.world_size, "train_config": config.to_dict(), "labels": loop.labels,
    }))  # fmt: skip
    loop.saved_epochs = epoch + 1
    summary = f"epoch {epoch + 1}/{config.epochs} loss {row['loss']:.3f} ({loop.elapsed / 60:.1f} min)"
    if "val_map50" in row:
        summary += f" val mAP@0.5 {row['val_map50']:.4f} (best {loop.best_map:.4f})"
    print(summary, flush=True)
    plot_training(loop.rows, out / "results.png")
    barrier(ctx)


def fit_counting_file(
    path: Path,
    val_records: list,
    out: Path | None = None,
    device: str = "cpu",
    extra: dict | None = None,
    nms_iou: str | None = None,
    prior: tuple[Conf, Calibration | None] | None = None,
    split: str = "val",
) -> DetectionMetrics:
    """Fit a model file's counting on val (per-class operating points with the least count error,
    score calibration for the 90% intervals, reference red-cell size) and store it with the val
    metrics, in ``out`` (default: in place). ``nms_iou``: new NMS IoU threshold(s) to store first,
    as ``--nms-iou`` takes them ("0.45" or "WBC=0.3"; other classes keep the model's). ``prior``: what
    a class no val image labels exhaustively keeps (default: the file's own fit, if it has one). ``split``: the
    records' split, as the warnings name it."""
    from bloodcell.models.checkpoint import load_model
    from bloodcell.runtime.counting import parse_nms_iou, per_class

    model, info = load_model(path)
    if nms_iou is not None:
        if MODELS[info.name].kind != "dense":  # torchvision's detectors run their own NMS inside the model
            raise ConfigError(f"--nms-iou: {path} is a {info.name} model, whose NMS is its own; leave --nms-iou out")
        info.iou_threshold = parse_nms_iou(nms_iou, info.class_names, info.iou_threshold)
    predictor = TorchPredictor(model, info, device=str(device))
    preds = predict_records(predictor, val_records)
    if prior is None and info.calibration is not None:
        prior = (info.conf, Calibration.from_dict(info.calibration))
    fit = fit_counting(preds, val_records, tuple(info.class_names), info.input_scale, prior, split)
    measured = fit.cell_size is not None  # none found on val: the model's own size stays (it rescales others')
    info.conf, info.calibration = fit.conf, fit.calibration.to_dict()
    info.cell_size = fit.cell_size if measured else info.cell_size
    metrics = score(preds, val_records, tuple(info.class_names), fit.conf, fit.calibration)
    info.metrics = {split: metrics.to_dict()}  # (in-sample: the points were fitted on these images)
    info.extra.update(extra or {})
    info.extra["counting_fit"] = {"images": sorted({r.image_id for r in val_records})}  # val says when it scores these
    target = out or path
    save_checkpoint(target, model_payload(model, info))
    print(metrics)
    print(
        f"note: the count errors and coverage above are in-sample: the operating points and calibration were fitted "
        f"on these {len(val_records)} images; score labelled images it was not fitted on (`bloodcell val --split "
        "SPLIT`, another split than these) to judge them",
        file=sys.stderr,
    )
    points, iou = per_class(info.class_names, fit.conf), per_class(info.class_names, info.iou_threshold)
    cells = f"red cells {info.cell_size} px" + ("" if measured else f" (the model's: too few on {split} to measure)")
    if info.cell_size is None:
        cells = f"too few red cells on {split} to measure their size"
    for warning in fit.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stderr.flush()  # said before the last line, which names the model (README: "train's last line")
    print(f"model: {target} (operating points {points}; NMS IoU {iou}; {cells})")
    return metrics
