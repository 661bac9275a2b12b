"""Builds the test session's exported models in a subprocess, beside the other tests.

    python tests/export_worker.py OUT BCCD_ROOT tiny shipped

Converting to TFLite takes most of two minutes of one core and the converter is single-threaded, so
conftest.py starts this when the session collects a test that needs ``exports`` or ``tiny_exports``,
runs those tests last, and the fixtures wait for it. ``OUT/tiny.json`` and ``OUT/shipped.json`` list the files.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def tiny_model_file(path: Path, conf: float = 0.3, cls_bias: float = 0.0, metrics: dict | None = None) -> Path:
    """A small random CellNet model file (seconds to build, fast to run)."""
    import torch

    from bloodcell.models.checkpoint import make_info, model_payload, save_checkpoint
    from bloodcell.models.registry import build_model, model_config
    from bloodcell.types import CLASS_NAMES

    torch.manual_seed(0)
    cfg = model_config("cellnet", {"neck_channels": 16})
    net = build_model("cellnet", cfg, pretrained=False).eval()
    with torch.no_grad():  # a higher class prior makes a random model's scores pass a threshold
        for head in net.heads:
            head.cls[1].bias += cls_bias
    info = make_info("cellnet", cfg, CLASS_NAMES, (320, 256), conf=conf, metrics=metrics or {})
    save_checkpoint(path, model_payload(net, info))
    return path


def shipped_exports(out: Path, bccd_root: Path) -> dict[str, str]:
    """The shipped model in every format (int8 calibrated on BCCD train's first 32 images, the default)."""
    from bloodcell.export.exporter import export_model

    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "onnx": export_model(None, "onnx", out / "cellnet.onnx").path,
        "tflite": export_model(None, "tflite", out / "cellnet.tflite").path,
        "int8": export_model(None, "tflite", out / "cellnet_int8.tflite", int8=True, data=bccd_root).path,
        "onnx_int8": export_model(None, "onnx", out / "cellnet_int8.onnx", int8=True, data=bccd_root).path,
    }
    return {k: str(v) for k, v in paths.items()}


def tiny_exports(out: Path) -> dict[str, str]:
    """A small random model in ONNX and fp32 TFLite, and under "raw_tflite" the .tflite file as the converter
    wrote it, before its metadata was embedded."""
    from bloodcell.export import exporter

    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model_file(out / "tiny.pt", conf=0.3, cls_bias=3.5)
    raw = out / "raw.tflite"
    embed = exporter.embed_tflite_metadata

    def keep_raw(path, text):
        shutil.copyfile(path, raw)
        embed(path, text)

    exporter.embed_tflite_metadata = keep_raw
    try:
        paths = {fmt: str(exporter.export_model(model, fmt, out / f"tiny.{fmt}").path) for fmt in ("onnx", "tflite")}
    finally:
        exporter.embed_tflite_metadata = embed
    if not raw.is_file():
        raise RuntimeError("the TFLite export did not go through embed_tflite_metadata")
    return {**paths, "raw_tflite": str(raw)}


def _write(out: Path, name: str, paths: dict[str, str]) -> None:
    tmp = out / f"{name}.json.tmp"
    tmp.write_text(json.dumps(paths))
    tmp.replace(out / f"{name}.json")  # whole or absent: the fixtures poll for it


def main(out: Path, bccd_root: Path, builds: list[str]) -> None:
    if "tiny" in builds:  # first: a random model, needed by more test modules
        _write(out, "tiny", tiny_exports(out / "tiny"))
    if "shipped" in builds:
        _write(out, "shipped", shipped_exports(out / "shipped", bccd_root))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
