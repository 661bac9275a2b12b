"""Letterboxing to the model's fixed input size, and the inverse map for boxes (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 0


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed on the model canvas: scale, then offset (left, top)."""

    scale: float
    left: int
    top: int
    width: int  # original image size
    height: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes on the canvas -> boxes in original image pixels, clipped to the image."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - self.left) / self.scale).clip(0, self.width)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - self.top) / self.scale).clip(0, self.height)
        return boxes


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Fit (H, W, 3) ``image`` into ``size`` = (width, height), keeping aspect ratio; pad the rest.

    An image already of that size passes through untouched (scale 1, no padding).
    """
    out_w, out_h = size
    h, w = image.shape[:2]
    if (w, h) == (out_w, out_h):
        return image, Letterbox(1.0, 0, 0, w, h)
    scale = min(out_w / w, out_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR, reducing_gap=3.0))
    canvas = np.full((out_h, out_w, 3), PAD_VALUE, dtype=np.uint8)
    left, top = (out_w - new_w) // 2, (out_h - new_h) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Letterbox(scale, left, top, w, h)
