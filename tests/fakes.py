"""Test doubles for app and runtime tests: a numpy predictor and synthetic slide images.

Tests of what happens around a model (server, watch, video, report, predict outputs, counting) need
*a* predictor, not a trained one: these need neither torch nor the BCCD images. The real models are
checked end to end elsewhere (tests/engine/test_shipped_model.py, tests/export/, test_report's
real-predictions test).
"""

from __future__ import annotations

import itertools
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodcell.runtime.counting import Calibration, Conf
from bloodcell.runtime.postprocess import PostprocessConfig
from bloodcell.runtime.timing import StageTimes
from bloodcell.types import CLASS_NAMES, Detections


class FakePredictor:
    """A ``bloodcell.runtime.predict.Predictor`` whose detections are a pure function of the pixels.

    The image is cut into ``grid`` x ``grid`` cells, each giving one box (the cell's middle half).
    Its class is the cell's strongest colour channel (R, G, B: class 0, 1, 2) and its score that
    channel's mean / 255. So one image always gives the same detections, different images give
    different ones, boxes lie in the image's own pixels like a real predictor's, and any whole-image
    change (a partial decode, another frame) shows in the counts.
    """

    def __init__(
        self,
        conf: Conf = 0.3,
        calibration: Calibration | None = None,
        cell_size: float | None = None,
        class_names: tuple[str, ...] = CLASS_NAMES,
        input_size: tuple[int, int] = (320, 256),
        grid: int = 4,
        metrics: dict | None = None,
    ) -> None:
        self.class_names = tuple(class_names)
        self.input_size = input_size
        self.conf = conf
        self.calibration = calibration
        self.cell_size = cell_size
        self.input_scale = 1.0
        self.post = PostprocessConfig()
        self.grid = grid
        self.metrics = metrics or {}
        self.calls = 0  # predict() calls: servers call from many threads, hence the lock
        self._lock = threading.Lock()
        self.times = StageTimes()
        self.path: Path | None = None  # built in memory, as a Predictor may be
        self.notes: list[str] = []

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        with self._lock:
            self.calls += 1
        with self.times.stage("network"):
            return self._detect(image, min_score)

    def _detect(self, image: np.ndarray, min_score: float) -> Detections:
        h, w = image.shape[:2]
        ys, xs = np.linspace(0, h, self.grid + 1), np.linspace(0, w, self.grid + 1)
        boxes, labels, scores = [], [], []
        for y0, y1 in itertools.pairwise(ys):
            for x0, x1 in itertools.pairwise(xs):
                cell = image[int(y0) : max(int(y1), int(y0) + 1), int(x0) : max(int(x1), int(x0) + 1)]
                means = cell.reshape(-1, 3).mean(axis=0)  # RGB, as load_image and decode give
                channel = int(np.argmax(means))
                labels.append(channel % len(self.class_names))
                scores.append(float(means[channel]) / 255)
                dx, dy = (x1 - x0) / 4, (y1 - y0) / 4
                boxes.append((x0 + dx, y0 + dy, x1 - dx, y1 - dy))
        dets = Detections(boxes, labels, scores)
        keep = np.flatnonzero(dets.scores >= min_score)
        return dets[keep[np.argsort(-dets.scores[keep], kind="stable")]]  # best first, like NMS output

    def describe(self) -> dict:
        return {"name": "fake", "architecture": "fake", "format": "numpy", "metrics": self.metrics}


def slide_image(seed: int, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A synthetic RGB "slide" (width, height): 4 x 4 flat blocks of random colour and brightness, so
    ``FakePredictor``'s scores spread over 0..1 and its counts differ from seed to seed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3)) * rng.uniform(0.1, 1.0, (4, 4, 1))
    return np.asarray(Image.fromarray(blocks.astype(np.uint8)).resize(size, Image.Resampling.NEAREST))


def save_slide(path: Path, seed: int, size: tuple[int, int] = (640, 480)) -> Path:
    """``slide_image`` written to ``path`` (format from its suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(slide_image(seed, size)).save(path)
    return path


def use_fake_model(monkeypatch: pytest.MonkeyPatch, predictor: FakePredictor, path: Path) -> Path:
    """Writes an (empty) model file at ``path`` that ``load_predictor`` answers with ``predictor``,
    wherever bloodcell calls it (so `bloodcell predict/serve/watch --model PATH` run on the fake);
    every other path loads as usual."""
    import bloodcell.app.predict_job  # noqa: F401  (binds load_predictor at import: import it unpatched)
    import bloodcell.runtime.loader as loader

    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    real = loader.load_predictor

    def load_predictor(model=None, *args, **kwargs):
        if model is not None and Path(model) == path:
            return predictor
        return real(model, *args, **kwargs)

    # modules that imported the function by name hold their own reference (the CLI imports it per call);
    # one first imported while patched would keep the fake after the test, hence the import above
    for name, module in list(sys.modules.items()):
        if name.startswith("bloodcell") and vars(module).get("load_predictor") is real:
            monkeypatch.setattr(module, "load_predictor", load_predictor)
    return path
