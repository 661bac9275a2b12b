"""16-bit images from 10/12/14-bit cameras: read at the camera's bit depth, colour included (Pillow alone
reads 48-bit colour as 8 bits, which leaves a 12-bit field near-black: a silent count of almost nothing)."""

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import bloodcell
from bloodcell.app.server import decode_image as decode_upload
from bloodcell.errors import ImageError
from bloodcell.runtime.images import camera_levels, decode_image, load_image
from bloodcell.runtime.inputs import as_rgb
from fakes import slide_image


def twelve_bit(rgb: np.ndarray) -> np.ndarray:
    """An 8-bit RGB image as a 12-bit camera gives it (0..4095 in uint16)."""
    return ((rgb.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)


def save_deep(path: Path, rgb16: np.ndarray) -> Path:
    """Writes 16-bit colour (48-bit PNG/TIFF): OpenCV writes BGR, Pillow cannot write it at all."""
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb16[..., ::-1]))
    return path


def with_exif_orientation(png: Path, orientation: int) -> Path:
    """Inserts an eXIf chunk (orientation only) before the first IDAT of ``png``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    payload = payload[6:] if payload.startswith(b"Exif\x00\x00") else payload
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    data = png.read_bytes()
    at = data.index(b"IDAT") - 4
    png.write_bytes(data[:at] + chunk + data[at:])
    return png


def test_camera_levels_scale_by_the_smallest_depth_that_holds_the_brightest_pixel() -> None:
    assert camera_levels(np.array([0, 1023], np.uint16)).tolist() == [0, 255]  # 10-bit
    assert camera_levels(np.array([0, 2048, 4095], np.uint16)).tolist() == [0, 128, 255]  # 12-bit
    assert camera_levels(np.array([0, 16383], np.uint16)).tolist() == [0, 255]  # 14-bit
    assert camera_levels(np.array([0, 32768, 65535], np.uint16)).tolist() == [0, 128, 255]  # 16-bit
    assert camera_levels(np.array([0, 200], np.uint16)).tolist() == [0, 200]  # 8-bit values kept
    assert camera_levels(np.zeros((2, 2), np.uint16)).max() == 0  # black stays black


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_twelve_bit_colour_files_read_as_their_eight_bit_image(tmp_path: Path, suffix: str) -> None:
    rgb = slide_image(seed=3)
    assert (rgb[..., 0] != rgb[..., 2]).any()  # channel order is checked
    path = save_deep(tmp_path / f"field{suffix}", twelve_bit(rgb))
    assert Image.open(path).mode == "RGB"  # what Pillow alone would read as 8 bits: max 15
    for got in (load_image(path), decode_image(path.read_bytes(), path.name), decode_upload(path.read_bytes())):
        assert got.dtype == np.uint8 and got.shape == rgb.shape
        assert np.abs(got.astype(int) - rgb.astype(int)).max() <= 1


@pytest.mark.parametrize("colour_bits", [12, 16])
def test_sixteen_bit_colour_with_alpha_keeps_the_colours_depth(tmp_path: Path, colour_bits: int) -> None:
    """An opaque alpha channel (65535) says nothing of the camera's depth: the colour's own maximum does."""
    rgb = slide_image(seed=4).copy()
    rgb[0, 0] = 255  # the colour reaches the top of its range
    colour = twelve_bit(rgb) if colour_bits == 12 else rgb.astype(np.uint16) * 257
    rgba = np.dstack([colour, np.full(rgb.shape[:2], 65535, np.uint16)])
    assert cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    assert np.abs(load_image(tmp_path / "rgba.png").astype(int) - rgb.astype(int)).max() <= 1


def test_twelve_bit_gray_files_and_arrays_read_at_twelve_bits(tmp_path: Path) -> None:
    gray = slide_image(seed=5)[..., 1]
    Image.fromarray(twelve_bit(gray)).save(tmp_path / "gray.png")
    assert Image.open(tmp_path / "gray.png").mode.startswith("I")
    for got in (load_image(tmp_path / "gray.png"), as_rgb(twelve_bit(gray), "array")):
        assert np.abs(got[..., 0].astype(int) - gray.astype(int)).max() <= 1
        assert (got[..., 0] == got[..., 2]).all()


@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_exif_orientation_of_a_sixteen_bit_colour_file_is_applied(tmp_path: Path, orientation: int) -> None:
    rgb = slide_image(seed=6, size=(64, 48))
    deep = with_exif_orientation(save_deep(tmp_path / "deep.png", twelve_bit(rgb)), orientation=orientation)
    plain = tmp_path / "plain.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(plain, exif=exif)
    expected = load_image(plain)
    assert expected.shape == ((48, 64, 3) if orientation == 3 else (64, 48, 3))  # turned as the tag says
    assert not np.array_equal(expected, rgb[::-1, ::-1] if orientation != 3 else rgb)
    assert np.abs(load_image(deep).astype(int) - expected.astype(int)).max() <= 1


def test_a_truncated_sixteen_bit_colour_file_is_an_error_not_a_partial_field(tmp_path: Path) -> None:
    path = save_deep(tmp_path / "cut.png", twelve_bit(slide_image(seed=7)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"cut\.png: cannot decode image"):
        load_image(path)


def test_a_twelve_bit_field_counts_as_its_eight_bit_file(tmp_path: Path, bccd_root: Path) -> None:
    rgb = np.asarray(Image.open(bccd_root / "JPEGImages" / "BloodImage_00007.jpg").convert("RGB"))
    deep = save_deep(tmp_path / "field12.tif", twelve_bit(rgb))
    plain, twelve = bloodcell.predict(bloodcell.load_predictor(), [rgb, deep])
    assert sum(plain.counts.values()) > 5 and twelve.counts == plain.counts
