"""Where a stream's results go: the annotated video (a temporary, read back, then renamed with its CSV)
and one row of counts per frame; a run cut short gets .partial names of its own."""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import os
import re
import socket
from pathlib import Path

import numpy as np

from bloodcell.app.sinks import frame_counts_header, frame_counts_row
from bloodcell.atomic import process_alive, write_files
from bloodcell.errors import ConfigError, ImageError, OutputError
from bloodcell.runtime.predict import ImageResult

#: The annotated video's highest frame rate (a faster source plays in slow motion).
MAX_VIDEO_FPS = 240.0


class VideoFileSink:
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
        self.tmp_path = out_dir / f".{name}_annotated.{host_tag()}-{os.getpid()}.tmp.mp4"
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
        prefix = f".{self.name}_annotated.{host_tag()}-"  # another machine's (a shared folder) are not ours to judge
        for stale in self.out_dir.glob(f"{glob.escape(prefix)}*.tmp.mp4"):
            pid = stale.name[len(prefix) : -len(".tmp.mp4")]
            if pid.isascii() and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
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


def host_tag() -> str:
    """This machine's name as a file name part: a sweep judges only its own machine's temporaries."""
    return re.sub(r"[^\w-]+", "_", socket.gethostname()) or "host"
