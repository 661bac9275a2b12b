"""Prediction as a generator of per-image results, with per-stage timing."""

from __future__ import annotations

import math
import numbers
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from bloodcell.errors import ConfigError, ImageError
from bloodcell.runtime.counting import (
    Calibration,
    Conf,
    above,
    class_thresholds,
    count_intervals,
    is_real,
    resolve_conf,
)
from bloodcell.runtime.images import load_image
from bloodcell.runtime.inputs import ImageInput, as_rgb
from bloodcell.runtime.postprocess import PostprocessConfig
from bloodcell.runtime.scaling import ScaledDetections, check_cell_size, detect_cells_batch, parse_cell_size
from bloodcell.runtime.sources import output_names, printable
from bloodcell.runtime.timing import StageTimes
from bloodcell.types import Detections


class Predictor(Protocol):
    """What every model format offers (torch, ONNX, TFLite) and every consumer relies on."""

    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (width, height) of one network pass
    conf: Conf  # operating point(s) for counts, one per class
    calibration: Calibration | None  # score -> P(real cell), for count intervals
    cell_size: float | None  # red-cell diameter (px) the model was trained at
    input_scale: float  # images from the training microscope are resized by this before the network
    times: StageTimes  # letterbox / network / decode time of the passes since last taken
    post: PostprocessConfig  # decoding and NMS settings (per-class IoU thresholds)
    path: Path | None  # the model file it was loaded from (None: built in memory); results name the model by it
    notes: list[str]  # what the model file says about itself (an int8 export not refitted, ...), said at load

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections:
        """One network pass on an (H, W, 3) uint8 RGB image, as is (no cell-size rescaling, no counts):
        every detection scoring ``min_score`` or more. ``bloodcell.predict`` is what counts cells."""
        ...

    def describe(self) -> dict:
        """What the model is: ``{"name", "architecture", "format" ("pytorch"/"onnx"/"tflite"), "metrics"}``."""
        ...


@dataclass
class ImageResult:
    """What one image gave: detections at or above ``min_score``; counts use ``conf`` (per class).

    ``intervals``: per class, the 90% interval of the number of cells (None without calibration).
    ``scale``: the factor the image was resized by so its cells matched the model's trained size.
    ``exposure_gains``: what each channel was multiplied by before detection (a dark or colour-cast field).
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
    exposure_gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per channel, before detection (exposure)
    name: str | None = None  # how outputs name the image (relative path); default: the file name
    warnings: list[str] = field(default_factory=list)  # what makes these counts doubtful (e.g. no colour)

    @property
    def ok(self) -> bool:
        """False when the image could not be read: ``error`` says why, and it has no counts."""
        return self.error is None

    @property
    def counted(self) -> Detections:
        """The detections at or above their class's operating point: the boxes that are counted.
        ImageError for an image that failed (zero cells would read as a count)."""
        if self.error is not None:
            raise ImageError(self.error)
        return above(self.detections, self.conf, len(self.class_names))

    @property
    def counts(self) -> dict[str, int]:
        """Cells per class name: the boxes at or above each class's operating point (``conf``).
        ImageError for an image that failed (zero cells would read as a count)."""
        return self.counted.counts(self.class_names)

    @property
    def label(self) -> str:
        """How outputs name the image: ``name`` (a relative path where file names repeat), else the file name,
        as text any output can hold (``printable``)."""
        return self.name or printable(self.path.name)

    def to_record(self) -> dict:
        """The JSON record of `bloodcell predict --json` (without its absolute ``path``); an image that
        failed is ``{"image", "error"}``, with no counts."""
        if self.error is not None:
            return {"image": self.label, "error": printable(self.error)}  # it may quote the path
        listed = self.detections if self.min_score is None else self.detections.above(self.min_score)
        record = {
            "image": self.label,
            "width": self.width,
            "height": self.height,
            "counts": self.counts,
            "count_intervals": None if self.intervals is None else {k: list(v) for k, v in self.intervals.items()},
            "conf": [round(float(v), 4) for v in class_thresholds(self.conf, len(self.class_names))],
            "scale": round(self.scale, 4),
            "exposure_gains": [round(g, 3) for g in self.exposure_gains],
            "warnings": list(self.warnings),
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


def _result(
    predictor: Predictor,
    image: np.ndarray,
    path: Path,
    conf: Conf,
    min_score: float,
    keep: float,
    scaled: ScaledDetections,
) -> ImageResult:
    dets = scaled.detections
    counts = above(dets, conf, len(predictor.class_names)).counts(tuple(predictor.class_names))
    intervals = count_intervals(dets, tuple(predictor.class_names), predictor.calibration, counts)
    dets = dets[dets.scores >= keep] if len(dets) else dets
    h, w = image.shape[:2]
    result = ImageResult(path, w, h, dets, conf, tuple(predictor.class_names), {}, image=image)
    result.min_score = min_score
    result.intervals = intervals
    result.scale = scaled.scale
    if scaled.exposure is not None:
        result.exposure_gains = scaled.exposure.gains
        if scaled.exposure.warning:
            result.warnings.append(scaled.exposure.warning)
    if is_grayscale(image):
        result.warnings.append(GRAYSCALE_WARNING)
    if min(image.shape[:2]) < TINY_SIDE:
        h, w = image.shape[:2]
        result.warnings.append(TINY_WARNING.format(w=w, h=h))
    if scaled.warning:
        result.warnings.append(scaled.warning)
    return result


GRAYSCALE_WARNING = (
    "grayscale image: the model tells white cells and platelets apart by their stain's colour, so their counts "
    "and intervals here are doubtful"
)
# Under a platelet's size (~39 px on the training microscope): a thumbnail or an icon, not a field of view,
# whose zero counts would pull a slide's mean per field down unseen.
TINY_SIDE = 32
TINY_WARNING = "image of {w}x{h} px: smaller than a cell, not a field of view (a thumbnail?)"


def is_grayscale(image: np.ndarray) -> bool:
    """True when every pixel has R == G == B (sampled every 4th row and column: a converted gray image
    is equal everywhere, a colour photo differs almost everywhere)."""
    sample = image[::4, ::4]
    return bool(np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2]))


def predict_image(
    predictor: Predictor,
    image: np.ndarray,
    path: Path,
    conf: Conf,
    min_score: float | None = None,
    cell_size: float | str | None = "auto",
) -> ImageResult:
    """Detect and count cells in one (H, W, 3) uint8 RGB image. ``min_score``: the lowest score that the
    result's record lists (default: the lowest operating point); ``detections`` keep every counted box
    whatever it is, so that ``counts`` and the drawn boxes agree."""
    return predict_images(predictor, [image], [path], conf, min_score, cell_size)[0]


def predict_images(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    paths: Sequence[Path],
    conf: Conf,
    min_score: float | None = None,
    cell_size: float | str | None = "auto",
) -> list[ImageResult]:
    """``predict_image`` for several images at once: batched network passes where the predictor
    offers ``predict_batch`` (the torch predictor), one by one otherwise. Same results either way."""
    t0 = time.perf_counter()
    predictor.times.take()  # only this call's passes
    lowest_conf = float(class_thresholds(conf, len(predictor.class_names)).min())
    min_score = lowest_conf if min_score is None else min_score
    keep = min(lowest_conf, min_score)  # the boxes a result lists: counted ones and those down to min_score
    # ...and the calibration's floor: the intervals use every box above it.
    lowest = min(keep, predictor.calibration.floor if predictor.calibration else 1.0)
    scaled = detect_cells_batch(predictor, images, lowest, cell_size=cell_size, reference=predictor.cell_size)
    results = [
        _result(predictor, im, Path(p), conf, min_score, keep, s)
        for im, p, s in zip(images, paths, scaled, strict=True)
    ]
    n = max(1, len(images))
    stages = {k: v / n for k, v in predictor.times.take().items()}  # a batch's time, shared out
    ms = (time.perf_counter() - t0) * 1000 / n
    for r in results:
        r.timing_ms.update(stages, inference=ms)
    return results


def _timed_load(path: Path) -> tuple[np.ndarray | ImageError, float]:
    t0 = time.perf_counter()
    try:
        image: np.ndarray | ImageError = load_image(path)
    except ImageError as e:
        image = e
    return image, (time.perf_counter() - t0) * 1000


def load_ahead(
    paths: Iterable[Path], workers: int, depth: int
) -> Iterator[tuple[Path, np.ndarray | ImageError, float]]:
    """Decode images in ``workers`` threads (Pillow releases the GIL), at most ``depth`` ahead, in order."""
    if workers <= 1:
        for path in paths:
            yield (Path(path), *_timed_load(Path(path)))
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="bloodcell-load") as pool:
        pending: deque = deque()
        for path in paths:
            pending.append((Path(path), pool.submit(_timed_load, Path(path))))
            if len(pending) >= depth:
                p, fut = pending.popleft()
                yield (p, *fut.result())
        while pending:
            p, fut = pending.popleft()
            yield (p, *fut.result())


def predict_paths(
    predictor: Predictor,
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    conf: Conf | Mapping[str, float] | str | None = None,
    min_score: float | None = None,
    keep_image: bool = True,
    cell_size: float | str | None = "auto",
    batch: int = 1,
    load_workers: int = 1,
) -> Iterator[ImageResult]:
    """Yield one ImageResult per image file, in order (a generator: images are read as it is consumed);
    a file that cannot be read yields a result with ``error`` set and no counts.

    ``conf``: operating points (see ``resolve_conf``; None: the model's); ``min_score``: the lowest score
    records list; ``cell_size``: red-cell diameter in pixels, "auto" (estimated per image) or None (no
    estimate: the model's input scale); ``keep_image``: keep the decoded pixels on the result (for
    drawing); ``batch``: images per network pass (worth it on a GPU); ``load_workers``: decoding threads.
    """
    check_predictor(predictor)
    if isinstance(paths, (np.ndarray, Image.Image)) or paths is None:
        raise ImageError(f"paths: expected image file paths, not {type(paths).__name__} (arrays go to predict)")
    names = tuple(predictor.class_names)
    conf = resolve_conf(conf, names, predictor.conf)  # checked now, not at the first image
    min_score = check_min_score(min_score)
    cell_size = api_cell_size(predictor, cell_size)
    check_count("batch", batch, "images")
    check_count("load_workers", load_workers, "threads")
    if isinstance(paths, (str, os.PathLike)):  # one file, not its name's characters
        paths = [paths]
    min_score = float(class_thresholds(conf, len(names)).min()) if min_score is None else min_score
    loaded = load_ahead((Path(p) for p in paths), load_workers, depth=max(2 * batch, 2 * load_workers))
    return _predict_loaded(predictor, loaded, conf, min_score, keep_image, cell_size, batch)


def _predict_loaded(
    predictor: Predictor,
    loaded: Iterator[tuple[Path, np.ndarray | ImageError, float]],
    conf: Conf,
    min_score: float,
    keep_image: bool,
    cell_size: float | str | None,
    batch: int,
) -> Iterator[ImageResult]:
    while True:
        group = list(islice(loaded, batch))
        if not group:
            return
        good = [(p, im, ms) for p, im, ms in group if not isinstance(im, ImageError)]
        results = iter(
            predict_images(predictor, [g[1] for g in good], [g[0] for g in good], conf, min_score, cell_size)
        )
        for path, image, load_ms in group:
            if isinstance(image, ImageError):
                yield ImageResult(path, conf=conf, class_names=tuple(predictor.class_names), error=str(image))
                continue
            result = next(results)
            result.timing_ms["load"] = load_ms
            if not keep_image:
                result.image = None
            yield result


def check_min_score(min_score: float | None) -> float | None:
    """The API's ``min_score``: None or a score in [0, 1]; ConfigError otherwise."""
    if min_score is not None and not (is_real(min_score) and 0.0 <= min_score <= 1.0):
        raise ConfigError(f"min_score={min_score!r}: expected a score from 0 to 1, or None")
    return min_score


def api_cell_size(predictor: Predictor, cell_size: float | str | None) -> float | str | None:
    """The API's ``cell_size``: "auto", None (or "none": no estimate) or a red-cell diameter in pixels
    that this model can honour; ConfigError otherwise."""
    if isinstance(cell_size, str):
        cell_size = parse_cell_size(cell_size, "cell_size")
    elif cell_size is not None and not (is_real(cell_size) and 0 < cell_size < math.inf):
        raise ConfigError(f"cell_size={cell_size!r}: expected 'auto', None or a diameter in pixels > 0")
    check_cell_size(predictor, cell_size, "cell_size")
    return cell_size


def check_predictor(predictor: object, name: str = "predictor") -> None:
    """ConfigError unless ``predictor`` is a loaded model (a file name is loaded once, by load_predictor)."""
    if not hasattr(predictor, "predict") or not hasattr(predictor, "class_names"):
        what = f"{predictor!r}" if isinstance(predictor, (str, os.PathLike)) else type(predictor).__name__
        raise ConfigError(
            f"{name}: expected a loaded model, got {what}; load it once with bloodcell.load_predictor(...) "
            "and pass that"
        )


def predict(
    predictor: Predictor,
    images: ImageInput | Sequence[ImageInput],
    *,
    conf: Conf | Mapping[str, float] | str | None = None,
    min_score: float | None = None,
    cell_size: float | str | None = "auto",
    batch: int = 1,
) -> list[ImageResult]:
    """Detect and count cells in one image or a list of them; one ImageResult each, in order.

    An image is a file path, a PIL image, or a numpy array: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA,
    uint8, uint16 or float in 0..1 (OpenCV's BGR arrays: convert with cv2.cvtColor first). An array or
    PIL image that cannot be an image raises ImageError before any work; a file that cannot be read gives
    a result with ``error`` set (``ok`` is False and its ``counts`` raise), and the others are counted.

    ``predictor``: from ``load_predictor`` (the shipped model, or a .pt/.onnx/.tflite file; load it once
    for many calls). ``conf``: operating points, one number, one per class or ``{"RBC": 0.4}``
    (None: the model's own); ``min_score``: the lowest score records list; ``cell_size``: the red-cell
    diameter in pixels, "auto" (estimated per image, as the CLI does) or None (no estimate: the model's
    input scale, right for its training microscope's images); ``batch``: images per network pass (worth
    it on a GPU). Results keep their image's pixels (``image``, for ``annotate``); a file's label is its
    name, or its path from the files' common folder where two files share a name. Folders are not
    searched (the CLI's ``predict`` does that).
    """
    check_predictor(predictor)
    if isinstance(images, (bytes, bytearray)):
        raise ImageError("images: bytes are not an image; give a file path, a PIL image or an array")
    if images is None:
        raise ImageError("images: None; give a file path, a PIL image, an array or a list of them")
    one = isinstance(images, (str, os.PathLike, np.ndarray, Image.Image))
    items: list[ImageInput] = [images] if one else list(images)  # type: ignore[list-item]
    thresholds = resolve_conf(conf, tuple(predictor.class_names), predictor.conf)
    min_score = check_min_score(min_score)
    cell_size = api_cell_size(predictor, cell_size)
    check_count("batch", batch, "images")
    is_file = [isinstance(im, (str, os.PathLike)) for im in items]
    arrays = {i: as_rgb(im, f"image {i}") for i, im in enumerate(items) if not is_file[i]}  # all checked first
    files = [Path(im) for im, f in zip(items, is_file, strict=True) if f]  # type: ignore[arg-type]
    labels = dict(zip(files, output_names(files), strict=True))  # a/f01.jpg and b/f01.jpg: two labels
    from_files = iter(predict_paths(predictor, files, thresholds, min_score, True, cell_size, batch) if files else ())
    keys = list(arrays)
    in_memory = (
        result
        for start in range(0, len(keys), batch)  # no more pixels per pass than batch asks for (GPU memory)
        for result in predict_images(
            predictor,
            [arrays[i] for i in keys[start : start + batch]],
            [Path(f"image {i}") for i in keys[start : start + batch]],
            thresholds,
            min_score,
            cell_size,
        )
    )
    results = []
    for i in range(len(items)):
        result = next(from_files) if is_file[i] else next(in_memory)
        if is_file[i]:
            result.name = labels[result.path]
        results.append(result)
    return results


def check_count(name: str, value: int, unit: str) -> int:
    """An API count (``batch``, ``load_workers``): an int of 1 or more; ConfigError naming it otherwise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r}: expected a whole number of {unit}, 1 or more")
    return int(value)
