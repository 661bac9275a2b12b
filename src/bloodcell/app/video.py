"""`bloodcell predict --source 0|video.mp4|URL`: detect and count cells frame by frame (OpenCV).

With a display (``DISPLAY``/``WAYLAND_DISPLAY`` set and an OpenCV build with GUI support) and ``show``
not False, a live window shows the boxes and counts (q or Esc quits). Without one, or whenever
``out_dir`` is given, the annotated frames go to ``<out>/<name>_annotated.mp4`` (written under a
temporary name and renamed at the end) and one row per frame to ``<out>/<name>_counts.csv``
(``frame,time_s`` and the columns of `predict --csv` but its error: size, scale, each class's count and
90% interval, warnings; written atomically at the end).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import operator
import os
import re
import shlex
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.app.sinks import frame_counts_header, frame_counts_row
from bloodcell.atomic import process_alive, write_files
from bloodcell.errors import ConfigError, ImageError, OutputError, is_interrupt
from bloodcell.runtime.counting import Conf, resolve_conf
from bloodcell.runtime.images import IMAGE_SUFFIXES
from bloodcell.runtime.predict import ImageResult, Predictor, api_cell_size, predict_image
from bloodcell.runtime.sources import shown as safe_text
from bloodcell.runtime.sources import unusable_reason

DEFAULT_OUT = "runs/predict"
WINDOW = "bloodcell"
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc


@dataclass
class StreamSummary:
    """What a stream gave: frames processed, running totals per class, and the files written."""

    source: str
    class_names: tuple[str, ...] = ()
    frames: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    fps: float = 0.0
    shown: bool = False
    video_path: Path | None = None
    csv_path: Path | None = None
    expected_frames: int = 0  # what a video file says it holds (0: a camera or a stream, unknown)
    interrupted: bool = False  # Ctrl-C (or a stop signal) before a video file ended
    quit: bool = False  # q/Esc or the window closed, before the source ended
    source_stopped: bool = False  # a camera, or a stream of unknown length, gave no more frames (not q/Ctrl-C)
    limited: bool = False  # max_frames reached before a file's end (the Python API's limit)
    seconds: float = 0.0  # wall time from the first frame read to the last counted
    last_time_s: float = 0.0  # a file's last counted frame's own time stamp

    @property
    def complete(self) -> bool:
        """A video file read to its end (a camera or a stream has none: stopping it is how it ends)."""
        return not (self.interrupted or self.limited or (self._short and not self.quit) or self.source_stopped)

    @property
    def partial(self) -> bool:
        """A file (here or served) not read to its end: its outputs get .partial names (a camera's or a live
        stream's end is its stop; their names are per session)."""
        return self.interrupted or self.limited or (self._short and not self.source_stopped)

    @property
    def _short(self) -> bool:
        """Fewer frames read than the source announces, and its last one well before the source's end. A
        container's count can be an estimate (duration x average rate): a frame or 1% short is not short,
        nor is a variable-rate file (a phone's) whose frames reach its duration."""
        if not self.expected_frames or self.frames >= 0.99 * self.expected_frames - 1:
            return False
        duration = self.expected_frames / self.fps if self.fps else 0.0
        return not (duration and self.last_time_s + 2 / self.fps >= 0.99 * duration)

    def mean_per_frame(self) -> dict[str, float]:
        return {k: v / self.frames if self.frames else 0.0 for k, v in self.totals.items()}

    def __str__(self) -> str:
        means = ", ".join(f"{v:.1f} {k}" for k, v in self.mean_per_frame().items())
        rate = f" ({self.frames / self.seconds:.1f} counted per second)" if self.seconds > 0 else ""
        what = f"camera {self.source}" if is_camera(self.source) else safe_text(self.source)
        lines = [f"{what}: {self.frames} frames{rate}, mean per frame {means or '-'}"]
        if self.interrupted:
            of = f" of {self.expected_frames}" if self.expected_frames else ""
            lines.append(f"interrupted after {self.frames}{of} frames; the .partial files hold those")
        elif self.limited:
            lines.append(f"stopped at max_frames={self.frames}; the .partial files hold those")
        elif self.quit and self.partial:
            lines.append(
                f"stopped in the window after {self.frames} of {self.expected_frames} frames; "
                "the .partial files hold those"
            )
        elif self.source_stopped:
            what = "the camera" if is_camera(self.source) else "the stream"
            lines.append(
                f"warning: {what} stopped sending frames after {self.frames} (disconnected, or it ended?); "
                "the files hold those"
            )
        elif not self.complete:
            lines.append(
                f"warning: read {self.frames} of the {self.expected_frames} frames the source announces "
                "(cut off or damaged?); the .partial files hold those"
            )
        if self.video_path:
            lines.append(f"annotated video: {safe_text(str(self.video_path))}")
        if self.csv_path:
            lines.append(f"per-frame counts: {safe_text(str(self.csv_path))}")
        return "\n".join(lines)


#: Pillow formats a still image given to --source may be in (not MPEG, whose video streams Pillow also opens).
STILL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
#: Motion JPEG streams: JPEG frames one after another, which Pillow reads as their first.
MOTION_JPEG_SUFFIXES = (".mjpeg", ".mjpg")
#: The annotated video's highest frame rate (a faster source plays in slow motion).
MAX_VIDEO_FPS = 240.0
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


def gui_available(cv2: ModuleType) -> bool:
    """True when a window can be shown: a display is set and this OpenCV build has GUI support."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)  # headless builds raise cv2.error here
    except cv2.error:
        return False
    return True


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
    if not _is_regular_file(path):
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


def _is_regular_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


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


class _FileSink:
    """Annotated video (temporary name, renamed on close) and per-frame counts CSV (atomic, on close).

    A file's frames, and a stream's that reports its frame rate (read in turn, none dropped), are
    written one for one at that rate. A camera (or a stream without a rate) gives frames as fast as the
    model counts them, slower than it films: each frame is held (written again) until the next one
    came, so the video plays in real time rather than fast-forwarded."""

    def __init__(self, cv2, out_dir: Path, name: str, fps: float, class_names: tuple[str, ...]) -> None:
        self.cv2 = cv2
        self.out_dir, self.name = out_dir, name
        self.video_path, self.csv_path = self.paths(partial=False)
        # .mp4 last: it picks the container; host and process: a sweep removes only its own machine's dead runs'
        self.tmp_path = out_dir / f".{name}_annotated.{_host()}-{os.getpid()}.tmp.mp4"
        self.fps = fps
        self.class_names = class_names
        self.writer = None
        self.written = 0  # video frames, holds included
        self.held: np.ndarray | None = None  # a live source's last frame
        self.start_s = 0.0  # a live source's first frame time
        self.rows = io.StringIO()
        self.csv = csv.writer(self.rows, lineterminator="\n")
        self.csv.writerow(frame_counts_header(class_names))
        for path in (*self.paths(partial=False), *self.paths(partial=True)):  # said now, not after the last frame
            if path.is_dir():
                raise ConfigError(f"{path}: is a folder, where this run's {path.suffix[1:]} output goes; move it")
        self.made = [] if out_dir.is_dir() else [d for d in (out_dir, *out_dir.parents) if not d.exists()]
        out_dir.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_temporaries()

    def _sweep_stale_temporaries(self) -> None:
        """Remove this name's temporary videos left by runs that were killed (their process is gone)."""
        prefix = f".{self.name}_annotated.{_host()}-"  # another machine's (a shared folder) are not ours to judge
        for stale in self.out_dir.glob(f"{glob.escape(prefix)}*.tmp.mp4"):
            pid = stale.name[len(prefix) : -len(".tmp.mp4")]
            if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def write(
        self, index: int, time_s: float, result: ImageResult, annotated_bgr: np.ndarray, live: bool = False
    ) -> None:
        h, w = annotated_bgr.shape[:2]
        if h % 2 or w % 2:  # MPEG-4 wants even sides: a black edge, not a cropped row or column of the field
            annotated_bgr = np.pad(annotated_bgr, ((0, h % 2), (0, w % 2), (0, 0)))
            h, w = annotated_bgr.shape[:2]
        if self.writer is None:
            fourcc = self.cv2.VideoWriter_fourcc(*"mp4v")
            # a high-speed camera's 1000+ fps (or a raw stream's 90000): MPEG-4 allows 65535 at most, players far
            # less; played at 240 at most, in slow motion (time_s keeps each frame's own time)
            self.writer = self.cv2.VideoWriter(str(self.tmp_path), fourcc, min(self.fps, MAX_VIDEO_FPS), (w, h))
            if not self.writer.isOpened():
                raise ImageError(f"{self.video_path}: cannot write an mp4v video of {w}x{h}")
            self.start_s = time_s
        if live and self.held is not None:  # hold the last frame until this one's time
            while self.written < round((time_s - self.start_s) * self.fps):
                self.writer.write(self.held)
                self.written += 1
        self.writer.write(annotated_bgr)
        self.written += 1
        self.held = annotated_bgr if live else None
        self.csv.writerow(frame_counts_row(index, time_s, result, self.class_names))

    def paths(self, partial: bool) -> tuple[Path, Path]:
        """The video and CSV names; a run cut short gets its own, so it never replaces a whole run's files."""
        tag = ".partial" if partial else ""
        return self.out_dir / f"{self.name}_annotated{tag}.mp4", self.out_dir / f"{self.name}_counts{tag}.csv"

    def close(self, ok: bool, partial: bool = False) -> bool:
        """Finish both files when ``ok`` and a frame was written (under the .partial names when the run was
        cut short; a whole run removes an earlier cut one's); otherwise remove the unfinished video."""
        if self.writer is not None:
            self.writer.release()
        if not ok or self.writer is None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp_path.unlink()
            for folder in self.made:  # the folders made for outputs that never came, if still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
            return False
        with open(self.tmp_path, "r+b") as f:  # on disk before the rename (Windows syncs only what it may write)
            os.fsync(f.fileno())
        self.video_path, self.csv_path = self.paths(partial)
        # OpenCV's writer fails silently (a full disk leaves a file without its index): read it back first
        check = self.cv2.VideoCapture(str(self.tmp_path))
        readable = int(check.get(self.cv2.CAP_PROP_FRAME_COUNT) or 0) if check.isOpened() else 0
        check.release()
        if readable != self.written:
            with contextlib.suppress(OSError):
                self.tmp_path.unlink()
            raise OutputError(
                f"{self.video_path}: the annotated video was not written whole ({readable} of {self.written} frames "
                "readable; a full disk?); no file of this run replaced an earlier one"
            )
        # both or neither: a rename refused (a player holding the old video on Windows) keeps the earlier pair;
        # a counts.csv that is a link is written through it, one on a device in place, as every other output
        write_files([(self.csv_path, self.rows.getvalue().encode())], staged=[(self.video_path, str(self.tmp_path))])
        if not partial:  # this run's whole files supersede a cut-short earlier run's
            for stale in self.paths(partial=True):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        return True


def _host() -> str:
    return re.sub(r"[^\w-]+", "_", socket.gethostname()) or "host"


def run_stream(
    predictor: Predictor,
    source: str,
    out_dir: str | Path | None = None,
    conf: Conf | Mapping[str, float] | str | None = None,
    show: bool | None = None,
    max_frames: int | None = None,
    cell_size: float | str | None = "auto",
) -> StreamSummary:
    """Run ``predictor`` on every frame of ``source`` until it ends, q/Esc in the window, Ctrl-C or ``max_frames``.
    ``conf`` as ``bloodcell.predict`` takes it (default: the model's operating points)."""
    import cv2

    source = str(source)
    if max_frames is not None:
        try:
            if isinstance(max_frames, bool) or operator.index(max_frames) < 1:
                raise TypeError
        except TypeError:
            raise ConfigError(
                f"max_frames: {max_frames!r}; give a whole number of frames, 1 or more (None: all)"
            ) from None
        max_frames = operator.index(max_frames)
    cell_size = api_cell_size(predictor, cell_size)
    conf = resolve_conf(conf, predictor.class_names, predictor.conf)
    class_names = tuple(predictor.class_names)
    name = stream_name(source)
    cap = open_capture(cv2, source)
    in_window, sink, ok, partial = False, None, False, False
    try:
        in_window = show is not False and gui_available(cv2)
        is_file = not is_camera(source) and "://" not in source
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        fps = fps if fps > 0 and (is_file or fps < 1000) else 0.0  # a camera's 1000+ is a driver's placeholder
        if out_dir is not None or not in_window:
            sink = _FileSink(cv2, Path(out_dir or DEFAULT_OUT), name, fps or 10.0, class_names)
        annotator = BoxAnnotator(class_names)
        summary = StreamSummary(source, class_names, totals=dict.fromkeys(class_names, 0), fps=fps, shown=in_window)
        if not is_camera(source):  # files say how many frames they hold; a served file too, a live stream 0
            summary.expected_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        started = time.monotonic()
        try:
            ran_out = _loop(cv2, cap, predictor, conf, name, annotator, sink, summary, in_window, max_frames, cell_size)
            # a camera never ends by itself, nor does a live stream: no more frames is a dropout, not an end
            summary.source_stopped = ran_out and not is_file and not summary.expected_frames
            # stopped by the API's max_frames: a part if the file had another frame (not judged by the count's
            # tolerance), whose outputs must not replace a whole run's
            cut = not ran_out and not summary.quit and (is_file or summary.expected_frames > 0)
            summary.limited = cut and bool(cap.grab())
        except BaseException as e:  # Ctrl-C is how a camera stream ends: its frames are kept (a file's: as a part)
            if not is_interrupt(e) or summary.frames == 0:
                raise  # nothing to keep: an interrupted command, not an unreadable source
            summary.interrupted = is_file or summary.expected_frames > 0  # a file, here or served: cut short
        summary.seconds = time.monotonic() - started
        if summary.frames == 0:
            raise ImageError(f"{source}: no frame could be read")
        ok = True
        partial = summary.partial
    finally:
        cap.release()
        if in_window:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(WINDOW)
        if sink is not None and sink.close(ok, partial):
            summary.video_path, summary.csv_path = sink.video_path, sink.csv_path
    return summary


def _loop(cv2, cap, predictor, conf, name, annotator, sink, summary, shown, max_frames, cell_size="auto") -> bool:
    """Count frames until the source gives no more (True), or q/Esc, a closed window or ``max_frames`` (False)."""
    timed_by_fps = summary.fps > 0 and not is_camera(summary.source)
    live = not timed_by_fps and (is_camera(summary.source) or "://" in summary.source)  # frames come in real time
    start = time.monotonic()
    while max_frames is None or summary.frames < max_frames:
        grabbed, frame = cap.read()
        if not grabbed or frame is None:
            return True
        index = summary.frames
        time_s = time.monotonic() - start
        if timed_by_fps:  # the frame's own time stamp: a variable-rate file's (a phone's) are not index / rate
            stamp = cap.get(cv2.CAP_PROP_POS_MSEC)
            time_s = stamp / 1000 if stamp > 0 or index == 0 else index / summary.fps
            summary.last_time_s = time_s
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        result = predict_image(predictor, rgb, Path(name), conf, cell_size=cell_size)
        counts = result.counts
        drawn = annotator.annotate(rgb, result.counted, {**counts, "frame": index})
        bgr = cv2.cvtColor(np.asarray(drawn), cv2.COLOR_RGB2BGR)
        if sink is not None:
            sink.write(index, time_s, result, bgr, live=live)
        for k, v in counts.items():
            summary.totals[k] += v
        summary.frames += 1
        if shown:
            cv2.imshow(WINDOW, bgr)
            if (cv2.waitKey(1) & 0xFF) in QUIT_KEYS or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                summary.quit = True
                return False
    return False
