"""Drawing detections onto images (Pillow)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bloodcell.palette import class_color
from bloodcell.types import Detections


class BoxAnnotator:
    """image + detections -> a new image with boxes, labels and a count banner."""

    def __init__(self, class_names: tuple[str, ...], thickness: int | None = None, show_scores: bool = True) -> None:
        self.class_names = tuple(class_names)
        self.thickness = thickness
        self.show_scores = show_scores

    def annotate(self, image: np.ndarray, detections: Detections, counts: dict[str, int] | None = None) -> Image.Image:
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
