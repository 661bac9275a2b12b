"""Scale estimate, rescaling and tiling with a numpy fake model that only sees squares of 60-140 px.

The fake finds dark squares on a light background from row/column projections, like a detector
trained at one scale: squares outside its size range are invisible to it.
"""

import re

import cv2
import numpy as np
import pytest

from bloodcell.runtime import scaling
from bloodcell.runtime.postprocess import PostprocessConfig
from bloodcell.runtime.scaling import (
    Rescaled,
    detect_cells,
    detect_cells_batch,
    detect_tiled,
    resize,
    scaled_window,
    tile_passes,
)
from bloodcell.types import Detections


class SquareModel:
    """Trained at ``cell_size`` px squares (sees 0.6x-1.4x that), on ``input_size`` canvases; a model
    trained with ``--scale`` s has input_scale s and a cell size s times the training images' cells."""

    class_names = ("RBC", "WBC", "Platelets")
    conf = 0.5
    calibration = None
    post = PostprocessConfig()

    def __init__(self, cell_size: float | None = 100.0, input_size=(640, 480), input_scale: float = 1.0) -> None:
        self.calls = 0
        self.cell_size, self.input_size, self.input_scale = cell_size, input_size, input_scale
        self.seen = cell_size or 100.0 * input_scale

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        w, h = self.input_size
        assert image.shape[:2] == (h, w), "the pipeline must hand over exact input-size canvases"
        self.calls += 1
        dark = image[..., 0] < 128
        boxes = []
        lo, hi = 0.6 * self.seen, 1.4 * self.seen
        for y0, y1 in _runs(dark.any(axis=1)):
            for x0, x1 in _runs(dark[y0:y1].any(axis=0)):
                w, h = x1 - x0, y1 - y0
                if lo <= w <= hi and lo <= h <= hi and dark[(y0 + y1) // 2, (x0 + x1) // 2]:
                    boxes.append([x0, y0, x1, y1])
        n = len(boxes)
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.zeros(n, np.int64), np.full(n, 0.9))


class BatchedSquareModel(SquareModel):
    def predict_batch(self, images: list[np.ndarray], min_score: float = 0.001) -> list[Detections]:
        return [self.predict(im, min_score) for im in images]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[0::2], edges[1::2], strict=True))


def squares(width: int, height: int, size: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((height, width, 3), 230, np.uint8)
    boxes = []
    for y in range(gap, height - size, size + gap):
        for x in range(gap, width - size, size + gap):
            image[y : y + size, x : x + size] = 40
            boxes.append([x, y, x + size, y + size])
    return image, np.array(boxes, np.float32)


def test_trained_scale_is_one_pass_and_exact():
    model = SquareModel()
    image, truth = squares(640, 480, 100, 40)
    out = detect_cells(model, image)
    assert (out.scale, out.tiles, model.calls) == (1.0, 1, 1)
    assert len(out.detections) == len(truth)


@pytest.mark.parametrize("size, frame", [(50, (640, 480)), (220, (1600, 1200))])
def test_cells_outside_the_trained_size_are_rescaled_and_mapped_back(size, frame):
    model = SquareModel()
    image, truth = squares(*frame, size, size // 2)
    out = detect_cells(model, image)
    assert out.estimated and out.scale == pytest.approx(100 / size, rel=0.1)
    assert len(out.detections) == len(truth)
    found = out.detections.boxes[np.argsort(out.detections.boxes[:, 1] * 1e4 + out.detections.boxes[:, 0])]
    expected = truth[np.argsort(truth[:, 1] * 1e4 + truth[:, 0])]
    assert np.abs(found - expected).max() <= 2.0  # in the original image's pixels


def test_plain_prediction_misses_them():
    """The failure the scaling fixes: the same fake sees nothing at the wrong scale."""
    image, _ = squares(640, 480, 50, 25)
    assert len(detect_cells(SquareModel(), image, cell_size=None).detections) == 0


def test_explicit_cell_size_sets_the_scale():
    image, truth = squares(640, 480, 50, 25)
    out = detect_cells(SquareModel(), image, cell_size=50.0)
    assert out.scale == pytest.approx(2.0) and not out.estimated
    assert len(out.detections) == len(truth)


def test_large_frame_is_tiled_and_each_cell_counted_once():
    model = SquareModel()
    image, truth = squares(2000, 1500, 100, 37)  # squares cross every tile border somewhere
    dets, passes = detect_tiled(model, image, 0.001, overlap=200)
    assert passes == model.calls > 1
    assert tile_passes((2000, 1500), model.input_size, 200) == passes  # what export's warning counts
    assert len(dets) == len(truth)
    ious = np.array([[_iou(d, t) for t in truth] for d in dets.boxes])
    assert (ious.max(axis=1) > 0.95).all() and len(set(ious.argmax(axis=1))) == len(truth)


@pytest.mark.parametrize("scale", [1.37, 2.0, 3.9])
def test_a_large_upscale_is_resampled_tile_by_tile_as_resizing_the_whole_would(scale, monkeypatch):
    """Memory stays bounded (a 50 MP frame at 4x would be 2.4 GB whole); each slice is within one
    grey level of the same slice of the whole resize, edges included."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), np.uint8), (5, 5), 0)
    whole = resize(image, scale)
    monkeypatch.setattr(scaling, "MAX_RESIZED_PIXELS", 1000)
    lazy = Rescaled(image, scale)
    assert lazy.whole is None and lazy.shape == whole.shape
    h, w = whole.shape[:2]
    for window in [np.s_[:, :], np.s_[17:211, 33:400], np.s_[h - 100 :, w - 150 :], np.s_[0:1, 5:6]]:
        tile = lazy[window]
        assert tile.shape == whole[window].shape
        assert np.abs(tile.astype(int) - whole[window].astype(int)).max() <= 1


def test_tiled_counts_are_the_same_without_the_whole_resize(monkeypatch):
    image, truth = squares(900, 700, 40, 23)  # cell size 40: resized 2.5x into 2250x1750, tiled
    whole = detect_cells(SquareModel(), image, cell_size=40.0)
    monkeypatch.setattr(scaling, "MAX_RESIZED_PIXELS", 640 * 480)
    lazy = detect_cells(SquareModel(), image, cell_size=40.0)
    assert len(lazy.detections) == len(whole.detections) == len(truth) and lazy.tiles == whole.tiles > 1
    assert np.abs(np.sort(lazy.detections.boxes, axis=0) - np.sort(whole.detections.boxes, axis=0)).max() <= 1.0


def test_no_cells_keeps_scale_one():
    out = detect_cells(SquareModel(), np.full((480, 640, 3), 230, np.uint8))
    assert out.scale == 1.0 and len(out.detections) == 0


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- a model trained at --scale 0.75: 480x384 input, red cells of 75 px --------------------------------


def _scaled(batched: bool = False, cell_size: float | None = 75.0) -> SquareModel:
    return (BatchedSquareModel if batched else SquareModel)(cell_size, (480, 384), 0.75)


def _sorted(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.argsort(boxes[:, 1] * 1e4 + boxes[:, 0])]


@pytest.mark.parametrize("cell_size", ["auto", None])
def test_scaled_model_takes_training_microscope_images_in_one_pass_at_its_scale(cell_size):
    model = _scaled()
    image, truth = squares(640, 480, 100, 40)
    out = detect_cells(model, image, cell_size=cell_size)
    assert (out.scale, out.tiles, model.calls) == (0.75, 1, 1)
    assert len(out.detections) == len(truth)
    assert np.abs(_sorted(out.detections.boxes) - _sorted(truth)).max() <= 2.0  # mapped back to the image


def test_scaled_model_rescales_other_magnifications_from_its_prior():
    image, truth = squares(640, 480, 50, 25)  # cells half the training size: 75 / 50 = 1.5
    out = detect_cells(_scaled(), image)
    assert out.estimated and out.scale == pytest.approx(1.5, rel=0.1)
    assert len(out.detections) == len(truth)
    assert np.abs(_sorted(out.detections.boxes) - _sorted(truth)).max() <= 2.0


def test_scaled_model_without_a_reference_runs_at_its_scale():
    """During training no reference size exists yet: validation images go in at the model's scale."""
    image, truth = squares(640, 480, 100, 40)
    out = detect_cells(_scaled(cell_size=None), image)
    assert out.scale == 0.75 and not out.estimated and len(out.detections) == len(truth)


def test_scaled_model_batches_the_prior_pass_with_the_same_results():
    images = [squares(640, 480, 100, 40)[0], squares(640, 480, 50, 25)[0], squares(640, 480, 100, 30)[0]]
    one_by_one = _scaled()
    alone = [detect_cells(one_by_one, im) for im in images]
    model = _scaled(batched=True)
    together = detect_cells_batch(model, images)
    assert [a.scale for a in alone] == [b.scale for b in together] == [0.75, pytest.approx(1.5, rel=0.1), 0.75]
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a.detections.boxes, b.detections.boxes)
    assert model.calls == one_by_one.calls  # the prior pass is reused, not repeated, after the batch


@pytest.mark.parametrize("reference", [75.0, None])
def test_scaled_model_batches_whole_passes_without_an_estimate(reference):
    """Validation (cell size none) of a --scale model: one batched pass per image, mapped back."""
    images = [squares(640, 480, 100, 40)[0], squares(640, 480, 100, 30)[0]]
    alone = [detect_cells(_scaled(cell_size=reference), im, cell_size=None) for im in images]
    model = _scaled(batched=True, cell_size=reference)
    together = detect_cells_batch(model, images, cell_size=None)
    assert model.calls == 2 and all(t.scale == 0.75 and t.tiles == 1 for t in together)
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a.detections.boxes, b.detections.boxes)


@pytest.mark.parametrize("scale", [0.43, 0.75, 1.28, 2.0])
@pytest.mark.parametrize("frame", [(640, 480), (2592, 1944)])
def test_window_is_cut_before_resizing_and_matches_resizing_the_whole_frame(scale, frame):
    """The estimate's window of a large frame: cut first (cheap), the same picture as resizing the
    whole frame and cutting after, to under one source pixel of alignment."""
    w, h = frame
    image = np.zeros((h, w, 3), np.uint8)
    for x, y in [(w // 2, h // 2), (w // 2 + 90, h // 2 - 60)]:  # markers: the centre and off it
        image[y - 6 : y + 6, x - 6 : x + 6] = 255
    size = (480, 384)
    window = scaled_window(image, scale, size)
    whole = resize(image, scale)
    top, left = max(0, (whole.shape[0] - size[1]) // 2), max(0, (whole.shape[1] - size[0]) // 2)
    expected = whole[top : top + size[1], left : left + size[0]]
    assert window.shape == expected.shape

    def centroids(im: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(im[..., 0] > 127)
        right = xs > im.shape[1] / 2 + 45 * scale  # the off-centre marker
        return np.array([[xs[~right].mean(), ys[~right].mean()], [xs[right].mean(), ys[right].mean()]])

    assert np.abs(centroids(window) - centroids(expected)).max() <= max(1.0, scale)


class TwoBoxesPerTile:
    """Every tile: two white-cell boxes on one cell, overlapping at IoU 0.43."""

    class_names = ("RBC", "WBC", "Platelets")
    input_size = (320, 256)

    def __init__(self, iou_threshold) -> None:
        self.post = PostprocessConfig(iou_threshold=iou_threshold)

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        boxes = np.array([[100, 80, 200, 180], [140, 80, 240, 180]], np.float32)
        return Detections(boxes, np.array([1, 1]), np.array([0.9, 0.8]))


def test_tiles_are_merged_with_the_models_per_class_nms():
    image = np.zeros((512, 1280, 3), np.uint8)
    plain, tiles = detect_tiled(TwoBoxesPerTile(0.5), image, 0.05, overlap=64)
    per_class, _ = detect_tiled(TwoBoxesPerTile((0.5, 0.3, 0.5)), image, 0.05, overlap=64)
    assert tiles > 1 and len(plain) == 2 * tiles and len(per_class) == tiles


@pytest.mark.parametrize("cell_size", [3.0, 100000.0])
def test_a_cell_size_outside_the_supported_resize_is_refused_not_clamped(cell_size):
    from bloodcell.errors import ConfigError

    image = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(ConfigError, match=rf"--cell-size {cell_size:g}: .* \(--cell-size 25 to 500\), or use auto"):
        detect_cells(SquareModel(cell_size=100.0), image, 0.05, cell_size)
    assert detect_cells(SquareModel(cell_size=100.0), image, 0.05, 25.0).scale == 4.0  # the edges are allowed


@pytest.mark.parametrize("reference", [74.6, 99.5, 100.0, 33.3])
def test_every_cell_size_the_refusal_names_is_accepted(reference):
    """The range a refusal prints is whole pixels; both ends of it must pass (74.6 / 0.2 is 372.99...)."""
    from bloodcell.errors import ConfigError
    from bloodcell.runtime.scaling import given_scale

    with pytest.raises(ConfigError) as refused:
        given_scale(1e6, reference)
    low, high = map(int, re.search(r"--cell-size (\d+) to (\d+)\)", str(refused.value)).groups())
    assert 0.2 <= given_scale(low, reference) <= 4.0 and 0.2 <= given_scale(high, reference) <= 4.0
    for outside in (low - 1, high + 1, reference / 0.19999, reference / 4.00001):
        with pytest.raises(ConfigError) as just_out:
            given_scale(outside, reference)
        # the refused factor never reads as one of the range's ends (74.3 / 372 is 0.1997x, not "0.2x")
        shown = float(re.search(r"resized ([\d.]+)x", str(just_out.value)).group(1))
        assert not 0.2 <= shown <= 4.0, str(just_out.value)


def test_cells_too_large_to_measure_are_counted_with_a_warning():
    """Cells beyond every scale the estimate tries (here 5x the trained size): no silent fallback."""
    from bloodcell.runtime.scaling import unmeasured_warning

    image, _ = squares(2400, 1800, 500, 100)
    out = detect_cells(SquareModel(), image)
    assert out.estimated and out.scale == 1.0 and out.warning == unmeasured_warning(100.0)
    assert "give their diameter (25-500 px) with --cell-size" in out.warning
    normal, _ = squares(640, 480, 100, 40)
    assert detect_cells(SquareModel(), normal).warning is None
    assert detect_cells(SquareModel(), image, cell_size=500.0).warning is None  # the user said how large
