"""Reading any image a microscope camera writes into RGB uint8 (numpy + Pillow only)."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bloodcell.errors import ImageError, TruncatedImageError, UnreadableImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Grayscale, palette, RGBA (alpha channel dropped) and 16-bit images -> (H, W, 3) uint8, EXIF-rotated."""
    _refuse_stacks(im)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
            top = 1.0  # a float image in 0..1 (scientific cameras' TIFFs, Image.fromarray of float pixels)
        else:
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


class StackError(ValueError):
    """A multi-page TIFF whose pages are fields of their own (a stack), not one image and its previews."""


def _refuse_stacks(im: Image.Image) -> None:
    """A TIFF with several full-size pages (fields of view, a focus stack) would be counted by its first
    page alone, silently; smaller later pages are previews (thumbnails, pyramid levels) and are ignored."""
    pages = getattr(im, "n_frames", 1)
    if im.format != "TIFF" or pages <= 1:
        return
    size = im.size
    try:
        full = sum(1 for i in range(pages) if not im.seek(i) and im.size == size)
    finally:
        im.seek(0)
    if full > 1:
        raise StackError(
            f"a TIFF of {full} full-size pages ({size[0]}x{size[1]}); bloodcell counts one image per file: "
            "save each page as its own image (e.g. Pillow's ImageSequence) and count those"
        )


def decode_image(data: bytes, name: str) -> np.ndarray:
    """``load_image`` for bytes already read (from a bucket, an upload); errors name ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.ascontiguousarray(to_rgb_uint8(im))
    except UnidentifiedImageError:
        raise ImageError(f"{name}: {_unidentified(len(data))}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _decode_error(name, e) from None


def load_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` fully; any failure becomes one ImageError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.ascontiguousarray(to_rgb_uint8(im))
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except PermissionError as e:
        raise UnreadableImageError(f"{path}: cannot read ({e.strerror})") from None
    except UnidentifiedImageError:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            hint = f"`bloodcell predict --source {shlex.quote(str(path))}` counts its frames"
            raise ImageError(f"{path}: a video, not an image; {hint}") from None
        try:
            size = path.stat().st_size
        except OSError:  # gone since it was opened (a watched folder): not known to be empty
            size = -1
        raise ImageError(f"{path}: {_unidentified(size)}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _decode_error(path, e) from None


def _unidentified(size: int) -> str:
    """One message, from a file or from bytes, for what Pillow cannot identify."""
    return "empty file (0 bytes)" if size == 0 else "cannot decode image (not a format Pillow reads)"


def _decode_error(name: str | Path, e: Exception) -> ImageError:
    """Pillow says "image file is truncated" or "Truncated File Read" for data that ends early, and "could
    not create decoder object" for a WebP cut short."""
    if isinstance(e, StackError):
        return ImageError(f"{name}: {e}")
    text = str(e).lower()
    cut = "truncated" in text or "could not create decoder object" in text
    kind = TruncatedImageError if isinstance(e, OSError) and cut else ImageError
    return kind(f"{name}: cannot decode image ({e})")
