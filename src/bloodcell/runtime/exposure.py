"""Under-exposed fields brought up to the white level the model was trained on, before detection.

A bright-field smear's background is its brightest part, so a field's 99th-percentile luminance (its
"white level", 0-255) says how it was exposed. The shipped model's training images (BCCD train) sit at
195-218, median 212 (`python benchmarks/white_level.py`); training's brightness jitter (0.7-1.3x) covers
little below that, and counts fall away under it (dense val, `benchmarks/robustness.py --only dim`:
platelets -43% at 0.35x exposure, red cells -16% at 0.25x, nearly nothing found at 0.15x). A field whose
white level is under 0.75x the reference is multiplied up to it, one gain for all three channels so the
stain's colour stays; counted that way, fields down to 0.05x exposure count as the originals do
(BENCHMARKS.md, sixteenth session). Brighter fields are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WHITE_REFERENCE = 212.0  # median white level of BCCD train, the shipped model's training images
DARK_BELOW = 0.75 * WHITE_REFERENCE  # under this a field is brightened (BCCD's own: 195 and up)
DARKEST_MEASURED = 0.05 * WHITE_REFERENCE  # the darkest exposure whose counts were measured to hold
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_SAMPLE_PIXELS = 40_000  # the percentile of a strided sample: ~0.5 ms, however large the frame


@dataclass(frozen=True)
class Exposure:
    white: float  # the field's white level: 99th-percentile luminance, 0-255
    gain: float  # what its pixels were multiplied by before detection (1.0: left as they were)

    @property
    def warning(self) -> str | None:
        """Why counts of a very dark field are doubtful: darker than any exposure they were measured at."""
        if self.white >= DARKEST_MEASURED:
            return None
        return (
            f"under-exposed: the background's white level is {self.white:.0f} of 255, darker than counts were "
            f"measured to hold at ({DARKEST_MEASURED:.0f}); raise the lamp or the exposure time"
        )


def white_level(image: np.ndarray) -> float:
    """99th-percentile luminance of an (H, W, 3) uint8 RGB image, on a strided sample of its pixels."""
    h, w = image.shape[:2]
    step = max(1, int((h * w / _SAMPLE_PIXELS) ** 0.5))
    luma = image[::step, ::step].reshape(-1, 3).astype(np.float32) @ _LUMA
    if not luma.size:
        return 0.0
    k = min(luma.size - 1, int(0.99 * (luma.size - 1) + 0.5))
    return float(np.partition(luma, k)[k])


def normalize_exposure(image: np.ndarray) -> tuple[np.ndarray, Exposure]:
    """``image`` brightened to the reference white level when it is under-exposed, and what was done."""
    white = white_level(image)
    if white >= DARK_BELOW or white <= 0.0:  # a black frame has nothing to bring up
        return image, Exposure(white, 1.0)
    gain = WHITE_REFERENCE / white
    table = np.clip(np.arange(256, dtype=np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, table), Exposure(white, gain)
