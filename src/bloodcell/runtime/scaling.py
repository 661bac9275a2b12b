"""Cells at the size the model learned: scale estimate, rescaling and tiled inference (numpy only).

Another microscope means another magnification and camera: red cells of 50 px or 200 px where
the model learned ~100 px, in frames from 320x240 to 2592x1944. Squeezing such a frame into the
640x480 input (letterboxing) makes cells tiny; feeding cells at twice the size makes red cells
look like white ones. So before detection the image is rescaled by

    scale = reference RBC diameter (stored in the model, measured on its val images) / RBC diameter here

where the diameter here is given (``cell_size=PX``) or estimated (``"auto"``): the median size of
the confident red cells found in a central window at scale 1 (tried at 0.5x and 2x too when too
few are found). The rescaled image is padded onto the input canvas (never resized again) or,
when larger, cut into overlapping tiles; each tile keeps the cells whose centre lies in the part
it owns, and a final NMS merges the rest. For a 640x480 frame at the trained scale this is a
single pass, the same as plain prediction.

Hand-written because it needs the detector in the loop (the scale comes from its detections);
slicing libraries (SAHI) assume a fixed scale and bring torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from bloodcell import boxes as box_ops
from bloodcell.errors import ConfigError
from bloodcell.runtime.counting import Conf, ConfigValueError, class_thresholds
from bloodcell.runtime.exposure import Exposure, normalize_exposure
from bloodcell.runtime.postprocess import PostprocessConfig
from bloodcell.types import Detections

#: Within this factor of the reference size, cells count as "at the trained scale" (no resampling);
#: per-image estimates on BCCD val images (all at the trained scale) span 0.84-1.12 (BENCHMARKS.md).
TOLERANCE = 1.2
PROBE_SCALES = (0.5, 2.0)
MIN_CELLS = 3
SCALE_RANGE = (0.2, 4.0)


class RawPredictor(Protocol):
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    conf: Conf
    post: PostprocessConfig  # NMS threshold(s): tiles are merged with the model's own

    def predict(self, image: np.ndarray, min_score: float = 0.001) -> Detections: ...


@dataclass(frozen=True)
class ScaledDetections:
    detections: Detections  # in the pixels of the original image
    scale: float  # factor the image was resized by before detection
    tiles: int  # network passes for the final detections
    estimated: bool  # scale came from the automatic estimate
    warning: str | None = None  # why the estimate's scale is doubtful (too few red cells, out of range)
    exposure: Exposure | None = None  # the field's background and the per-channel gains it was detected at


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` resized by ``scale``: bilinear (0.2 ms for a 640x480 frame at 0.75x, where Pillow's
    antialiased bilinear takes 3 ms, more than the rest of the pipeline around the network), area
    averaging when shrinking by more than 2x, where plain bilinear would alias."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=interpolation)


#: A rescaled image larger than this is not made whole: each tile is resampled from the source on
#: its own (a 50 MP frame with small cells, at 4x, would take 2.4 GB; a tile 0.6 MB).
MAX_RESIZED_PIXELS = 64_000_000


class Rescaled:
    """``image`` resized by ``scale`` as ``resize`` would, read by ``detect_tiled`` one tile at a time:
    resized whole when that is small, else each slice bilinearly from the source (within one grey
    level of the whole resize: the same pixel-centre mapping, OpenCV's coarser position steps)."""

    def __init__(self, image: np.ndarray, scale: float) -> None:
        h, w = image.shape[:2]
        self.size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = scale <= 1 or self.size[0] * self.size[1] <= MAX_RESIZED_PIXELS  # shrinking: never above the source
        self.whole = resize(image, scale) if small else None
        self.source = None if small else np.ascontiguousarray(image)  # cv2 needs it; once, not per tile

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size[1], self.size[0], 3

    def __getitem__(self, window: tuple[slice, slice]) -> np.ndarray:
        if self.whole is not None:
            return self.whole[window]
        rows, cols = window
        y0, y1, _ = rows.indices(self.size[1])
        x0, x1, _ = cols.indices(self.size[0])
        (sh, sw), (w, h) = self.source.shape[:2], self.size
        sx, sy = sw / w, sh / h  # cv2.resize's mapping: source = (target + 0.5) * s - 0.5
        inverse = np.array([[sx, 0, (x0 + 0.5) * sx - 0.5], [0, sy, (y0 + 0.5) * sy - 0.5]])
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(self.source, inverse, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _pad_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if image.shape[1] == w and image.shape[0] == h:
        return image
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    return canvas


def _windows(predictor: RawPredictor, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
    """One network pass per image no larger than the input: padded, never resized; batched when
    the predictor can (``predict_batch``: the torch predictor on a GPU)."""
    padded = [_pad_to(im, predictor.input_size) for im in images]
    batch = getattr(predictor, "predict_batch", None)
    found = batch(padded, min_score=min_score) if batch else [predictor.predict(p, min_score=min_score) for p in padded]
    return [
        Detections(box_ops.clip(d.boxes, im.shape[1], im.shape[0]), d.labels, d.scores)
        for d, im in zip(found, images, strict=True)
    ]


def _window(predictor: RawPredictor, image: np.ndarray, min_score: float) -> Detections:
    return _windows(predictor, [image], min_score)[0]


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def tile_overlap(reference: float | None, input_size: tuple[int, int]) -> int:
    """Tiles overlap by this many pixels: a white cell (~2 red diameters) fits in the overlap."""
    return round(2 * (reference or 0.2 * min(input_size)))


def tile_passes(image_size: tuple[int, int], input_size: tuple[int, int], overlap: int) -> int:
    """How many network passes ``detect_tiled`` makes for an image of ``image_size`` (width, height)."""
    (w, h), (tw, th) = image_size, input_size
    if w <= tw and h <= th:
        return 1
    overlap = min(overlap, tw // 2, th // 2)
    return len(_starts(w, tw, tw - overlap)) * len(_starts(h, th, th - overlap))


def detect_tiled(
    predictor: RawPredictor,
    image: np.ndarray | Rescaled,
    min_score: float,
    overlap: int,
    iou_threshold: float | Sequence[float] | None = None,
) -> tuple[Detections, int]:
    """Detections on an image of any size at its current scale, and the number of passes; tiles are
    merged with ``iou_threshold`` (default: the predictor's own NMS threshold(s))."""
    if iou_threshold is None:
        iou_threshold = predictor.post.iou_threshold
    h, w = image.shape[:2]
    tw, th = predictor.input_size
    if w <= tw and h <= th:
        return _window(predictor, image[:, :], min_score), 1
    overlap = min(overlap, tw // 2, th // 2)
    xs, ys = _starts(w, tw, tw - overlap), _starts(h, th, th - overlap)
    parts = []
    for y in ys:
        for x in xs:
            dets = _window(predictor, image[y : y + th, x : x + tw], min_score)
            b = dets.boxes + np.array([x, y, x, y], np.float32)
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            # Owned region: split each overlap at its middle; the image border belongs to the edge tile.
            x0 = 0 if x == xs[0] else x + overlap / 2
            x1 = w if x == xs[-1] else x + tw - overlap / 2
            y0 = 0 if y == ys[0] else y + overlap / 2
            y1 = h if y == ys[-1] else y + th - overlap / 2
            own = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
            parts.append(Detections(b[own], dets.labels[own], dets.scores[own]))
    merged = Detections.concat(parts)
    keep = box_ops.batched_nms(merged.boxes, merged.scores, merged.labels, iou_threshold)
    return merged[keep], len(xs) * len(ys)


def _central(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    ih, iw = image.shape[:2]
    top, left = max(0, (ih - h) // 2), max(0, (iw - w) // 2)
    return image[top : top + h, left : left + w]


def _prior(predictor: RawPredictor) -> float:
    """The scale for images from the training microscope (the model's input scale)."""
    return float(getattr(predictor, "input_scale", 1.0) or 1.0)


def _fits(image: np.ndarray, scale: float, size: tuple[int, int]) -> bool:
    """Whether ``image`` resized by ``scale`` is one window of ``size``."""
    h, w = image.shape[:2]
    return max(1, round(w * scale)) <= size[0] and max(1, round(h * scale)) <= size[1]


def rbc_sizes(dets: Detections, threshold: float) -> np.ndarray:
    """Diameters (sqrt of box area) of the red cells (label 0) scored at least ``threshold``: how cell size
    is measured, on new images here and on val when a model's reference size is fitted."""
    sel = (dets.labels == 0) & (dets.scores >= threshold)
    return np.sqrt(np.prod(np.clip(dets.boxes[sel, 2:] - dets.boxes[sel, :2], 0, None), axis=1))


def scaled_window(image: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """The central ``size`` window of ``image`` resized by ``scale``, cut before resizing (a frame
    can be far larger than the window: resizing all of a 2592x1944 frame to look at 480x384 of it
    would cost more than the network pass)."""
    if scale == 1.0:
        return _central(image, size)
    w, h = size
    around = _central(image, (int(np.ceil(w / scale)) + 1, int(np.ceil(h / scale)) + 1))
    return _central(resize(around, scale), size)


def _measure(predictor: RawPredictor, image: np.ndarray, scale: float, rbc_conf: float) -> tuple[float | None, int]:
    """Red-cell diameter in ``image``'s pixels seen in the central window at ``scale`` (None if
    fewer than MIN_CELLS), and how many red cells were seen."""
    sizes = rbc_sizes(_window(predictor, scaled_window(image, scale, predictor.input_size), 0.05), rbc_conf)
    return (float(np.median(sizes)) / scale if len(sizes) >= MIN_CELLS else None), len(sizes)


def model_window(image: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """What the network sees of ``image`` at ``scale``: the central ``size`` window, zero-padded to
    it (int8 calibration images, so the ranges are those of real passes)."""
    return _pad_to(scaled_window(image, scale, size), size)


def _prior_window(predictor: RawPredictor, image: np.ndarray) -> np.ndarray:
    """The central input-sized window of ``image`` at the prior scale."""
    return scaled_window(image, _prior(predictor), predictor.input_size)


def _cell_size_range(reference: float) -> tuple[int, int]:
    """The whole-pixel --cell-size values ``given_scale`` accepts (rounded inwards: every one shown is accepted)."""
    return math.ceil(reference / SCALE_RANGE[1] - 1e-9), math.floor(reference / SCALE_RANGE[0] + 1e-9)


def _supported(reference: float) -> str:
    low, high = _cell_size_range(reference)
    return f"{low}-{high} px"


def unmeasured_warning(reference: float) -> str:
    """The estimate found fewer than MIN_CELLS red cells at every scale it tried."""
    return (
        "too few red cells to measure their size: counted at the model's own scale; if the cells look much "
        f"larger or smaller than in the training images, give their diameter ({_supported(reference)}) with "
        "--cell-size (serve: at start; the API: its cell_size option), resizing images with larger or smaller "
        "cells into that range first"
    )


def _out_of_range_warning(diameter: float, reference: float) -> str:
    return (
        f"red cells measured about {diameter:.0f} px across, outside the {_supported(reference)} this model can "
        "rescale to its trained size: counted at the nearest supported scale, counts may be wrong"
    )


def estimate_scale(
    predictor: RawPredictor,
    image: np.ndarray,
    reference: float,
    min_score: float = 0.001,
    native: Detections | None = None,
) -> tuple[float, Detections | None, str | None]:
    """Scale that brings this image's red cells to ``reference`` px, and, when the image is one
    window at that scale, the detections of that pass in the resized image's pixels (so no second
    pass is needed), and a warning when the scale could not be measured or lies outside SCALE_RANGE.

    The first look is at the model's prior scale (its input scale: right for images from the
    training microscope, so those take one pass). Cells far from the trained size come back with
    boxes biased towards it, so an estimate away from the prior is measured once more at the scale
    it proposes (one more window pass). ``native``: the detections of the central window at the
    prior scale when already computed (batches)."""
    prior = _prior(predictor)
    rbc_conf = float(class_thresholds(predictor.conf, len(predictor.class_names))[0])
    whole = _fits(image, prior, predictor.input_size)
    native = _window(predictor, _prior_window(predictor, image), min_score) if native is None else native
    sizes = rbc_sizes(native, rbc_conf)
    if len(sizes) >= MIN_CELLS:
        diameter: float | None = float(np.median(sizes)) / prior
    else:  # cells too small or too large to be found at the prior scale: try half and twice that
        probes = (prior * p for p in PROBE_SCALES)
        diameter, _ = max((_measure(predictor, image, p, rbc_conf) for p in probes), key=lambda m: m[1])
    if diameter is None:  # no red cells to measure: as the training microscope's
        return prior, native if whole else None, unmeasured_warning(reference)
    scale = float(np.clip(reference / diameter, *SCALE_RANGE))
    if 1 / TOLERANCE <= scale / prior <= TOLERANCE:
        return prior, native if whole else None, None
    refined, _ = _measure(predictor, image, scale, rbc_conf)
    if refined is not None:
        diameter = refined
        scale = float(np.clip(reference / refined, *SCALE_RANGE))
    outside = not SCALE_RANGE[0] <= reference / diameter <= SCALE_RANGE[1]
    return scale, None, _out_of_range_warning(diameter, reference) if outside else None


def detect_cells(
    predictor: RawPredictor,
    image: np.ndarray,
    min_score: float = 0.001,
    cell_size: float | str | None = "auto",
    reference: float | None = None,
    native: Detections | None = None,
) -> ScaledDetections:
    """Detections in ``image``'s own pixels with cells brought to the trained size.

    ``cell_size``: "auto" (estimate), a red-cell diameter in pixels, or None (no estimate: the
    model's input scale, right for the training microscope's images; tiles when the image is larger
    than the input). ``reference``: the red-cell diameter the model knows in network pixels (default:
    ``predictor.cell_size``; a model that records none is letterboxed as is).
    ``native``: see ``estimate_scale``. A dark or colour-cast image is first brought to the training
    images' background (``runtime.exposure``).
    """
    image, exposure = normalize_exposure(image)
    return _detect_exposed(predictor, image, exposure, min_score, cell_size, reference, native)


def _detect_exposed(
    predictor: RawPredictor,
    image: np.ndarray,
    exposure: Exposure,
    min_score: float,
    cell_size: float | str | None,
    reference: float | None,
    native: Detections | None = None,
) -> ScaledDetections:
    """``detect_cells`` on an image whose exposure is already normalized (``native`` seen on it)."""
    reference = reference or getattr(predictor, "cell_size", None)
    prior = _prior(predictor)
    if reference is None and cell_size in ("auto", None) and prior == 1.0:
        # A model that records no trained cell size (made before bloodcell 0.2, or a torchvision
        # detector): letterboxed into its input as it always was.
        return ScaledDetections(predictor.predict(image, min_score=min_score), 1.0, 1, False, exposure=exposure)
    estimated, scale, first, warning = False, prior, None, None
    if cell_size == "auto" and reference is not None:
        scale, first, warning = estimate_scale(predictor, image, reference, min_score, native)
        estimated = True
    elif cell_size not in ("auto", None):
        scale = given_scale(float(cell_size), reference)
    elif native is not None and _fits(image, prior, predictor.input_size):
        first = native  # the batched prior pass saw the whole image at the model's scale
    h, w = image.shape[:2]
    if first is not None:
        dets = first
        passes = 1
    else:
        overlap = tile_overlap(reference, predictor.input_size)
        dets, passes = detect_tiled(predictor, Rescaled(image, scale), min_score, overlap)
    boxes = box_ops.clip(dets.boxes / scale, w, h) if scale != 1.0 else dets.boxes
    return ScaledDetections(Detections(boxes, dets.labels, dets.scores), scale, passes, estimated, warning, exposure)


def _option(flag: str, value: str) -> str:
    """How a user wrote the option: ``--cell-size 90`` on the command line, ``cell_size=90`` in a query."""
    return f"{flag} {value}" if flag.startswith("-") else f"{flag}={value}"


def parse_cell_size(text: str, flag: str = "") -> float | str | None:
    """``--cell-size`` text: 'auto', 'none' (None: as is) or a red-cell diameter in pixels > 0;
    ConfigValueError otherwise, naming ``flag`` if given (argparse names it itself; whether this model
    can honour a diameter: ``check_cell_size``)."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        named = f"{flag} {text!r}" if flag else repr(text)
        raise ConfigValueError(f"{named}: expected 'auto', 'none' or a diameter in pixels > 0")
    return value


def check_cell_size(predictor: RawPredictor, cell_size: float | str | None, flag: str = "--cell-size") -> None:
    """ConfigError now for a ``--cell-size`` this model cannot honour (long-running commands call it
    once after loading the model, instead of failing on every image); ``flag`` names it in the error."""
    if cell_size not in ("auto", None):
        given_scale(float(cell_size), getattr(predictor, "cell_size", None), flag)


def given_scale(cell_size: float, reference: float | None, flag: str = "--cell-size") -> float:
    """The resize factor that a user's ``--cell-size`` asks for; ConfigError outside ``SCALE_RANGE``
    (a typo like 3 or 100000 would be clamped into a count of the wrong cells, not refused), or for a
    model that records no trained cell size to compare with."""
    if reference is None:
        raise ConfigError(f"{flag} needs a model that records its trained cell size; use 'auto' or 'none'")
    scale = reference / cell_size
    if not SCALE_RANGE[0] - 1e-9 <= scale <= SCALE_RANGE[1] + 1e-9:  # 74.6 / 373 is 0.1999...: at the edge
        low, high = _cell_size_range(reference)
        digits = 3  # as many as put the factor outside the range it is refused by (0.1997x, not 0.2x)
        while SCALE_RANGE[0] <= float(f"{scale:.{digits}g}") <= SCALE_RANGE[1] and digits < 12:
            digits += 1
        shown = f"{scale:.{digits}g}"
        raise ConfigError(
            f"{_option(flag, f'{cell_size:g}')}: the model sees red cells {reference:g} px across, so images would "
            f"be resized {shown}x; {SCALE_RANGE[0]:g}x to {SCALE_RANGE[1]:g}x is supported "
            f"({_option(flag, f'{low} to {high}')}), or use auto"
        )
    return min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1])


def detect_cells_batch(
    predictor: RawPredictor,
    images: Sequence[np.ndarray],
    min_score: float = 0.001,
    cell_size: float | str | None = "auto",
    reference: float | None = None,
) -> list[ScaledDetections]:
    """``detect_cells`` for several images, with the pass every image needs batched: the letterbox
    pass (models without a trained cell size and scale) or the central window at the model's scale
    (the estimate's first look, or the whole pass without an estimate). For frames from the training
    microscope that is the only pass; other images go on one by one."""
    reference = reference or getattr(predictor, "cell_size", None)
    exposed = [normalize_exposure(im) for im in images]
    batch = getattr(predictor, "predict_batch", None)
    if batch is None or len(images) < 2 or cell_size not in ("auto", None):
        return [_detect_exposed(predictor, im, e, min_score, cell_size, reference) for im, e in exposed]
    if reference is None and cell_size in ("auto", None) and _prior(predictor) == 1.0:
        found = batch([im for im, _ in exposed], min_score=min_score)
        return [ScaledDetections(d, 1.0, 1, False, exposure=e) for d, (_, e) in zip(found, exposed, strict=True)]
    natives = _windows(predictor, [_prior_window(predictor, im) for im, _ in exposed], min_score)
    return [
        _detect_exposed(predictor, im, e, min_score, cell_size, reference, native=n)
        for (im, e), n in zip(exposed, natives, strict=True)
    ]
