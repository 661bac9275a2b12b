"""Predictors for exported models (ONNX, TFLite): numpy, Pillow and their runtime only, no torch.

Both read the metadata sidecar ``<file>.json`` written by ``bloodcell export``, letterbox the
image, run the graph, and decode with the same code as the torch predictor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bloodcell.errors import ModelError
from bloodcell.runtime.counting import Calibration
from bloodcell.runtime.postprocess import PostprocessConfig, decode
from bloodcell.runtime.preprocess import letterbox
from bloodcell.types import Detections


def metadata_path(path: Path) -> Path:
    """<file>.json; for edgetpu_compiler's X_edgetpu.tflite, the sidecar of the X.tflite it came from."""
    own = path.with_name(path.name + ".json")
    if not own.exists() and path.stem.endswith("_edgetpu"):
        return path.with_name(path.stem.removesuffix("_edgetpu") + path.suffix + ".json")
    return own


def read_metadata(path: Path) -> dict:
    meta_path = metadata_path(path)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{meta_path}: metadata missing; export the model again with `bloodcell export`") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{meta_path}: unreadable metadata ({e})") from None
    if meta.get("format") != "bloodcell-export":
        raise ModelError(f"{meta_path}: not a bloodcell export metadata file")
    return meta


class ExportedPredictor:
    """Shared by the runtimes: letterbox -> run -> decode -> map boxes back to the image."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self.class_names = tuple(meta["class_names"])
        self.input_size = tuple(meta["input_size"])
        self.strides = tuple(meta["strides"])
        conf = meta["conf"]
        self.conf = tuple(float(v) for v in conf) if isinstance(conf, list) else float(conf)
        self.calibration = Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None
        self.cell_size = None if meta.get("cell_size") is None else float(meta["cell_size"])
        self.post = PostprocessConfig(iou_threshold=float(meta["iou_threshold"]))

    def describe(self) -> dict:
        """Architecture, format, metrics and name, from the export metadata."""
        meta = self.meta
        architecture = meta.get("architecture")
        return {
            "name": architecture,
            "architecture": architecture,
            "format": meta.get("model_format"),
            "metrics": meta.get("source_metrics") or None,
        }

    def run(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        canvas, lb = letterbox(image, self.input_size)
        scores, boxes = self.run(canvas)
        post = PostprocessConfig(min_score, self.post.iou_threshold, self.post.pre_nms_topk, self.post.max_detections)
        dets = decode(scores, boxes, self.input_size, self.strides, post, probabilities=True)
        return Detections(lb.to_image(dets.boxes), dets.labels, dets.scores)


class OnnxPredictor(ExportedPredictor):
    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__(path, read_metadata(path))
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("ONNX models need onnxruntime: pip install 'bloodcell[lite]'") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: onnxruntime cannot load it ({str(e)[:160]})") from None

    def run(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, boxes = self.session.run(["scores", "boxes"], {"images": canvas[None].astype(np.float32)})
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


EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class TFLitePredictor(ExportedPredictor):
    def __init__(self, path: Path, threads: int | None = None, edgetpu: bool = False) -> None:
        super().__init__(path, read_metadata(path))
        interpreter = _interpreter_module()
        delegates = [_edgetpu_delegate(interpreter)] if edgetpu else None
        try:
            self.interpreter = interpreter.Interpreter(str(path), num_threads=threads, experimental_delegates=delegates)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: LiteRT cannot load it ({str(e)[:160]})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.scores_out, self.boxes_out = split_outputs(self.interpreter.get_output_details(), len(self.class_names))

    def _quantize(self, canvas: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return canvas[None].astype(np.float32)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        q = np.round(canvas.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(dtype)[None]

    def _read(self, detail: dict) -> np.ndarray:
        x = self.interpreter.get_tensor(detail["index"])[0]
        if x.dtype == np.float32:
            return x
        scale, zero = detail["quantization"]
        return (x.astype(np.float32) - zero) * scale

    def run(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.interpreter.set_tensor(self.input["index"], self._quantize(canvas))
        self.interpreter.invoke()
        return self._read(self.scores_out), self._read(self.boxes_out)


def _edgetpu_delegate(interpreter):
    import platform

    library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    try:
        return interpreter.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as e:
        raise ModelError(
            f"--edgetpu: cannot load the Edge TPU runtime {library} ({str(e)[:120]}); install libedgetpu "
            "(see README, Raspberry Pi) and compile the model with edgetpu_compiler"
        ) from None
