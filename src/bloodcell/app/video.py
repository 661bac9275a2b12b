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
import operator
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.app.video_sink import VideoFileSink
from bloodcell.app.video_sources import is_camera, open_capture, stream_name
from bloodcell.errors import ConfigError, ImageError, is_interrupt
from bloodcell.runtime.counting import Conf, resolve_conf
from bloodcell.runtime.predict import Predictor, api_cell_size, predict_image
from bloodcell.runtime.sources import shown as safe_text

__all__ = ["DEFAULT_OUT", "StreamSummary", "gui_available", "is_camera", "open_capture", "run_stream", "stream_name"]

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


def gui_available(cv2: ModuleType) -> bool:
    """True when a window can be shown: a display is set and this OpenCV build has GUI support."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)  # headless builds raise cv2.error here
    except cv2.error:
        return False
    return True


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
            sink = VideoFileSink(cv2, Path(out_dir or DEFAULT_OUT), name, fps or 10.0, class_names)
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
