"""Load any model file into a predictor, dispatching on its type; the shipped model by default."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.errors import ConfigError, ModelError, missing_model
from bloodcell.runtime.counting import per_class
from bloodcell.runtime.timing import available_cores, check_threads
from bloodcell.weights import model_file

if TYPE_CHECKING:
    from bloodcell.models.checkpoint import ModelInfo
    from bloodcell.runtime.predict import Predictor


def load_predictor(
    path: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    edgetpu: bool = False,
    batch: int = 1,
) -> Predictor:
    """A predictor for ``path`` (.pt, .onnx, .tflite); None loads the shipped model after checking its sha256.

    ``device`` (auto, cpu, cuda, cuda:N) and ``batch`` > 1 are for .pt models; exported models run
    one image per pass on the CPU (or the Edge TPU), so asking them for more is refused, not ignored.
    ``threads``: CPU threads (None: every core this process may use); for a .pt model this is torch's
    process-wide setting, as ``torch.set_num_threads`` makes it."""
    check_threads(threads)
    threads = None if threads is None else int(threads)  # numpy's integers: torch and the runtimes take int
    # the shipped model, by default or by its file name; read_checkpoint checks it against the manifest
    path = model_file(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise missing_model(path)
    if suffix != ".pt" and device not in ("cpu", "auto"):
        raise ModelError(f"--device {device}: {path.name} runs on the CPU; GPU inference needs a .pt model")
    if suffix != ".pt" and batch > 1:
        raise ModelError(f"--batch {batch}: {path.name} takes one image per pass; batching needs a .pt model")
    if edgetpu and suffix != ".tflite":
        raise ModelError(f"--edgetpu needs a .tflite model compiled for the Edge TPU, not {path.name}")
    if suffix == ".onnx":
        from bloodcell.runtime.exported import OnnxPredictor

        return OnnxPredictor(path, threads=threads)
    if suffix == ".tflite":
        from bloodcell.runtime.exported import TFLitePredictor

        return TFLitePredictor(path, threads=threads, edgetpu=edgetpu)
    if suffix == ".pt":
        try:
            import torch
        except ModuleNotFoundError:  # the lite install (a Raspberry Pi): it runs exports only
            raise ModelError(
                f"{path.name} is a PyTorch model and needs torch (pip install 'bloodcell[torch]'); this install "
                "runs exported models: --model cellnet_int8.tflite (made by `bloodcell export` where torch is)"
            ) from None

        from bloodcell.models.checkpoint import load_model
        from bloodcell.runtime.torch_predictor import TorchPredictor

        # torch's default counts physical cores (1 on a 2-vCPU cloud machine); use every core given to us.
        torch.set_num_threads(threads or available_cores())
        model, info = load_model(path)
        predictor = TorchPredictor(model, info, device=device)
        predictor.path = path  # the file it was loaded from, as exports keep theirs: results name it
        predictor.notes += filter(None, [unfitted_checkpoint_note(path, info)])
        return predictor
    if path.name.lower().endswith((".onnx.json", ".tflite.json")):
        raise ModelError(
            f"{path}: this is the metadata of an export; pass the model itself: --model {path.with_suffix('')}"
        )
    raise ModelError(f"{path}: unknown model type {suffix or '(no suffix)'!r}; expected .pt, .onnx or .tflite")


def model_files(model: str | None) -> dict[str, tuple[str, str]]:
    """Real path -> (path as given, role) of the model file a ``--model`` names and its sidecar: files that
    commands reading the model must never write over. Empty when there is no model file to name."""
    from bloodcell.errors import BloodcellError
    from bloodcell.runtime.metadata import sidecar_path

    try:
        weights = model_file(model)
    except BloodcellError:  # no shipped model here: loading it says so next
        return {}
    files = ((weights, "the model file"), (sidecar_path(weights), "the model's sidecar"))
    return {os.path.realpath(path): (str(path), role) for path, role in files}


def refuse_overwriting_model(files: dict[str, str | None], model: str | None) -> None:
    """ConfigError before any work when an output (flag -> path) is the model file or its sidecar."""
    inputs = model_files(model)
    for flag, path in files.items():
        if path and os.path.realpath(path) in inputs:
            raise ConfigError(f"{flag} {path}: is {inputs[os.path.realpath(path)][1]}; it would be overwritten")


def unfitted_checkpoint_note(path: Path, info: ModelInfo) -> str | None:
    """What a training checkpoint whose counting was never fitted (last.pt, a stopped run's best.pt: the end
    of training fits, a stop does not) counts with, and how to fit it; None for a fitted model."""
    if info.calibration is not None or "train_config" not in info.extra:
        return None
    return (
        f"{path}: a training checkpoint whose counting was not fitted (last.pt, or best.pt of a stopped run): "
        f"counts use {per_class(info.class_names, info.conf)} and have no intervals; fit them on your val "
        f"split with `bloodcell calibrate --model {shlex.quote(str(path))} --data DATA --out fitted.pt`"
    )


def print_model_notes(predictor: Predictor) -> None:
    """Tell the user (stderr) what the loaded model file says about itself, e.g. an int8 file not refitted."""
    for note in predictor.notes:
        print(f"note: {note}", file=sys.stderr)
