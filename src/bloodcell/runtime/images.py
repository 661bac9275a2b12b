"""Reading any image a microscope camera writes into RGB uint8 (Pillow; OpenCV for 16-bit colour)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bloodcell.errors import ImageError, TruncatedImageError, UnreadableImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


CAMERA_BIT_DEPTHS = (8, 10, 12, 14, 16)


def camera_levels(a: np.ndarray) -> np.ndarray:
    """Integer pixels wider than 8 bits -> uint8 at the camera's bit depth: the smallest of 8, 10, 12, 14 or
    16 bits that holds the brightest pixel. 10-, 12- and 14-bit sensors write their values in 16-bit files;
    read as 0..65535, a 12-bit field is 16x too dark and counts as nearly empty. (A bright-field smear's
    background is its brightest part, so the maximum is near the sensor's top.)"""
    top = int(a.max()) if a.size else 0
    bits = next((b for b in CAMERA_BIT_DEPTHS if top < 1 << b), top.bit_length())
    return np.clip(a.astype(np.float32) * (255.0 / ((1 << bits) - 1)) + 0.5, 0, 255).astype(np.uint8)


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Grayscale, palette, RGBA (alpha channel dropped) and 16-bit images -> (H, W, 3) uint8, EXIF-rotated."""
    _refuse_stacks(im)
    im = ImageOps.exif_transpose(im)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:  # scientific cameras' float TIFFs, fromarray(float)
            a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            a = camera_levels(np.clip(np.rint(a), 0, 2**32 - 1).astype(np.uint32))
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = camera_levels(np.clip(np.asarray(im, dtype=np.int64), 0, None))
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def read_pixels(im: Image.Image, raw: Callable[[], bytes]) -> np.ndarray:
    """``im`` (opened, not yet loaded) as a contiguous (H, W, 3) uint8 RGB array. ``raw`` gives the file's
    bytes for 16-bit colour (48-bit TIFF/PNG): Pillow reads those as 8 bits per channel by dropping the low
    byte, which leaves a 12-bit camera's field near-black, so OpenCV decodes them again at their full depth.
    Pillow's 8-bit image (decoded first, so a truncated file is still an error) is the reference: the deep
    one is used in whichever orientation its high bytes equal it (Pillow and OpenCV versions differ in which
    of them applies a TIFF's orientation tag), else Pillow's stands."""
    deep_colour = _sixteen_bit_colour(im)  # the tile that says so is gone once loaded
    im.load()
    if im.format in JPEG_FORMATS:
        check_jpeg_data(raw())
    rgb = np.ascontiguousarray(to_rgb_uint8(im))
    if not deep_colour:
        return rgb
    try:
        deep = cv2.imdecode(np.frombuffer(raw(), np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return rgb
    if deep is None or deep.dtype != np.uint16 or deep.ndim != 3 or deep.shape[2] not in (3, 4):
        return rgb
    deep = deep[..., 2::-1]  # BGR(A) -> RGB
    for turned in _orientations(deep):
        if turned.shape == rgb.shape and np.array_equal((turned >> 8).astype(np.uint8), rgb):
            return np.ascontiguousarray(camera_levels(turned))
    return rgb


JPEG_FORMATS = ("JPEG", "MPO")  # Pillow's names; MPO: a JPEG with MPF previews (many cameras' .jpg)


class CorruptJPEGError(ValueError):
    """JPEG data that decodes with gaps: libjpeg fills what it cannot read with gray or smeared blocks."""


# libjpeg's warnings of damaged data (JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_JPEG_EOF,
# JWRN_EXTRANEOUS_DATA). A few bytes before a restart or end-of-image marker are a writer's padding (webcams
# such as Logitech's put some before their restart markers); hundreds are compressed data the decoder never
# reached: garbled bytes threw it off and it filled the rest of the picture with what it misread.
_DAMAGED = ("corrupt jpeg data", "premature end of jpeg file")
_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x([0-9a-f]{2})")
_MOST_PADDING = 16
_IN_SCANS = range(0xD0, 0xDA)  # RST0-7, EOI: markers met inside or right after compressed data


def check_jpeg_data(data: bytes) -> None:
    """CorruptJPEGError (an OSError saying "truncated" for a file that ends early) when the JPEG's compressed
    data is damaged. Pillow decodes such a file without a word (libjpeg's warnings are dropped) and the garbled
    part would be counted as cells or as empty background. simplejpeg's strict decode reports them; at 1/8
    scale it still reads every compressed byte (0.2 ms for 640x480)."""
    try:
        import simplejpeg
    except ImportError:  # a core dependency; an install without it counts as before, unchecked
        return
    for _ in range(2):  # a second time without the header's padding: strict decoding stops at the first warning
        try:
            simplejpeg.decode_jpeg(data, strict=True, min_width=1, min_height=1)
            return
        except ValueError as e:
            text, error = str(e).lower(), e
        extraneous = _EXTRANEOUS.search(text)
        if not text.startswith(_DAMAGED):
            return  # not damage (a colour space simplejpeg does not convert, ...): Pillow's pixels stand
        if extraneous and int(extraneous.group(2), 16) in _IN_SCANS:
            if int(extraneous.group(1)) <= _MOST_PADDING:
                return  # padding before a restart or the end marker
        elif extraneous and (unpadded := _without_header_padding(data)) != data:
            data = unpadded  # stray bytes between header segments, before any pixel: harmless
            continue
        break
    if text.startswith("premature end of jpeg file"):  # as Pillow's own "truncated" errors: watch waits
        raise OSError(f"JPEG data truncated: {error}")
    raise CorruptJPEGError(
        f"damaged JPEG data ({error}): part of the picture decodes as gray or smeared blocks; the file was "
        "damaged in a copy or on the card: copy it again from the camera"
    )


def _without_header_padding(data: bytes) -> bytes:
    """``data`` without stray bytes between the marker segments before the first scan (SOS). Hand-walked: no
    library reports where libjpeg met them, and the header is a chain of (marker, length) pairs."""
    out, i = bytearray(data[:2]), 2  # SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF or data[i + 1] == 0xFF:  # a stray byte, or a fill byte before a marker
            i += 1
        elif data[i + 1] == 0xDA:
            return bytes(out + data[i:])
        else:
            end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
            out += data[i:end]
            i = end
    return data  # no scan: nothing to tell apart


def _orientations(a: np.ndarray) -> list[np.ndarray]:
    """``a`` in its eight orientations (rotations by quarter turns, mirrored or not), the unturned first."""
    return [np.rot90(m, k) for m in (a, a[:, ::-1]) for k in range(4)]


def _sixteen_bit_colour(im: Image.Image) -> bool:
    """Pillow opens 48/64-bit colour as mode RGB/RGBA; its tile's raw mode ('RGB;16B', 'RGB;16N') says so."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    args = im.tile[0][3]
    raw_mode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
    return isinstance(raw_mode, str) and ";16" in raw_mode


class StackError(ValueError):
    """A multi-page TIFF whose pages are fields of their own (a stack), not one image and its previews."""


#: Formats whose files may be animations: every frame is a full picture (a time-lapse, a focus sweep).
ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")


def _refuse_stacks(im: Image.Image) -> None:
    """A TIFF with several full-size pages (fields of view, a focus stack) would be counted by its first
    page alone, silently; smaller later pages are previews (thumbnails, pyramid levels) and are ignored.
    An animated GIF, PNG or WebP likewise."""
    pages = getattr(im, "n_frames", 1)
    if im.format in ANIMATED_FORMATS and pages > 1:
        raise StackError(
            f"an animated {im.format} of {pages} frames; bloodcell counts one image per file: save each frame as "
            "its own image (e.g. Pillow's ImageSequence) and count those"
        )
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


_decoding = threading.local()  # the file this thread decodes: Pillow's warnings name none


@contextlib.contextmanager
def decoding_file(name: str | Path) -> Iterator[None]:
    """Names ``name`` as the file this thread decodes, for ``decoder_warning``."""
    _decoding.name = name
    try:
        yield
    finally:
        _decoding.name = None


def decoder_warning(message: Warning | str) -> str:
    """A Pillow warning as a line that names the file this thread was decoding when it came (the CLI says
    Pillow's warnings so; a corrupt EXIF block loses the orientation tag, which turns the field)."""
    text = " ".join(str(message).split()).rstrip(".")
    if text.startswith("Corrupt EXIF data") or re.search(r"EXIF.*\btag 274\b", text):  # the whole block, or it
        text += " (its orientation tag, if it has one, is not applied: the field may be turned)"
    name = getattr(_decoding, "name", None)
    return f"{name}: {text}" if name is not None else text


def decode_image(data: bytes, name: str) -> np.ndarray:
    """``load_image`` for bytes already read (from a bucket, an upload); errors name ``name``."""
    try:
        with decoding_file(name), Image.open(io.BytesIO(data)) as im:
            return read_pixels(im, lambda: data)
    except UnidentifiedImageError:
        if Path(name).suffix.lower() in VIDEO_SUFFIXES:  # a batch's or an upload's video: said as predict says it
            raise ImageError(_video(name)) from None
        if _tiff_cut_before_directory(data):
            raise TruncatedImageError(f"{name}: cannot decode image (a TIFF that ends before its directory)") from None
        raise ImageError(f"{name}: {_unidentified(len(data), name)}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _decode_error(name, e) from None


def load_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` fully; any failure becomes one ImageError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()  # once: Pillow decodes it, a JPEG's damage check and 16-bit colour read it again
        with decoding_file(path), Image.open(io.BytesIO(data)) as im:
            return read_pixels(im, lambda: data)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except PermissionError as e:
        raise UnreadableImageError(f"{path}: cannot read ({e.strerror})") from None
    except UnidentifiedImageError:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise ImageError(_video(str(path))) from None
        try:
            size = path.stat().st_size
        except OSError:  # gone since it was opened (a watched folder): not known to be empty
            size = -1
        if _tiff_cut_before_directory(data):
            raise TruncatedImageError(f"{path}: cannot decode image (a TIFF that ends before its directory)") from None
        raise ImageError(f"{path}: {_unidentified(size, path)}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _decode_error(path, e) from None


def _video(name: str) -> str:
    return f"{name}: a video, not an image; `bloodcell predict --source {shlex.quote(name)}` counts its frames"


#: Image files bloodcell does not read (no decoder in its dependencies), with what they are.
OTHER_IMAGE_SUFFIXES = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".jxl": "JPEG XL",
    ".dng": "camera raw",
    ".cr2": "camera raw",
    ".cr3": "camera raw",
    ".nef": "camera raw",
    ".arw": "camera raw",
}


#: Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8).
TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}


def _tiff_cut_before_directory(data: bytes) -> bool:
    """A TIFF whose first image directory, or a value it points to, lies past the end of the data: a file
    that ends early (libtiff writes the directory after the pixels, so a copy under way has none yet)."""
    if len(data) < 8 or data[:4] not in (b"II*\x00", b"MM\x00*"):
        return False
    order = "little" if data[:2] == b"II" else "big"

    def number(at: int, size: int) -> int:
        return int.from_bytes(data[at : at + size], order)

    offset = number(4, 4)
    if offset + 2 > len(data):
        return True
    entries = number(offset, 2)
    if offset + 2 + 12 * entries + 4 > len(data):  # cut inside the directory itself
        return True
    for entry in range(offset + 2, offset + 2 + 12 * entries, 12):  # or inside a value kept after it
        size = TIFF_TYPE_SIZES.get(number(entry + 2, 2), 1) * number(entry + 4, 4)
        if size > 4 and number(entry + 8, 4) + size > len(data):
            return True
    return False


def _unidentified(size: int, name: str | Path = "") -> str:
    """One message, from a file or from bytes, for what Pillow cannot identify."""
    if size == 0:
        return "empty file (0 bytes)"
    kind = OTHER_IMAGE_SUFFIXES.get(Path(name).suffix.lower())
    if kind:
        return f"cannot decode image ({kind}, not a format bloodcell reads: save it as JPEG, PNG or TIFF)"
    return "cannot decode image (not a format Pillow reads)"


def _decode_error(name: str | Path, e: Exception) -> ImageError:
    """Pillow says "image file is truncated" or "Truncated File Read" for data that ends early, and "could
    not create decoder object" for a WebP cut short."""
    if isinstance(e, (StackError, CorruptJPEGError)):
        return ImageError(f"{name}: {e}")
    if isinstance(e, Image.DecompressionBombError):
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels"
        return ImageError(
            f"{name}: {size}, over the {2 * Image.MAX_IMAGE_PIXELS:,} that are decoded (Pillow's guard against "
            "decompression bombs); cut the scan into fields of view and count those"
        )
    text = str(e).lower()
    cut = "truncated" in text or "could not create decoder object" in text
    kind = TruncatedImageError if isinstance(e, OSError) and cut else ImageError
    return kind(f"{name}: cannot decode image ({e})")
