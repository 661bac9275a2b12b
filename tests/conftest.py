"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """The read-only BCCD copy beside the repository (see ../shared/data/README.md)."""
    root = REPO.parent / "shared" / "data" / "BCCD"
    if not (root / "Annotations").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"BCCD not found at {root}; CI must have ../shared/data/BCCD")
        pytest.skip(f"BCCD not found at {root}")
    return root


@pytest.fixture(scope="session")
def tiny_voc(bccd_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-image VOC folder (train 4, val 2) of symlinks into BCCD: real data, seconds to train on."""
    root = tmp_path_factory.mktemp("tiny_voc")
    split_ids = {s: (bccd_root / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in ("train", "val")}
    ids = {"train": split_ids["train"][:4], "val": split_ids["val"][:2]}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for split, names in ids.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            (root / "Annotations" / f"{name}.xml").symlink_to(bccd_root / "Annotations" / f"{name}.xml")
            (root / "JPEGImages" / f"{name}.jpg").symlink_to(bccd_root / "JPEGImages" / f"{name}.jpg")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Factory for small random CellNet model files (seconds to build, fast to run)."""

    def make(conf: float = 0.3, cls_bias: float = 0.0, metrics: dict | None = None) -> Path:
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
        path = tmp_path_factory.mktemp("model") / "tiny.pt"
        info = make_info("cellnet", cfg, CLASS_NAMES, (320, 256), conf=conf, metrics=metrics or {})
        save_checkpoint(path, model_payload(net, info))
        return path

    return make


@pytest.fixture(scope="session")
def exports(tmp_path_factory, bccd_root):
    """The shipped model exported once per test session to every format."""
    from bloodcell.export.exporter import export_model

    out = tmp_path_factory.mktemp("exports")
    paths = {
        "onnx": export_model(None, "onnx", out / "cellnet.onnx").path,
        "tflite": export_model(None, "tflite", out / "cellnet.tflite").path,
        "int8": export_model(
            None,
            "tflite",
            out / "cellnet_int8.tflite",
            int8=True,
            data=bccd_root,  # default calibration (32)
        ).path,
        "onnx_int8": export_model(None, "onnx", out / "cellnet_int8.onnx", int8=True, data=bccd_root).path,
    }
    return paths


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, tiny_model):
    """A small random model exported to ONNX and fp32 TFLite (about 30 s), and under "raw_tflite"
    the .tflite file as the converter wrote it, before its metadata was embedded."""
    from bloodcell.export import exporter
    from bloodcell.export.exporter import export_model

    out = tmp_path_factory.mktemp("tiny_exports")
    model = tiny_model(conf=0.3, cls_bias=3.5)
    raw = out / "raw.tflite"
    embed = exporter.embed_tflite_metadata

    def keep_raw(path, text):
        shutil.copyfile(path, raw)
        embed(path, text)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "embed_tflite_metadata", keep_raw)
        paths = {fmt: export_model(model, fmt, out / f"tiny.{fmt}").path for fmt in ("onnx", "tflite")}
    assert raw.is_file()
    return {**paths, "raw_tflite": raw}
