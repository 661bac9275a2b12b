"""A field's lamp, exposure and white balance brought to the training images' before detection.

A bright-field smear's background is its brightest part, so the mean colour of a field's brightest 10%
of pixels (its "background") says how it was lit and exposed. The shipped model's training images (BCCD
train) have a near-neutral background: luminance 191-213, median 208, each channel's share of their mean
within 0.025 of the reference's (`python benchmarks/white_level.py`). Training's colour jitter covers
little beyond that, and counts fall away outside it (dense val, `benchmarks/robustness.py --as-is`):
platelets -43% at 0.35x exposure, red cells -16% at 0.25x, nothing found at 0.1x; platelets -19% under a
warm lamp (R x1.12, B x0.85).

So, before detection, with one multiplier per channel:
- a field whose background luminance is under 0.75x the reference is brought up to it (exposure);
- a field whose background colour is off neutral by more than the training images' spread (a channel's
  share more than 0.04 from the reference's) gets the reference's colour at its own luminance (white
  balance), each channel moved by at most 0.8x-1.25x: where cells fill the frame its brightest tenth is
  cells, not background, and the bound keeps such a misreading from recolouring the stain.
Fields inside the training range are left exactly as they are. Counted that way, fields down to 5%
exposure and under a warm lamp count as the originals do (BENCHMARKS.md, sixteenth session).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Mean background colour (RGB, 0-255) of BCCD train, the shipped model's training images.
BACKGROUND_REFERENCE = (207.4, 208.5, 202.4)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
WHITE_REFERENCE = float(np.dot(BACKGROUND_REFERENCE, _LUMA))  # its luminance, ~207.6
DARK_BELOW = 0.75 * WHITE_REFERENCE  # under this a field is brightened (BCCD's own: 190 and up)
DARKEST_MEASURED = 0.05 * WHITE_REFERENCE  # the darkest exposure whose counts were measured to hold
#: A channel's share of the background's mean that counts as a colour cast: BCCD train's lie within 0.025.
CAST_TOLERANCE = 0.04
_REFERENCE_SHARES = np.array(BACKGROUND_REFERENCE, np.float32) / np.mean(BACKGROUND_REFERENCE)
BALANCE_RANGE = (0.8, 1.25)  # what white balance may do to one channel (a warm lamp needs 0.89-1.18)
_SAMPLE_PIXELS = 40_000  # a strided sample: ~1 ms, however large the frame
NEUTRAL = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Exposure:
    background: tuple[float, float, float]  # mean RGB of the field's brightest 10% of pixels, 0-255
    gains: tuple[float, float, float] = NEUTRAL  # what each channel was multiplied by before detection

    @property
    def white(self) -> float:
        """The background's luminance, 0-255."""
        return float(np.dot(self.background, _LUMA))

    @property
    def warning(self) -> str | None:
        """Why counts of a very dark field are doubtful: darker than any exposure they were measured at."""
        if self.white >= DARKEST_MEASURED:
            return None
        return (
            f"under-exposed: the background's luminance is {self.white:.0f} of 255, darker than counts were "
            f"measured to hold at ({DARKEST_MEASURED:.0f}); raise the lamp or the exposure time"
        )


def background_colour(image: np.ndarray) -> tuple[float, float, float]:
    """Mean RGB of the brightest 10% of an (H, W, 3) uint8 image's pixels, on a strided sample."""
    h, w = image.shape[:2]
    step = max(1, math.ceil((h * w / _SAMPLE_PIXELS) ** 0.5))
    pixels = image[::step, ::step].reshape(-1, 3).astype(np.float32)
    if not len(pixels):
        return (0.0, 0.0, 0.0)
    luma = pixels @ _LUMA
    k = min(len(luma) - 1, int(0.9 * (len(luma) - 1) + 0.5))
    bright = pixels[luma >= np.partition(luma, k)[k]]
    return tuple(float(v) for v in bright.mean(axis=0))  # type: ignore[return-value]


def exposure_gains(background: tuple[float, float, float]) -> tuple[float, float, float]:
    """Per-channel multipliers that bring a field with this background into the training images' range."""
    colour = np.array(background, np.float64)
    white = float(colour @ _LUMA)
    if white <= 0.0 or colour.min() <= 0.0:  # a black frame (or a channel with no light) has nothing to scale
        return NEUTRAL
    exposure = WHITE_REFERENCE / white if white < DARK_BELOW else 1.0
    balance = np.ones(3)
    if np.abs(colour / colour.mean() - _REFERENCE_SHARES).max() > CAST_TOLERANCE:  # a lamp's colour cast
        neutral = _REFERENCE_SHARES * (white / float(_REFERENCE_SHARES @ _LUMA))  # the reference's, this bright
        balance = np.clip(neutral / colour, *BALANCE_RANGE)
    gains = exposure * balance
    if np.allclose(gains, 1.0):
        return NEUTRAL
    return tuple(float(g) for g in gains)  # type: ignore[return-value]


def normalize_exposure(image: np.ndarray) -> tuple[np.ndarray, Exposure]:
    """``image`` with its exposure and white balance brought into the training images' range, and what was
    done; an image already inside it is returned as it is."""
    background = background_colour(image)
    gains = exposure_gains(background)
    if gains == NEUTRAL:
        return image, Exposure(background)
    levels = np.arange(256, dtype=np.float32)[:, None] * np.array(gains, np.float32)
    table = np.clip(levels + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3)
    return cv2.LUT(image, table), Exposure(background, gains)
