"""`bloodcell export`: a trained .pt model -> ONNX or TFLite (fp32 or full-integer int8).

Each file gets its metadata (class names, input size and layout, quantization, operating
threshold, strides, source sha256, ops; schema in ``bloodcell.runtime.metadata``) twice: as the
sidecar ``<file>.json`` and embedded in the file itself (ONNX ``metadata_props``, TFLite
``Model.metadata``, both named ``bloodcell``), so a model file copied alone still runs. Decoding
and NMS stay outside the graph (``bloodcell.runtime.postprocess``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bloodcell import __version__
from bloodcell.atomic import temp_prefix, write_files
from bloodcell.config import Number
from bloodcell.digest import sha256_of
from bloodcell.errors import BloodcellError, ConfigError, check_stop
from bloodcell.export.embed import embed_tflite_metadata, onnx_with_metadata
from bloodcell.export.formats import CALIB_IMAGES, get_format
from bloodcell.export.graph import ExportGraph
from bloodcell.models.checkpoint import ModelInfo, load_model
from bloodcell.models.input_size import check_input_size
from bloodcell.models.registry import MODELS
from bloodcell.runtime.loader import unfitted_checkpoint_note
from bloodcell.runtime.metadata import (
    FORMAT,
    NORMALIZED_INPUT_VERSION,
    ONNX_INT8_VERSION,
    PER_CLASS_NMS_VERSION,
    parse_metadata,
)
from bloodcell.weights import model_file

OPSET = 17


@dataclass
class ExportResult:
    path: Path
    metadata_path: Path
    size_bytes: int
    metadata: dict = field(repr=False, default_factory=dict)
    replaced_fit: bool = False  # the file replaced had been refit by `bloodcell calibrate`

    def to_dict(self) -> dict:
        """JSON-ready: paths as strings, the metadata written beside the file."""
        return {
            "path": str(self.path),
            "metadata_path": str(self.metadata_path),
            "size_bytes": self.size_bytes,
            "metadata": self.metadata,
            "replaced_fit": self.replaced_fit,
        }


def calibration_images(
    data: str | Path | None, size: tuple[int, int], count: int, scale: float = 1.0
) -> list[np.ndarray]:
    """The first ``count`` training images as the network sees them: exposure normalized, at the model's
    ``scale``, the central ``size`` window (deterministic)."""
    from bloodcell.data.sources import load_dataset, resolve_data_root
    from bloodcell.runtime.exposure import normalize_exposure
    from bloodcell.runtime.images import load_image
    from bloodcell.runtime.scaling import model_window

    records = load_dataset(resolve_data_root(data), split="train", decode_images=False).records[:count]
    return [model_window(normalize_exposure(load_image(r.image_path))[0], scale, size) for r in records]


def export_model(
    model: str | Path | None,
    fmt: str,
    out: str | Path,
    int8: bool = False,
    calib_images: int | None = None,
    imgsz: tuple[int, int] | None = None,
    data: str | Path | None = None,
    qat_state: dict | None = None,
    extra_metadata: dict | None = None,
    verbose: bool = False,
) -> ExportResult:
    """Export ``model`` (default: the shipped one) to ``out``; ``verbose`` shows the TFLite converter's log.
    ``data`` and ``calib_images`` (default ``CALIB_IMAGES``) are int8's calibration: refused without it."""
    spec = get_format(fmt, int8)
    for flag, value in (("--calib-images", calib_images), ("--data", data)):
        if value is not None and not int8:  # never silently unused
            raise ConfigError(f"{flag} is for int8 calibration; add --int8 or leave it out")
    if calib_images is not None and (problem := Number(int, 1).problem(calib_images)):
        raise ConfigError(f"--calib-images {calib_images!r}: {problem}")
    if verbose and fmt != "tflite":
        raise ConfigError("--verbose shows the TFLite converter's log; the ONNX export prints none")
    out = Path(out)
    if out.suffix.lower() != spec.suffix:  # (".onnx" alone is a hidden file's name, without a suffix)
        name = f"; name it like model{spec.suffix}" if out.name.lower() == spec.suffix else ""
        article = "an" if fmt[0] in "aeiou" else "a"
        raise ConfigError(f"--out {out}: {article} {fmt} file must end in {spec.suffix}{name}")
    source = model_file(model)
    net, info = load_model(source)  # the shipped model is checked against its manifest there
    if MODELS[info.name].kind != "dense":
        raise ConfigError(f"{source}: {info.name} cannot be exported; export needs a one-stage model such as cellnet")
    unfitted = unfitted_checkpoint_note(source, info)  # the export would count as it does: said now, and at load
    if qat_state is None and unfitted:  # (qat says it before training)
        print(f"warning: {unfitted}, then export that", file=sys.stderr)
    width, height = imgsz or tuple(info.input_size)
    what = f"--imgsz {width}x{height}" if imgsz else f"the model's input {width}x{height} (pass --imgsz)"
    if width % 32 or height % 32:
        raise ConfigError(f"{what}: both sides must be multiples of 32")
    check_input_size((width, height), info.cell_size, what)
    if tiling := smaller_input_note((width, height), tuple(info.input_size), info.cell_size):
        print(f"warning: {tiling}", file=sys.stderr)
    meta_path = check_metadata_path(out)
    check_replaceable(out, meta_path)
    # int8 (post-training): normalization moves into the input's quantization (export.graph).
    normalized = int8 and qat_state is None
    graph = ExportGraph(net, normalized_input=normalized).eval()
    example = torch.zeros(1, height, width, 3)
    scale, shift = net.scale.flatten().tolist(), net.shift.flatten().tolist()

    meta = _metadata(info, source, fmt, int8, (width, height), tuple(net.strides))
    # The lowest version that reads this file right: older runtimes refuse newer versions ("upgrade").
    if isinstance(meta["iou_threshold"], list):  # an older runtime would refuse it as "not a number"
        meta["format_version"] = PER_CLASS_NMS_VERSION
    if normalized:
        # older runtimes would feed plain pixels: they must refuse it
        meta["format_version"] = max(meta["format_version"], NORMALIZED_INPUT_VERSION)
        meta["input_normalization"] = {"scale": scale, "shift": shift}
        meta["input_layout"] = "NHWC RGB, pixels 0..255 times input_normalization.scale plus .shift, per channel"
    if unfitted:  # the runtime says so at every load, as for the checkpoint
        meta["unfitted_checkpoint"] = True
    meta.update(extra_metadata or {})
    # Checked before the (slow) conversion: an export that the runtime would refuse is never written.
    parse_metadata(meta, f"{out} (metadata of {source.name})")
    calibration = None
    if int8 and qat_state is None:
        images = calibration_images(data, (width, height), calib_images or CALIB_IMAGES, info.input_scale)
        if not images:  # int8 ranges from no image: a model that detects nothing, however it exits
            raise ConfigError(
                f"int8: the train split of {data or 'the default dataset'} has no images to set the int8 "
                "ranges from; use a dataset whose train split has some"
            )
        affine = np.float32(scale), np.float32(shift)
        calibration = [torch.from_numpy(im.astype(np.float32) * affine[0] + affine[1])[None] for im in images]
        meta["calibration_images"] = len(calibration)
    if fmt == "onnx":
        if qat_state is not None:
            raise ConfigError("quantization-aware training exports to TFLite only (bloodcell qat writes a .tflite)")
        model_bytes = _export_onnx(graph, example, meta, calibration)
        parse_metadata(meta, f"{out} (metadata of {source.name})")  # with the int8 file's input levels
    else:
        model_bytes = _export_tflite(
            graph, example, out, int8, calibration, qat_state, meta, len(info.class_names), verbose
        )
    # Only a finished export touches ``out``: a failed conversion or write leaves an earlier export and its
    # (perhaps recalibrated) sidecar as they were. The sidecar is renamed into place first: a stop between
    # the renames leaves the old file with the new sidecar (refused by the loader if their graphs differ),
    # never a new file silently read with the old sidecar's operating points.
    replaced_fit = _fitted(meta_path)
    check_stop()  # a Ctrl-C the converter's import swallowed: the earlier export stays
    write_files([(meta_path, (json.dumps(meta, indent=2) + "\n").encode()), (out, model_bytes)])
    return ExportResult(out, meta_path, out.stat().st_size, meta, replaced_fit)


def smaller_input_note(size: tuple[int, int], native: tuple[int, int], cell_size: float | None) -> str | None:
    """What an input smaller than the model's own costs: each of its fields becomes several tiles (a smaller
    input is faster only for a model trained at a smaller scale). None when it is not smaller."""
    from bloodcell.runtime.scaling import tile_overlap, tile_passes

    passes = tile_passes(native, size, tile_overlap(cell_size, size))
    if passes == 1:
        return None
    w, h = size
    return (
        f"--imgsz {w}x{h} is smaller than the model's input {native[0]}x{native[1]}: each field of the training "
        f"microscope is then cut into {passes} tiles, {passes} network passes instead of one (slower, not faster); "
        "for a faster model train one at a smaller scale (bloodcell train --scale)"
    )


def check_metadata_path(out: Path) -> Path:
    """The export's metadata file beside ``out``; ConfigError if a folder is in the way (said before work)."""
    meta_path = out.with_name(out.name + ".json")
    if meta_path.is_dir():
        raise ConfigError(f"--out {out}: its metadata file {meta_path} is a folder")
    return meta_path


def calibration_shortfall(result: ExportResult, asked: int) -> str | None:
    """What to say when an int8 export's ranges came from fewer train images than asked; None otherwise."""
    used = result.metadata.get("calibration_images")
    if used is None or used >= asked:
        return None
    return (
        f"int8 ranges set from {used} image{'s' if used != 1 else ''}: the train split has no more (asked for {asked})"
    )


def check_replaceable(out: Path, meta_path: Path) -> None:
    """ConfigError (before any work) when ``out`` or its metadata file exists and is not a bloodcell export:
    an earlier export is replaced, as a re-export should; a user's other file of that name never is."""
    ours = {path: path.is_file() and _is_export(path) for path in (out, meta_path)}
    foreign = [path for path in (out, meta_path) if path.is_file() and not ours[path]]
    if out in foreign and ours[meta_path]:  # an export from before metadata went inside the file: its sidecar says
        foreign.remove(out)
    if foreign:
        raise ConfigError(
            f"--out {out}: {foreign[0]} exists and is not a bloodcell export (nor its metadata); "
            "move it away or choose another --out"
        )


def _is_export(path: Path) -> bool:
    """Whether ``path`` holds bloodcell export metadata (a sidecar, or a model file with it embedded)."""
    try:
        return f'"format": "{FORMAT}"'.encode() in path.read_bytes()
    except OSError:
        return False


def _fitted(sidecar: Path) -> bool:
    """Whether ``sidecar`` holds a `bloodcell calibrate` refit (an export about to be replaced)."""
    try:
        return bool(json.loads(sidecar.read_text()).get("fitted"))
    except (OSError, ValueError, AttributeError):
        return False


def _metadata(info: ModelInfo, source: Path, fmt: str, int8: bool, size: tuple[int, int], strides) -> dict:
    saved = info.to_dict()  # JSON-ready: per-class values as lists
    return {
        "format": FORMAT,
        "format_version": 1,  # 2 with input_normalization (int8), 3 with per-class NMS, 4 int8 ONNX
        "version": __version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model_format": fmt,
        "int8": int8,
        "architecture": info.name,
        "class_names": list(info.class_names),
        "input_size": list(size),
        "input_layout": "NHWC RGB pixels 0..255 (normalization is inside the graph)",
        "outputs": {"scores": "(1, A, K) class probabilities", "boxes": "(1, A, 4) log distances l,t,r,b in strides"},
        "strides": list(strides),
        "conf": saved["conf"],
        "iou_threshold": saved["iou_threshold"],
        "calibration": info.calibration,
        "cell_size": info.cell_size,
        "input_scale": info.input_scale,
        "source": source.name,
        "source_sha256": sha256_of(source),
        "source_metrics": info.metrics,
        # the images the inherited counting was fitted on (val says when it scores those again)
        **({"counting_fit": info.extra["counting_fit"]} if isinstance(info.extra.get("counting_fit"), dict) else {}),
    }


def _export_onnx(graph: torch.nn.Module, example: torch.Tensor, meta: dict, calibration=None) -> bytes:
    """The ONNX file's bytes, with ``meta`` embedded, checked by running it once; int8 (uint8 input, see
    export.onnx_int8) when ``calibration`` holds normalized inputs that set its ranges."""
    import io

    import onnx
    import onnxruntime as ort

    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["scores", "boxes"],
        )
    except Exception as e:  # the exporter raises many types
        raise BloodcellError(f"ONNX export failed: {type(e).__name__}: {str(e)[:200]}") from None
    model, feed = onnx.load_from_string(buffer.getvalue()), example.numpy()
    if calibration is not None:
        from bloodcell.export.onnx_int8 import quantize_onnx

        try:
            model, (input_scale, input_zero) = quantize_onnx(model, [x.numpy() for x in calibration])
        except Exception as e:  # onnxruntime's quantizer raises many types
            raise BloodcellError(f"ONNX int8 quantization failed: {type(e).__name__}: {str(e)[:200]}") from None
        # older runtimes would feed floats to the uint8 input: they must refuse it
        meta["format_version"] = max(meta["format_version"], ONNX_INT8_VERSION)
        meta["onnx_input"] = {"dtype": "uint8", "quantization": [input_scale, input_zero]}
        meta["input_layout"] += ", as uint8 levels: value = (level - onnx_input zero point) * scale"
        feed = np.zeros(example.shape, np.uint8)
    meta["graph_sha256"] = hashlib.sha256(model.SerializeToString()).hexdigest()  # before the metadata goes in
    model = onnx_with_metadata(model, meta)
    data = model.SerializeToString()
    try:  # checked by the ONNX checker and by running it once, before anything is written
        onnx.checker.check_model(model)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        session.run(None, {"images": feed})
    except Exception as e:
        raise BloodcellError(f"exported ONNX graph does not run in onnxruntime: {str(e)[:200]}") from None
    return data


def _export_tflite(
    graph, example, out: Path, int8: bool, calibration, qat_state, meta: dict, num_classes: int, verbose: bool = False
) -> bytes:
    """The .tflite file's bytes, with its input/output details added to ``meta`` and ``meta`` embedded.

    The converter's log (progress lines, absl and MLIR diagnostics: some 45 lines, one of them a warning
    about the float outputs, which are float on purpose) is shown with ``verbose`` or when it fails."""
    if importlib.util.find_spec("litert_torch") is None:  # found, not imported: importing it logs too
        raise ConfigError("TFLite export needs litert-torch: pip install 'bloodcell[export]'")
    from bloodcell.runtime.native_output import captured_output

    log = None
    try:
        with contextlib.nullcontext() if verbose else captured_output((1, 2)) as log:
            return _convert_tflite(graph, example, out, int8, calibration, qat_state, meta, num_classes)
    except Exception:  # the converter's own words say what went wrong
        if log is not None and log.text.strip():
            sys.stderr.write("the converter's log (last lines):\n" + "".join(log.text.splitlines(True)[-40:]))
        raise


def _convert_tflite(
    graph, example, out: Path, int8: bool, calibration, qat_state, meta: dict, num_classes: int
) -> bytes:
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    from bloodcell.export.quantize import quantize_ptq

    quant_config = None
    module = graph
    if int8:
        if qat_state is not None:
            module, quantizer = qat_state["graph"], qat_state["quantizer"]
        else:
            module, quantizer = quantize_ptq(graph, example, calibration)
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
        # A captured pt2e graph (batch norms folded, no dropout) refuses .eval(); only its flag says
        # "training", which makes the converter print an alarming and here meaningless warning.
        module.training = False
    try:
        edge = litert_torch.convert(module, (example,), quant_config=quant_config)
    except Exception as e:
        raise BloodcellError(f"TFLite conversion failed: {type(e).__name__}: {str(e)[:200]}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent)  # litert writes by path
    os.close(fd)
    tmp = Path(name)
    try:
        edge.export(str(tmp))
        meta["graph_sha256"] = sha256_of(tmp)  # before the metadata goes in
        meta.update(_tflite_io(tmp, num_classes))
        embed_tflite_metadata(tmp, json.dumps(meta))
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)


def tflite_ops(path: str | Path) -> list[str]:
    """The builtin operators of a .tflite file (as the interpreter sees them, before delegates)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return sorted({op["op_name"] for op in it._get_ops_details()})


def _tensor_info(d: dict) -> dict:
    scale, zero = d["quantization"]
    return {
        "name": d["name"],
        "shape": [int(v) for v in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
        "quantization": [float(scale), int(zero)],
    }


def _tflite_io(path: Path, num_classes: int) -> dict:
    """Input/output tensor types and quantization, and the op list, for the metadata."""
    from ai_edge_litert.interpreter import Interpreter

    from bloodcell.runtime.exported import split_outputs

    it = Interpreter(str(path))
    scores, boxes = split_outputs(it.get_output_details(), num_classes)
    return {
        "ops": tflite_ops(path),
        "tflite_input": _tensor_info(it.get_input_details()[0]),
        "tflite_outputs": {"scores": _tensor_info(scores), "boxes": _tensor_info(boxes)},
    }
