"""What `predict --source` reads: a camera index, a video file or a stream URL, opened with OpenCV, and
refused by name when it is none of them (a folder, a still image, a pipe, a file this user may not read)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image

from bloodcell.errors import ConfigError, ImageError
from bloodcell.runtime.images import IMAGE_SUFFIXES
from bloodcell.runtime.sources import is_file, unusable_reason

#: Pillow formats a still image given to --source may be in (not MPEG, whose video streams Pillow also opens).
STILL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
#: Motion JPEG streams: JPEG frames one after another, which Pillow reads as their first.
MOTION_JPEG_SUFFIXES = (".mjpeg", ".mjpg")
#: OpenCV takes a camera index as a C int.
MAX_CAMERA_INDEX = 2**31 - 1


def is_camera(source: str) -> bool:
    """A camera index: ASCII digits only ("²" and "٣" are names of files, as any other text), and no file of
    that name here (a file named 12 is that file)."""
    return source.isascii() and source.isdigit() and not Path(source).is_file()


def stream_name(source: str) -> str:
    """A file-name-safe name for the outputs: camera0-20261127T071233 for index 0 (each session its own
    files); a file's stem for .mp4 and its whole name otherwise (slide.avi -> slide.avi_annotated.mp4, as
    predict keeps an image's suffix that is not its output's: slide.mp4 and slide.avi never share
    outputs); a URL's last path part. Letters of any script are kept; other characters become "_"."""
    if is_camera(source):
        return f"camera{int(source)}-{time.strftime('%Y%m%dT%H%M%S')}"
    # a URL's last path part (its query left out); a file's own name (a ? in it is part of the name)
    tail = source.split("?")[0].rstrip("/").rsplit("/", 1)[-1] if "://" in source else Path(source).name
    name = Path(tail).stem if Path(tail).suffix.lower() == ".mp4" else tail
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "stream"


def open_capture(cv2: ModuleType, source: str) -> Any:
    """An opened cv2.VideoCapture for a camera index, a video file or a URL; ImageError naming it otherwise."""
    camera = is_camera(source)
    if camera and int(source) > MAX_CAMERA_INDEX:
        raise ConfigError(f"--source {source}: not a camera index (0 to {MAX_CAMERA_INDEX}) nor a video file")
    if not (camera or "://" in source):
        _check_video_file(Path(source), source)
    # Keep OpenCV's and FFmpeg's own log lines off stderr (FFmpeg reads this once, at its first use).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    with contextlib.suppress(AttributeError, cv2.error):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    with _openable_name(source) as name:
        cap = cv2.VideoCapture(int(source) if camera else name)
    if not cap.isOpened():
        cap.release()
        if camera:
            raise ImageError(f"{source}: cannot open camera {source}")
        raise ImageError(f"{source}: cannot open as a video (OPENCV_FFMPEG_LOGLEVEL=16 shows FFmpeg's reason)")
    return cap


def _check_video_file(path: Path, source: str) -> None:
    """Refuse what no video reader can open, in the words `predict` uses for images: a folder, a path that
    is no regular file, one this user may not read, and a still image (by its name or its content)."""
    if path.is_dir():
        raise ConfigError(
            f"--source {source}: a folder; images in it are counted by `bloodcell predict {shlex.quote(source)}`"
        )
    if not is_file(path):
        raise ImageError(f"{source}: {unusable_reason(path)}")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{source}: cannot read it (permission denied)")
    image = path.suffix.lower() in IMAGE_SUFFIXES
    if not image and path.suffix.lower() not in MOTION_JPEG_SUFFIXES:
        # a still image saved under a video's name (OpenCV would play it as one frame at 25 fps); Pillow's
        # MPEG reader is left out: it opens a video stream's first frame as an image
        with contextlib.suppress(Exception), Image.open(path, formats=STILL_FORMATS) as im:
            image = getattr(im, "n_frames", 1) == 1
    if image:
        raise ConfigError(
            f"--source {source}: an image; `bloodcell predict {shlex.quote(source)}` counts it "
            "(--source is for cameras, videos and streams)"
        )


@contextlib.contextmanager
def _openable_name(source: str) -> Iterator[str]:
    """``source``, or a link to it under an ASCII name while it is opened: a file name that is not valid
    UTF-8 (Latin-1 from an old share) reaches Python as lone surrogates, which crash OpenCV's open."""
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="bloodcell-video-") as tmp:
            link = Path(tmp) / f"source{Path(source).suffix.encode('ascii', 'replace').decode()}"
            os.symlink(os.fsencode(os.path.abspath(source)), os.fsencode(link))
            yield str(link)  # opened (file descriptor held): the link may go right after
        return
    yield source
