"""In-memory images for the Python API: numpy arrays and PIL images as the RGB uint8 arrays every
predictor takes, with an ImageError that says what is wrong instead of a wrong count."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from bloodcell.errors import ImageError
from bloodcell.runtime.images import StackError, camera_levels, to_rgb_uint8

# What ``bloodcell.predict`` takes: a file path, a PIL image, or an array (H, W) gray / (H, W, 3) RGB /
# (H, W, 4) RGBA, uint8 (0-255), uint16 (at the camera's bit depth, as 16-bit files) or float (0-1).
ImageInput = str | os.PathLike | np.ndarray | Image.Image

_CHANNELS = (1, 3, 4)


def as_rgb(image: np.ndarray | Image.Image, name: str) -> np.ndarray:
    """``image`` as a contiguous (H, W, 3) uint8 RGB array; ImageError naming ``name`` when it cannot be
    one. Colour order cannot be checked: OpenCV's BGR arrays must be converted first (cv2.cvtColor)."""
    if isinstance(image, Image.Image):
        try:
            return np.ascontiguousarray(to_rgb_uint8(image))
        except (StackError, OSError, ValueError) as e:
            raise ImageError(f"{name}: {e}") from None
    if not isinstance(image, np.ndarray):
        raise ImageError(
            f"{name}: a {type(image).__name__}, not an image; give a file path, a PIL image or an (H, W, 3) RGB array"
        )
    a = image
    if a.ndim == 4:
        raise ImageError(f"{name}: array of shape {a.shape} is a stack of images; give them as a list, list(a)")
    if a.ndim == 3 and a.shape[0] in _CHANNELS and a.shape[2] not in _CHANNELS:
        raise ImageError(
            f"{name}: array of shape {a.shape} looks channels-first; give (H, W, 3), e.g. a.transpose(1, 2, 0)"
        )
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in _CHANNELS:
        raise ImageError(f"{name}: array of shape {a.shape}; expected (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{name}: empty array of shape {a.shape}")
    a = _to_uint8(a[..., :3], name)
    return np.ascontiguousarray(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a)


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """uint8 as is; uint16 at its camera's bit depth, as a 16-bit file; floats in 0..1; other integers when
    within 0..255."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # either byte order (FITS and some TIFF readers: big-endian)
        return camera_levels(a)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(f"{name}: {a.dtype} array holds NaN or infinite values")
        low, high = float(a.min()), float(a.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"{name}: {a.dtype} array with values {low:g} to {high:g}; float images must hold 0 to 1 "
                "(for 0 to 255 values, give a.astype(np.uint8))"
            )
        return (a * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        low, high = int(a.min()), int(a.max())
        if low < 0 or high > 255:
            raise ImageError(f"{name}: {a.dtype} array with values {low} to {high}; expected 0 to 255 (uint8)")
        return a.astype(np.uint8)
    raise ImageError(f"{name}: {a.dtype} array; expected uint8, uint16 or float (0 to 1) pixels")
