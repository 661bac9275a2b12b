"""Batched and on-device prediction give what one-by-one CPU prediction gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bloodcell.runtime.loader import load_predictor  # noqa: E402
from bloodcell.runtime.postprocess import PostprocessConfig, decode  # noqa: E402
from bloodcell.runtime.predict import predict_paths  # noqa: E402
from bloodcell.runtime.torch_predictor import decode_on_device  # noqa: E402

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "src/bloodcell/assets/samples").glob("*.jpg"))


@pytest.mark.parametrize("iou_threshold", [0.5, (0.5, 0.3, 0.6)])
@pytest.mark.parametrize("min_score", [0.001, 0.3])
def test_decode_on_device_matches_numpy_decode_per_image(min_score: float, iou_threshold) -> None:
    """Three images through one batched decode: each gives what the numpy decoder gives it alone
    (boxes of one image never suppress another's, top-k and max_detections stay per image)."""
    rng = np.random.default_rng(0)
    size, strides = (128, 96), (8, 16, 32)
    anchors = sum((size[0] // s) * (size[1] // s) for s in strides)
    cls = rng.normal(-2.0, 2.0, (3, anchors, 3)).astype(np.float32)
    cls[1] = cls[0]  # the same outputs twice: identical boxes in two images, both kept
    box = rng.normal(2.5, 0.5, (3, anchors, 4)).astype(np.float32)
    box[1] = box[0]
    config = PostprocessConfig(min_score=min_score, iou_threshold=iou_threshold, pre_nms_topk=200, max_detections=12)
    batch = decode_on_device(torch.from_numpy(cls), torch.from_numpy(box), size, strides, config)
    assert len(batch) == 3
    for i, got in enumerate(batch):
        ref = decode(cls[i], box[i], size, strides, config)
        assert len(ref) > 5 and len(got) == len(ref)
        order_ref, order_got = np.argsort(-ref.scores, kind="stable"), np.argsort(-got.scores, kind="stable")
        np.testing.assert_allclose(got.scores[order_got], ref.scores[order_ref], atol=1e-5)
        np.testing.assert_array_equal(got.labels[order_got], ref.labels[order_ref])
        np.testing.assert_allclose(got.boxes[order_got], ref.boxes[order_ref], atol=1e-3)


def test_batch_gives_the_same_results_as_one_by_one() -> None:
    predictor = load_predictor(None, device="cpu")
    paths = [*SAMPLES, Path("missing.jpg"), SAMPLES[0]]  # a bad file in the middle keeps its place
    one = list(predictor_results(predictor, paths, batch=1))
    many = list(predictor_results(predictor, paths, batch=4))
    assert [r.error is None for r in many] == [True, True, True, False, True]
    for a, b in zip(one, many, strict=True):
        assert a.path == b.path and a.error == b.error and a.intervals == b.intervals
        if a.error is None:
            assert a.counts == b.counts
            np.testing.assert_allclose(a.detections.boxes, b.detections.boxes, atol=1e-3)
            np.testing.assert_allclose(a.detections.scores, b.detections.scores, atol=1e-5)


def predictor_results(predictor, paths, batch):
    return predict_paths(predictor, paths, batch=batch, load_workers=2, keep_image=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_counts_match_cpu() -> None:
    cpu = list(predict_paths(load_predictor(None, device="cpu"), SAMPLES, keep_image=False))
    gpu = list(predict_paths(load_predictor(None, device="cuda"), SAMPLES, batch=3, keep_image=False))
    for a, b in zip(cpu, gpu, strict=True):
        # fp16 on the GPU: a box right at an operating point may flip, never more than one per class
        assert all(abs(a.counts[k] - b.counts[k]) <= 1 for k in a.counts)


def test_exported_models_refuse_gpu_and_batch(tmp_path: Path) -> None:
    from bloodcell.errors import ModelError

    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"not really")
    with pytest.raises(ModelError, match=r"GPU inference needs a \.pt model"):
        load_predictor(fake, device="cuda")
    with pytest.raises(ModelError, match=r"batching needs a \.pt model"):
        load_predictor(fake, batch=8)


def test_a_torchvision_detector_sees_its_input_at_the_trained_scale() -> None:
    """Faster R-CNN resizes inputs to its min_size (480) unless told otherwise: a model trained at 0.75x
    (input 480x384, crops not resized) must not see its letterboxed input upsampled to 600x480."""
    from bloodcell.models.checkpoint import make_info
    from bloodcell.models.registry import build_model, model_config
    from bloodcell.runtime.torch_predictor import TorchPredictor
    from bloodcell.types import CLASS_NAMES

    cfg = model_config("fasterrcnn", {"num_classes": 3})
    model = build_model("fasterrcnn", cfg, pretrained=False)
    predictor = TorchPredictor(model, make_info("fasterrcnn", cfg, CLASS_NAMES, (480, 384), conf=0.3, metrics={}))
    seen = []
    resize = model.transform.resize

    def spy(image, target=None):
        out = resize(image, target)
        seen.append(tuple(out[0].shape))
        return out

    model.transform.resize = spy
    predictor.predict(np.zeros((384, 480, 3), np.uint8))
    assert seen == [(3, 384, 480)]
