"""Drawing detections onto images (Pillow)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bloodcell.errors import ImageError
from bloodcell.palette import class_color
from bloodcell.runtime.images import load_image
from bloodcell.runtime.inputs import as_rgb
from bloodcell.types import Detections

if TYPE_CHECKING:
    from bloodcell.runtime.predict import ImageResult


class BoxAnnotator:
    """image + detections -> a new image with boxes, labels and a count banner."""

    def __init__(self, class_names: tuple[str, ...], thickness: int | None = None, show_scores: bool = True) -> None:
        self.class_names = tuple(class_names)
        self.thickness = thickness
        self.show_scores = show_scores

    def annotate(self, image: np.ndarray, detections: Detections, counts: dict[str, int] | None = None) -> Image.Image:
        """A copy of the (H, W, 3) RGB ``image`` with each detection's box (and score), and a banner of
        ``counts`` when given."""
        im = Image.fromarray(image).convert("RGB")
        draw = ImageDraw.Draw(im)
        t = self.thickness or max(1, round(max(im.size) / 320))
        font = ImageFont.load_default(size=max(10, round(max(im.size) / 50)))
        for box, lab, score in zip(detections.boxes, detections.labels, detections.scores, strict=True):
            name = self.class_names[int(lab)]
            color = class_color(name, int(lab))
            draw.rectangle([float(v) for v in box], outline=color, width=t)
            if self.show_scores:
                draw.text((float(box[0]) + t + 1, float(box[1]) + t), f"{name} {score:.2f}", fill=color, font=font)
        if counts is not None:
            text = "  ".join(f"{k}: {v}" for k, v in counts.items())
            x0, y0, x1, y1 = draw.textbbox((4, 4), text, font=font)
            draw.rectangle([x0 - 3, y0 - 3, x1 + 3, y1 + 3], fill=(255, 255, 255))
            draw.text((4, 4), text, fill=(0, 0, 0), font=font)
        return im


def annotate(
    result: ImageResult, image: str | os.PathLike | np.ndarray | Image.Image | None = None, show_scores: bool = True
) -> Image.Image:
    """The picture `bloodcell predict --out` saves: ``result``'s counted boxes and its counts on its image
    (``image``, a file or pixels, when the result does not keep its pixels, e.g. ``predict_paths(...,
    keep_image=False)``). Boxes are in the pixels that were counted: a file is read as predict read it
    (EXIF-rotated), but pixels given here must be the same (``np.asarray(Image.open(f))`` is not rotated)."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if not result.ok:
        raise ImageError(f"{result.label}: nothing to draw ({result.error})")
    if image is None and result.image is None:
        raise ImageError(f"{result.label}: the result keeps no pixels (keep_image=False); pass image=")
    pixels = as_rgb(image, result.label) if image is not None else result.image
    if pixels.shape[:2] != (result.height, result.width):
        raise ImageError(
            f"{result.label}: image is {pixels.shape[1]}x{pixels.shape[0]}, counted at {result.width}x{result.height}"
        )
    annotator = BoxAnnotator(result.class_names, show_scores=show_scores)
    return annotator.annotate(pixels, result.counted, result.counts)
