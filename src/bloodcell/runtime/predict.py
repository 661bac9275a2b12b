"""Prediction as a generator of per-image results, with per-stage timing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from bloodcell.errors import ImageError
from bloodcell.runtime.counting import Calibration, Conf, above, class_thresholds, count_intervals
from bloodcell.runtime.images import load_image
from bloodcell.runtime.scaling import detect_cells
from bloodcell.types import Detections


class Predictor(Protocol):
    """What every model format offers (torch, ONNX, TFLite) and every consumer relies on."""

    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (width, height) of one network pass
    conf: Conf  # operating point(s) for counts, one per class
    calibration: Calibration | None  # score -> P(real cell), for count intervals
    cell_size: float | None  # red-cell diameter (px) the model was trained at

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections: ...

    def describe(self) -> dict:
        """What the model is: ``{"name", "architecture", "format" ("pytorch"/"onnx"/"tflite"), "metrics"}``."""
        ...


@dataclass
class ImageResult:
    """What one image gave: detections at or above ``min_score``; counts use ``conf`` (per class).

    ``intervals``: per class, the 90% interval of the number of cells (None without calibration).
    ``scale``: the factor the image was resized by so its cells matched the model's trained size.
    """

    path: Path
    width: int = 0
    height: int = 0
    detections: Detections = field(default_factory=Detections)
    conf: Conf = 0.5
    class_names: tuple[str, ...] = ()
    timing_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    min_score: float | None = None  # lowest score listed in records (None: all detections)
    intervals: dict[str, tuple[int, int]] | None = None
    scale: float = 1.0
    name: str | None = None  # how outputs name the image (relative path); default: the file name

    @property
    def counted(self) -> Detections:
        """The detections at or above their class's operating point: the boxes that are counted."""
        return above(self.detections, self.conf, len(self.class_names))

    @property
    def counts(self) -> dict[str, int]:
        return self.counted.counts(self.class_names)

    @property
    def label(self) -> str:
        return self.name or self.path.name

    def to_record(self) -> dict:
        """The JSON record of `bloodcell predict --json`."""
        listed = self.detections if self.min_score is None else self.detections.above(self.min_score)
        record = {
            "image": self.label,
            "width": self.width,
            "height": self.height,
            "counts": self.counts,
            "count_intervals": None if self.intervals is None else {k: list(v) for k, v in self.intervals.items()},
            "conf": [round(float(v), 4) for v in class_thresholds(self.conf, len(self.class_names))],
            "scale": round(self.scale, 4),
            "detections": [
                {
                    "label": self.class_names[int(lab)],
                    "score": round(float(s), 4),
                    "box": [round(float(v), 1) for v in b],
                }
                for b, lab, s in zip(listed.boxes, listed.labels, listed.scores, strict=True)
            ],
        }
        return record


def predict_image(
    predictor: Predictor,
    image: np.ndarray,
    path: Path,
    conf: Conf,
    min_score: float | None = None,
    cell_size: float | str | None = "auto",
) -> ImageResult:
    """Detect and count cells in one RGB image. ``min_score``: the lowest score kept in the result
    (default: the lowest operating point, so exactly the counted boxes and their classes' peers)."""
    t0 = time.perf_counter()
    thresholds = class_thresholds(conf, len(predictor.class_names))
    min_score = float(thresholds.min()) if min_score is None else min_score
    calibration = getattr(predictor, "calibration", None)
    lowest = min(float(thresholds.min()), min_score, calibration.floor if calibration else 1.0)
    scaled = detect_cells(
        predictor, image, lowest, cell_size=cell_size, reference=getattr(predictor, "cell_size", None)
    )
    dets = scaled.detections
    counts = above(dets, conf, len(predictor.class_names)).counts(tuple(predictor.class_names))
    intervals = count_intervals(dets, tuple(predictor.class_names), calibration, counts)
    keep = min(float(thresholds.min()), min_score)
    dets = dets[dets.scores >= keep] if len(dets) else dets
    ms = (time.perf_counter() - t0) * 1000
    h, w = image.shape[:2]
    result = ImageResult(path, w, h, dets, conf, tuple(predictor.class_names), {"inference": ms}, image=image)
    result.min_score = min_score
    result.intervals = intervals
    result.scale = scaled.scale
    return result


def predict_paths(
    predictor: Predictor,
    paths: Iterable[Path],
    conf: Conf | None = None,
    min_score: float | None = None,
    keep_image: bool = True,
    cell_size: float | str | None = "auto",
) -> Iterator[ImageResult]:
    """Yield one ImageResult per path; unreadable files yield a result with ``error`` set."""
    conf = predictor.conf if conf is None else conf
    min_score = float(class_thresholds(conf, len(predictor.class_names)).min()) if min_score is None else min_score
    for path in paths:
        t0 = time.perf_counter()
        try:
            image = load_image(path)
        except ImageError as e:
            yield ImageResult(Path(path), conf=conf, class_names=tuple(predictor.class_names), error=str(e))
            continue
        load_ms = (time.perf_counter() - t0) * 1000
        result = predict_image(predictor, image, Path(path), conf, min_score, cell_size)
        result.timing_ms["load"] = load_ms
        if not keep_image:
            result.image = None
        yield result
