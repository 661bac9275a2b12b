"""The export table: formats, file suffixes and the options each one allows."""

from __future__ import annotations

from dataclasses import dataclass

from bloodcell.errors import ConfigError


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    int8: bool  # may be fully int8-quantized
    runtime: str  # what runs it without torch


#: int8 ranges come from this many training images. All 205 of BCCD counted red cells closer to the .pt
#: outside val but cost 0.5 points of BCCD-val mAP (BENCHMARKS.md, seventh session): `--calib-images`.
CALIB_IMAGES = 32

FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", ".onnx", int8=True, runtime="onnxruntime"),
    "tflite": ExportFormat("tflite", ".tflite", int8=True, runtime="ai-edge-litert (LiteRT), Edge TPU after compiling"),
}


def get_format(name: str, int8: bool = False) -> ExportFormat:
    if name not in FORMATS:
        raise ConfigError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}")
    fmt = FORMATS[name]
    if int8 and not fmt.int8:
        raise ConfigError(
            f"--int8 is not available for {name}; int8 formats: {', '.join(n for n, f in FORMATS.items() if f.int8)}"
        )
    return fmt
