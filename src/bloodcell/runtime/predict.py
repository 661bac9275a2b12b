"""Prediction as a generator of per-image results, with per-stage timing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodcell.errors import ImageError
from bloodcell.runtime.images import load_image
from bloodcell.types import Detections


@dataclass
class ImageResult:
    """What one image gave: detections at or above ``min_score``; counts use ``conf``."""

    path: Path
    width: int = 0
    height: int = 0
    detections: Detections = field(default_factory=Detections)
    conf: float = 0.5
    class_names: tuple[str, ...] = ()
    timing_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    min_score: float | None = None  # lowest score listed in records (None: all detections)

    @property
    def counts(self) -> dict[str, int]:
        return self.detections.above(self.conf).counts(self.class_names)

    def to_record(self) -> dict:
        """The JSON record of `bloodcell predict --json`."""
        listed = self.detections if self.min_score is None else self.detections.above(self.min_score)
        return {
            "image": self.path.name,
            "width": self.width,
            "height": self.height,
            "counts": self.counts,
            "detections": [
                {
                    "label": self.class_names[int(lab)],
                    "score": round(float(s), 4),
                    "box": [round(float(v), 1) for v in b],
                }
                for b, lab, s in zip(listed.boxes, listed.labels, listed.scores, strict=True)
            ],
        }


def predict_image(predictor, image: np.ndarray, path: Path, conf: float, min_score: float) -> ImageResult:
    t0 = time.perf_counter()
    dets = predictor.predict(image, min_score=min(conf, min_score))
    ms = (time.perf_counter() - t0) * 1000
    h, w = image.shape[:2]
    result = ImageResult(path, w, h, dets, conf, tuple(predictor.class_names), {"inference": ms}, image=image)
    result.min_score = min_score
    return result


def predict_paths(
    predictor, paths: Iterable[Path], conf: float | None = None, min_score: float | None = None, keep_image: bool = True
) -> Iterator[ImageResult]:
    """Yield one ImageResult per path; unreadable files yield a result with ``error`` set."""
    conf = predictor.conf if conf is None else conf
    min_score = conf if min_score is None else min_score
    for path in paths:
        t0 = time.perf_counter()
        try:
            image = load_image(path)
        except ImageError as e:
            yield ImageResult(Path(path), conf=conf, class_names=tuple(predictor.class_names), error=str(e))
            continue
        load_ms = (time.perf_counter() - t0) * 1000
        result = predict_image(predictor, image, Path(path), conf, min_score)
        result.timing_ms["load"] = load_ms
        if not keep_image:
            result.image = None
        yield result
