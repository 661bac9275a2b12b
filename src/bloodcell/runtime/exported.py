"""Predictors for exported models (ONNX, TFLite): numpy, Pillow and their runtime only, no torch.

Both read the metadata written by ``bloodcell export`` (the sidecar ``<file>.json``, else the copy
embedded in the model file; validated, see ``bloodcell.runtime.metadata``), letterbox the image,
run the graph, and decode with the same code as the torch predictor.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from bloodcell.errors import ModelError
from bloodcell.runtime.metadata import (
    ExportMetadata,
    onnx_embedded,
    read_sidecar,
    resolve_metadata,
    sidecar_note,
    tflite_embedded,
)
from bloodcell.runtime.native_output import captured_output
from bloodcell.runtime.postprocess import PostprocessConfig, decode
from bloodcell.runtime.preprocess import letterbox
from bloodcell.runtime.timing import StageTimes, available_cores
from bloodcell.types import Detections


class ExportedPredictor:
    """Shared by the runtimes: letterbox -> run -> decode -> map boxes back to the image."""

    def __init__(self, path: Path, sidecar: ExportMetadata | None, embedded: str | bytes | None) -> None:
        """``sidecar`` and ``embedded``: the two copies of the export's metadata (see ``resolve_metadata``)."""
        metadata = resolve_metadata(path, sidecar, embedded)
        self.path = path
        self.metadata = metadata
        self.class_names = metadata.class_names
        self.input_size = metadata.input_size
        self.strides = metadata.strides
        self.conf = metadata.conf
        self.calibration = metadata.calibration
        self.cell_size = metadata.cell_size
        self.input_scale = metadata.input_scale
        self.post = PostprocessConfig(iou_threshold=metadata.iou_threshold)
        self.times = StageTimes()
        self._table: np.ndarray | None = None  # integer inputs: (1, 256, 3) pixel -> level (``_input_table``)
        refit = bool(metadata.raw.get("fitted"))
        self.notes = [unfitted_int8_note(path)] if metadata.int8 and not refit else []
        unfitted = metadata.raw.get("unfitted_checkpoint") is True and metadata.calibration is None
        if unfitted and not refit and not metadata.int8:  # (int8's note already says refit)
            self.notes.append(unfitted_export_note(path))
        self.notes += filter(None, [sidecar_note(path, sidecar, embedded)])

    def describe(self) -> dict:
        """Architecture, format, metrics and name, from the export metadata."""
        meta = self.metadata
        return {
            "name": meta.architecture,
            "architecture": meta.architecture,
            "format": meta.model_format,
            # the export's own val metrics once `bloodcell calibrate` fitted it, else its source model's
            "metrics": (meta.raw.get("fitted") or {}).get("metrics") or meta.source_metrics or None,
        }

    def run(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _real_input(self, canvas: np.ndarray) -> np.ndarray:
        """The graph's input in real units: pixels, or pixels * scale + shift (input_normalization)."""
        x = canvas.astype(np.float32)
        if self.metadata.input_normalization is not None:
            scale, shift = (np.asarray(v, np.float32) for v in self.metadata.input_normalization)
            x = x * scale + shift
        return x

    def _input_table(self, dtype: np.dtype, scale: float, zero: int) -> np.ndarray:
        """(1, 256, 3), as cv2.LUT takes it: the integer input for each pixel value and channel, so an integer
        model's input is one table lookup per pixel (normalization and quantization included)."""
        pixels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        info = np.iinfo(dtype)
        table = np.clip(np.round(self._real_input(pixels) / scale + zero), info.min, info.max).astype(dtype)
        return table.reshape(1, 256, 3)

    def _graph_input(self, canvas: np.ndarray) -> np.ndarray:
        """(1, H, W, 3): through ``self._table`` for an integer input, else real units."""
        if self._table is None:
            return self._real_input(canvas)[None]
        # OpenCV's per-channel table lookup: 0.3 ms for a 480x384 canvas, numpy's fancy indexing 2.4 ms
        return cv2.LUT(np.ascontiguousarray(canvas, dtype=np.uint8), self._table)[None]

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        with self.times.stage("letterbox"):
            canvas, lb = letterbox(image, self.input_size)
        with self.times.stage("network"):
            scores, boxes = self.run(canvas)
        if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):  # else NaN scores count nothing, silently
            raise ModelError(
                f"{self.path}: the network's outputs are not finite (NaN or infinity): the file is damaged, or "
                "not the network its metadata describes; export the model again with `bloodcell export`"
            )
        with self.times.stage("decode"):
            post = replace(self.post, min_score=min_score)
            dets = decode(scores, boxes, self.input_size, self.strides, post, probabilities=True)
            return Detections(lb.to_image(dets.boxes), dets.labels, dets.scores)


class OnnxPredictor(ExportedPredictor):
    def __init__(self, path: Path, threads: int | None = None) -> None:
        sidecar = read_sidecar(path)  # a broken sidecar is reported before any runtime is needed
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("ONNX models need onnxruntime: pip install 'bloodcell[lite]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        if options.intra_op_num_threads > available_cores():  # spinning threads beyond the cores: 50x slower
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: onnxruntime cannot load it ({str(e)[:160]})") from None
        super().__init__(path, sidecar, onnx_embedded(self.session))
        graph_input = self.session.get_inputs()[0]
        outputs = [o.shape for o in self.session.get_outputs()]
        self.metadata.check_graph(path, graph_input.shape, outputs)
        if graph_input.type == "tensor(uint8)":  # int8 export: uint8 levels of the normalized input
            if self.metadata.onnx_input is None:
                raise ModelError(
                    f"{path}: its input is uint8 but its metadata has no 'onnx_input' quantization; "
                    "export it again with `bloodcell export --format onnx --int8`"
                )
            self._table = self._input_table(np.dtype(np.uint8), *self.metadata.onnx_input)
        elif self.metadata.onnx_input is not None:
            self.metadata._fail("onnx_input", f"is set but {path.name} takes {graph_input.type}, not uint8")
        elif graph_input.type != "tensor(float)":
            raise ModelError(
                f"{path}: its input is {graph_input.type}; bloodcell's ONNX files take float pixels or, int8, uint8 "
                "levels: export it with `bloodcell export --format onnx`"
            )

    def run(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, boxes = self.session.run(["scores", "boxes"], {"images": self._graph_input(canvas)})
        return scores[0], boxes[0]


def split_outputs(outputs: list[dict], num_classes: int) -> tuple[dict, dict]:
    """(scores, boxes) output details, told apart by their last dimension (K vs 4); when K is 4 too,
    by name order (output_0 is scores), which the Edge TPU compiler keeps."""
    by_dim = {int(d["shape"][-1]): d for d in outputs}
    if num_classes != 4 and set(by_dim) == {num_classes, 4}:
        return by_dim[num_classes], by_dim[4]
    first, second = sorted(outputs, key=lambda d: d["name"])
    return first, second


def _interpreter_module():
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            import tflite_runtime.interpreter as interpreter  # older Raspberry Pi installs
        except ImportError:
            raise ModelError("TFLite models need ai-edge-litert: pip install 'bloodcell[lite]'") from None
    return interpreter


#: What LiteRT's C++ side prints to stderr on every load, whatever TF_CPP_MIN_LOG_LEVEL says.
LITERT_CHATTER = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextlib.contextmanager
def _without_litert_chatter() -> Iterator[None]:
    """Native stderr captured while LiteRT loads a model and written back less its info lines (a
    warning or error it prints still shows)."""
    log = None
    try:
        with captured_output((2,)) as log:
            yield
    finally:
        lines = log.text.splitlines(keepends=True) if log is not None else []
        rest = "".join(line for line in lines if line.rstrip() not in LITERT_CHATTER)
        if rest and sys.stderr is not None:
            sys.stderr.write(rest)
            sys.stderr.flush()


def unfitted_int8_note(path: Path) -> str:
    """What a user of an int8 file that `bloodcell calibrate` never refitted should know."""
    return (
        f"{path.name} is int8 and counts with the operating points of the model it came from; quantization "
        f"can move scores, and counts with them: refit them with `bloodcell calibrate --model {path} --data "
        "DATA`, DATA a val split with every cell boxed (e.g. datasets/bccd-dense.yaml)"
    )


def unfitted_export_note(path: Path) -> str:
    """An export of a training checkpoint whose counting was never fitted: what it counts with."""
    return (
        f"{path.name} was exported from a training checkpoint whose counting was not fitted: its counts use the "
        f"operating points it was exported with and have no intervals; fit them with `bloodcell calibrate --model "
        f"{shlex.quote(str(path))} --data DATA`, DATA a val split with every cell boxed"
    )


EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class TFLitePredictor(ExportedPredictor):
    def __init__(self, path: Path, threads: int | None = None, edgetpu: bool = False) -> None:
        sidecar = read_sidecar(path)  # a broken sidecar is reported before any runtime is needed
        interpreter = _interpreter_module()
        delegates = [_edgetpu_delegate(interpreter)] if edgetpu else None
        try:
            # LiteRT's own default is a single thread; every core is what a user expects.
            with _without_litert_chatter():
                self.interpreter = interpreter.Interpreter(
                    str(path), num_threads=threads or available_cores(), experimental_delegates=delegates
                )
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: LiteRT cannot load it ({str(e)[:160]})") from None
        super().__init__(path, sidecar, tflite_embedded(path))
        self.input = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        self.metadata.check_graph(path, self.input["shape"], [d["shape"] for d in outputs])
        self.scores_out, self.boxes_out = split_outputs(outputs, len(self.class_names))
        dtype = np.dtype(self.input["dtype"])
        self._table = None if dtype == np.float32 else self._input_table(dtype, *self.input["quantization"])

    def _read(self, detail: dict) -> np.ndarray:
        x = self.interpreter.get_tensor(detail["index"])[0]
        if x.dtype == np.float32:
            return x
        scale, zero = detail["quantization"]
        return (x.astype(np.float32) - zero) * scale

    def run(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.interpreter.set_tensor(self.input["index"], self._graph_input(canvas))
        self.interpreter.invoke()
        return self._read(self.scores_out), self._read(self.boxes_out)


def _edgetpu_delegate(interpreter):
    import ctypes
    import platform

    library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    try:
        # Opened here first: a Delegate whose library fails to open prints a traceback when collected.
        ctypes.CDLL(library)
        return interpreter.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as e:
        raise ModelError(
            f"--edgetpu: cannot load the Edge TPU runtime {library} ({str(e)[:120]}); install libedgetpu "
            "(see README, Raspberry Pi) and compile the model with edgetpu_compiler"
        ) from None
