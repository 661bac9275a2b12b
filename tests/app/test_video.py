"""`bloodcell predict --source VIDEO`: per-frame counts CSV and annotated video (on the numpy FakePredictor)."""

import csv
import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bloodcell.app.sinks import counts_header, counts_row, frame_counts_header
from bloodcell.cli import main
from bloodcell.errors import ConfigError
from bloodcell.runtime.counting import Calibration
from bloodcell.runtime.predict import predict_image
from bloodcell.types import CLASS_NAMES
from fakes import FakePredictor, slide_image, use_fake_model

cv2 = pytest.importorskip("cv2")

FRAMES = 6
CONF = 0.3  # the model's own operating point


@pytest.fixture(scope="module")
def predictor():
    return FakePredictor(conf=CONF)


@pytest.fixture
def model_file(predictor, monkeypatch, tmp_path):
    """A --model file that `bloodcell predict` loads as ``predictor``."""
    return use_fake_model(monkeypatch, predictor, tmp_path / "models" / "fake.pt")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """6 frames at 2 fps: three synthetic slides, two frames each."""
    frames = [cv2.cvtColor(slide_image(seed), cv2.COLOR_RGB2BGR) for seed in range(3)]
    path = tmp_path_factory.mktemp("video") / "slide.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (640, 480))
    assert writer.isOpened()
    for i in range(FRAMES):
        writer.write(frames[i // 2])
    writer.release()
    return path


def read_frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(autouse=True)
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def test_video_gives_counts_per_frame_and_annotated_video(predictor, model_file, video, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]
    assert main(argv) == 0
    assert "6 frames" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "slide_counts.csv").open()))
    assert len(rows) == FRAMES
    # the columns of `predict --csv` (one writer, app/sinks.py) but its error, the frame and its time for the image
    assert list(rows[0]) == frame_counts_header(CLASS_NAMES) == ["frame", "time_s", *counts_header(CLASS_NAMES)[1:-1]]
    decoded = read_frames(video)
    assert len(decoded) == FRAMES
    counted = []
    for i, (row, frame) in enumerate(zip(rows, decoded, strict=True)):
        assert int(row["frame"]) == i and float(row["time_s"]) == pytest.approx(i / 2.0)
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        result = predict_image(predictor, rgb, Path("slide"), predictor.conf)
        expected = result.counts
        assert {c: int(row[c]) for c in CLASS_NAMES} == expected
        assert (int(row["width"]), int(row["height"]), float(row["scale"])) == (640, 480, result.scale)
        counted.append(sum(expected.values()))
    assert min(counted) > 0  # the comparison is not between empty frames
    annotated = read_frames(out / "slide_annotated.mp4")
    assert len(annotated) == FRAMES and annotated[0].shape == (480, 640, 3)
    assert not np.array_equal(annotated[0], decoded[0])  # boxes and the count banner are drawn
    assert sorted(p.name for p in out.iterdir()) == ["slide_annotated.mp4", "slide_counts.csv"]  # no temp left


def test_frame_rows_are_the_image_rows_with_frame_and_time(video, tmp_path):
    """Counts with their 90% intervals, as `predict --csv` writes them for an image."""
    from bloodcell.app.video import run_stream

    calibration = Calibration({c: ((0.0, 0.5, 1.0), (0.0, 0.5, 0.9)) for c in CLASS_NAMES}, floor=0.05)
    calibrated = FakePredictor(conf=CONF, calibration=calibration)
    summary = run_stream(calibrated, str(video), tmp_path, show=False, max_frames=2)
    with open(summary.csv_path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == 2
    for i, (row, frame) in enumerate(zip(rows, read_frames(video), strict=False)):
        result = predict_image(calibrated, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), Path("slide"), CONF)
        assert result.intervals  # the interval columns are filled, not left empty
        assert row == [str(i), f"{i / 2:.3f}", *map(str, counts_row(result, CLASS_NAMES)[1:-1])]


def test_missing_video_is_one_line(model_file, tmp_path, capsys):
    code = main(["predict", "--source", str(tmp_path / "nope.mp4"), "--model", str(model_file), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and "nope.mp4" in err[0] and "Traceback" not in err[0]


def test_unreadable_video_leaves_no_files(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    out = tmp_path / "out"
    code = main(["predict", "--source", str(bad), "--model", str(model_file), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and "bad.mp4" in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "extra",
    [["a.jpg"], [], ["--json", "r.json"], ["--voc", "labels"]],
    ids=["with-positional", "neither", "json-flag", "voc-flag"],
)
def test_source_flag_combinations_are_refused(model_file, video, capsys, extra):
    argv = ["predict", *extra, "--model", str(model_file)]
    if extra != []:
        argv += ["--source", str(video)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_headless_opencv_never_opens_a_window(monkeypatch):
    from bloodcell.app.video import gui_available

    if not _opencv_is_headless():
        pytest.skip("this OpenCV build has GUI support")
    monkeypatch.setenv("DISPLAY", ":0")
    assert gui_available(cv2) is False


def _opencv_is_headless() -> bool:
    """Ask OpenCV itself: a build without GUI support refuses to create a window ("not implemented").

    Probed in a child process with no display (Qt offscreen), so a GUI build can neither open a
    window nor abort this process.
    """
    probe = (
        "import cv2\n"
        "try:\n"
        "    cv2.namedWindow('probe')\n"
        "except cv2.error as e:\n"
        "    print('headless' if 'not implemented' in str(e).lower() else 'gui')\n"
        "else:\n"
        "    print('gui')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and done.stdout.strip() == "headless"


def test_run_stream_stops_at_max_frames(predictor, video, tmp_path):
    from bloodcell.app.video import run_stream, stream_name

    summary = run_stream(predictor, str(video), tmp_path, conf=CONF, show=False, max_frames=2)
    assert summary.frames == 2 and not summary.shown and summary.fps == pytest.approx(2.0)
    # a part of the file: its outputs never take (or replace) a whole run's names
    assert summary.partial and not summary.complete and "stopped at max_frames=2" in str(summary)
    assert len((tmp_path / "slide_counts.partial.csv").read_text().splitlines()) == 3
    assert sum(summary.totals.values()) > 0 and "2 frames" in str(summary)
    short = run_stream(predictor, str(video), tmp_path, conf=CONF, show=False, max_frames=FRAMES - 1)
    assert short.partial  # one frame short: within a container count's tolerance, but the file had another
    whole = run_stream(predictor, str(video), tmp_path, conf=CONF, show=False, max_frames=FRAMES)  # all it has
    assert whole.complete and (tmp_path / "slide_counts.csv").is_file()
    assert not (tmp_path / "slide_counts.partial.csv").exists()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match=r"max_frames: .*; give a whole number of frames, 1 or more"):
            run_stream(predictor, str(video), tmp_path, conf=CONF, show=False, max_frames=bad)
    assert [stream_name(s) for s in ("a/b/x.mp4", "rtsp://h/cam?x=1", "http://h/")] == ["x", "cam", "h"]
    assert stream_name("a?b.mp4") == "a_b" and stream_name("a.mp4") == "a"  # a file's ? is part of its name
    # other containers keep their suffix (x.mp4 and x.avi never share outputs); letters of any script stay
    assert [stream_name(s) for s in ("x.avi", "Müller 2.MOV", "é.mp4", "è.mp4")] == ["x.avi", "Müller_2.MOV", "é", "è"]
    assert re.fullmatch(r"camera0-\d{8}T\d{6}", stream_name("0"))  # each camera session its own files


def test_a_video_cut_short_is_said_and_exits_1(model_file, video, tmp_path, monkeypatch, capsys):
    """A file announcing more frames than can be read (cut off, damaged): its frames are kept, the
    summary and the exit code say it is incomplete."""
    from bloodcell.app import video as video_module

    real = video_module.open_capture

    class Announces20:
        def __init__(self, cap) -> None:
            self.cap = cap

        def get(self, prop):
            return 20.0 if prop == cv2.CAP_PROP_FRAME_COUNT else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(video_module, "open_capture", lambda cv2_, source: Announces20(real(cv2_, source)))
    out = tmp_path / "out"
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 1
    assert "warning: read 6 of the 20 frames the source announces" in capsys.readouterr().out
    assert len((out / "slide_counts.partial.csv").read_text().splitlines()) == 1 + FRAMES


class _InterruptedAtThird(FakePredictor):
    calls = 0

    def predict(self, image, min_score: float = 0.001):
        type(self).calls += 1
        if type(self).calls == 3:
            raise KeyboardInterrupt  # Ctrl-C, or a scheduler's SIGTERM (the CLI turns it into this)
        return super().predict(image, min_score)


def test_an_interrupted_video_file_keeps_its_frames_and_exits_130(video, tmp_path, monkeypatch, capsys):
    """The frames counted before Ctrl-C are kept under .partial names: a rerun cut short never replaces
    an earlier whole run's files, and a later whole run removes the cut one's."""
    out = tmp_path / "out"
    whole = use_fake_model(monkeypatch, FakePredictor(conf=0.3), tmp_path / "models" / "whole.pt")
    assert main(["predict", "--source", str(video), "--model", str(whole), "--out", str(out)]) == 0
    capsys.readouterr()
    model = use_fake_model(monkeypatch, _InterruptedAtThird(conf=0.3), tmp_path / "models" / "fake.pt")
    assert main(["predict", "--source", str(video), "--model", str(model), "--out", str(out)]) == 130
    said = capsys.readouterr().out
    assert "interrupted after 2 of 6 frames; the .partial files hold those" in said
    assert "slide_counts.partial.csv" in said and "slide_annotated.partial.mp4" in said
    assert len((out / "slide_counts.partial.csv").read_text().splitlines()) == 3
    assert len((out / "slide_counts.csv").read_text().splitlines()) == 1 + FRAMES  # the whole run's, untouched
    assert len(read_frames(out / "slide_annotated.mp4")) == FRAMES
    names = ["slide_annotated.mp4", "slide_annotated.partial.mp4", "slide_counts.csv", "slide_counts.partial.csv"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert main(["predict", "--source", str(video), "--model", str(whole), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["slide_annotated.mp4", "slide_counts.csv"]


def test_a_camera_video_plays_in_real_time(predictor, video, tmp_path, monkeypatch):
    """A camera says 10 fps but the model counts a frame every 0.5 s: each frame is held until the next,
    so 3 frames over 1 s of wall time make a 1.1 s video (11 frames at 10 fps), not a 0.3 s one."""
    from bloodcell.app import video as video_module

    frames = read_frames(video)[::2]  # three different slides

    class Camera:
        def __init__(self) -> None:
            self.left = list(frames)

        def get(self, prop):
            return 10.0 if prop == cv2.CAP_PROP_FPS else 0.0

        def read(self):
            return (True, self.left.pop(0)) if self.left else (False, None)

        def release(self) -> None:
            pass

    class Clock:  # each reading 0.5 s after the last: the loop reads it once at the start and once per frame
        now = 0.0

        def monotonic(self) -> float:
            self.now += 0.5
            return self.now

        def __getattr__(self, name: str):
            return getattr(time, name)

    monkeypatch.setattr(video_module, "open_capture", lambda cv2_, source: Camera())
    monkeypatch.setattr(video_module, "time", Clock())
    summary = video_module.run_stream(predictor, "0", tmp_path, conf=CONF, show=False)
    assert summary.frames == 3
    # a camera does not end by itself: no more frames is a dropout, said so (not a clean recording)
    assert summary.source_stopped and not summary.complete
    assert "warning: the camera stopped sending frames after 3" in str(summary)
    written = read_frames(summary.video_path)
    assert len(written) == 11
    rows = list(csv.DictReader(summary.csv_path.open()))
    assert [r["time_s"] for r in rows] == ["0.500", "1.000", "1.500"]  # one row per counted frame
    # frame 0 held for 0.5 s (5 video frames), then frame 1 for 0.5 s, then frame 2
    same = [float(np.abs(a.astype(int) - b.astype(int)).mean()) < 3 for a, b in itertools.pairwise(written)]
    assert same == [True] * 4 + [False] + [True] * 4 + [False]


def test_images_folders_and_videos_given_the_wrong_way_say_the_right_one(model_file, video, tmp_path, capsys):
    folder = tmp_path / "slide"
    folder.mkdir()
    image = folder / "field.jpg"
    cv2.imwrite(str(image), read_frames(video)[0])
    assert main(["predict", "--source", str(image), "--model", str(model_file)]) == 2
    assert f"an image; `bloodcell predict {image}` counts it" in capsys.readouterr().err
    assert main(["predict", "--source", str(folder), "--model", str(model_file)]) == 2
    assert f"a folder; images in it are counted by `bloodcell predict {folder}`" in capsys.readouterr().err
    assert main(["predict", str(video), "--model", str(model_file)]) == 1
    assert f"a video, not an image; `bloodcell predict --source {video}` counts its frames" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["field.jpg"]  # nothing written
    from bloodcell.errors import ImageError
    from bloodcell.runtime.images import decode_image  # a batch's or an upload's bytes say it too

    with pytest.raises(ImageError, match=r"v\.mp4: a video, not an image; `bloodcell predict --source"):
        decode_image(video.read_bytes(), "v.mp4")


def test_a_stream_that_gives_no_frame_leaves_no_folder(model_file, tmp_path, monkeypatch, capsys):
    from bloodcell.app import video as video_module

    class Silent:  # opens (a URL that answers) but never gives a frame
        def get(self, prop):
            return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

        def read(self):
            return False, None

        def release(self) -> None:
            pass

    monkeypatch.setattr(video_module, "open_capture", lambda cv2_, source: Silent())
    out = tmp_path / "runs" / "cam"
    assert main(["predict", "--source", "rtsp://scope/live", "--model", str(model_file), "--out", str(out)]) == 1
    assert "rtsp://scope/live: no frame could be read" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("announced", "says"), [(0, "the stream stopped sending frames after 6"), (20, "read 6 of the 20")]
)
def test_a_stream_that_stops_early_is_said_and_exits_1(
    model_file, video, tmp_path, monkeypatch, capsys, announced, says
):
    """A URL: a live stream (no frame count) that stops sending frames, or one serving a file that
    announces more frames than arrive (the connection dropped), is not reported as a clean end."""
    from bloodcell.app import video as video_module

    frames = read_frames(video)

    class Stream:
        def __init__(self) -> None:
            self.left = list(frames)

        def get(self, prop):
            return {cv2.CAP_PROP_FPS: 25.0, cv2.CAP_PROP_FRAME_COUNT: float(announced)}.get(prop, 0.0)

        def read(self):
            return (True, self.left.pop(0)) if self.left else (False, None)

        def release(self) -> None:
            pass

    monkeypatch.setattr(video_module, "open_capture", lambda cv2_, source: Stream())
    out = tmp_path / "out"
    assert main(["predict", "--source", "http://scope/live.avi", "--model", str(model_file), "--out", str(out)]) == 1
    assert says in capsys.readouterr().out
    # a served file cut off is partial (its own file name); a live stream's end is where it stopped
    counts = out / ("live.avi_counts.partial.csv" if announced else "live.avi_counts.csv")
    assert len(counts.read_text().splitlines()) == 1 + FRAMES


@pytest.mark.parametrize(("announced", "code"), [(20, 130), (0, 0)])
def test_ctrl_c_on_a_stream_is_an_interruption_only_when_it_serves_a_file(
    video, tmp_path, monkeypatch, announced, code
):
    """A URL serving a video of known length, stopped early, is cut short (130, as a local file); a live
    stream or camera is ended by stopping it (0)."""
    from bloodcell.app import video as video_module

    frames = read_frames(video)

    class Stream:
        def get(self, prop):
            return {cv2.CAP_PROP_FPS: 25.0, cv2.CAP_PROP_FRAME_COUNT: float(announced)}.get(prop, 0.0)

        def read(self):
            return True, frames[0]

        def release(self) -> None:
            pass

    class StoppedAtThird(_InterruptedAtThird):
        calls = 0

    monkeypatch.setattr(video_module, "open_capture", lambda cv2_, source: Stream())
    model = use_fake_model(monkeypatch, StoppedAtThird(conf=0.3), tmp_path / "models" / "fake.pt")
    out = tmp_path / "out"
    assert main(["predict", "--source", "http://scope/slide.mp4", "--model", str(model), "--out", str(out)]) == code
    counts = out / ("slide_counts.partial.csv" if code else "slide_counts.csv")  # cut short: its own name
    assert len(counts.read_text().splitlines()) == 3


def test_quitting_a_video_file_in_the_window_is_partial_but_no_failure():
    """q/Esc on a file: what was counted is kept under .partial names, said as a stop (not "cut off or
    damaged?"), exit 0; on a camera the same key is just its end."""
    from bloodcell.app.video import StreamSummary

    quit_file = StreamSummary("slide.mp4", CLASS_NAMES, frames=2, expected_frames=6, quit=True)
    assert quit_file.partial and quit_file.complete
    assert "stopped in the window after 2 of 6 frames; the .partial files hold those" in str(quit_file)
    assert "cut off" not in str(quit_file)
    camera = StreamSummary("0", CLASS_NAMES, frames=40, quit=True)
    assert not camera.partial and camera.complete and "stopped" not in str(camera)


def test_a_variable_rate_file_is_whole_and_timed_by_its_frames_own_stamps(
    model_file, video, tmp_path, monkeypatch, capsys
):
    """A phone's variable-rate video: the container's frame count is duration x average rate (too many), the
    frames' own time stamps are uneven. Read to its end it is whole (no .partial, exit 0), timed by its stamps."""
    from bloodcell.app import video as video_module

    real = video_module.open_capture
    stamps = iter([0.0, 100.0, 200.0, 3000.0, 3500.0, 9800.0])  # ms; the last near the 10 s the container says

    class VariableRate:
        def __init__(self, cap) -> None:
            self.cap, self.stamp = cap, 0.0

        def read(self):
            grabbed, frame = self.cap.read()
            if grabbed:
                self.stamp = next(stamps)
            return grabbed, frame

        def get(self, prop):
            if prop == cv2.CAP_PROP_FRAME_COUNT:
                return 20.0  # 10 s x 2 fps
            return self.stamp if prop == cv2.CAP_PROP_POS_MSEC else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(video_module, "open_capture", lambda cv2_, source: VariableRate(real(cv2_, source)))
    out = tmp_path / "out"
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().out
    with open(out / "slide_counts.csv") as f:
        assert [row["time_s"] for row in csv.DictReader(f)] == ["0.000", "0.100", "0.200", "3.000", "3.500", "9.800"]
    # cut off after 3 s of a 10 s file: short of its end, so a part
    stamps = iter([0.0, 100.0, 200.0, 3000.0, 3500.0, 4000.0])
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 1
    assert "warning: read 6 of the 20 frames the source announces" in capsys.readouterr().out


def test_a_video_the_disk_could_not_hold_replaces_nothing(model_file, video, tmp_path, monkeypatch, capsys):
    """OpenCV's writer fails silently (a full disk leaves an mp4 without its index): the video is read back
    before it replaces anything; the earlier run's pair stays, and the error names the file."""
    from bloodcell.app import video_sink

    out = tmp_path / "out"
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write = video_sink.VideoFileSink.write

    def loses_a_frame(self, index, *args, **kwargs):
        write(self, index, *args, **kwargs)
        self.written += index == 2  # one frame the file does not hold, as a write that failed

    monkeypatch.setattr(video_sink.VideoFileSink, "write", loses_a_frame)
    capsys.readouterr()
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'slide_annotated.mp4'}: the annotated video was not written whole (6 of 7 frames readable" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary left, nothing replaced


def test_outputs_blocked_by_a_folder_are_said_before_the_first_frame(model_file, video, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "slide_counts.csv").mkdir(parents=True)
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 2
    assert f"{out / 'slide_counts.csv'}: is a folder, where this run's csv output goes" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["slide_counts.csv"]


def test_awkward_sources_are_refused_by_name(model_file, video, tmp_path, capsys):
    still = tmp_path / "still.mp4"  # a JPEG under a video's name: OpenCV would play it as a 1-frame video
    cv2.imwrite(str(tmp_path / "f.jpg"), read_frames(video)[0])
    (tmp_path / "f.jpg").rename(still)
    for source, message in [
        (str(still), f"--source {still}: an image; `bloodcell predict {still}` counts it"),
        ("99999999999", "--source 99999999999: not a camera index (0 to 2147483647) nor a video file"),
    ]:
        assert main(["predict", "--source", source, "--model", str(model_file)]) == 2
        assert message in capsys.readouterr().err
    assert main(["predict", "--source", "²", "--model", str(model_file)]) == 1  # a name, not a camera: no such file
    assert "²: no such file or folder" in capsys.readouterr().err
    if hasattr(os, "mkfifo"):  # (not on Windows)
        os.mkfifo(tmp_path / "pipe.mp4")
        assert main(["predict", "--source", str(tmp_path / "pipe.mp4"), "--model", str(model_file)]) == 1
        assert "pipe.mp4: not a regular file (a pipe, socket or device)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--source", str(video), "--source", str(video), "--model", str(model_file)])
    assert "--source given twice" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="file names that are not UTF-8: Linux file systems only")
def test_a_name_not_utf8_is_read_and_a_killed_runs_temporary_swept(model_file, video, tmp_path, capsys):
    """A Latin-1 file name (lone surrogates, which crash OpenCV's open) is read; a killed run's temporary
    video is swept by the next run of that name."""
    latin1 = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.avi")
    os.link(video, latin1)
    out = tmp_path / "out"
    out.mkdir()
    from bloodcell.app.video_sink import host_tag

    stale = out / f".caf_.avi_annotated.{host_tag()}-999999999.tmp.mp4"  # no such process (é's byte: "_")
    elsewhere = out / ".caf_.avi_annotated.another-host-999999999.tmp.mp4"  # a shared folder's: not judged here
    stale.write_bytes(b"half a video")
    elsewhere.write_bytes(b"being written")
    assert main(["predict", "--source", latin1, "--model", str(model_file), "--out", str(out)]) == 0
    assert not stale.exists() and elsewhere.exists() and len(read_frames(out / "caf_.avi_annotated.mp4")) == FRAMES
    assert f"{out / 'caf_.avi_annotated.mp4'}" in capsys.readouterr().out


def test_an_odd_sized_field_keeps_every_pixel_in_the_video(predictor, video, tmp_path, monkeypatch):
    """MPEG-4 wants even sides; OpenCV's writer would crop a 641x479 field's last row and column: padded."""
    from bloodcell.app import video as video_module
    from bloodcell.app.video import run_stream

    real = video_module.open_capture

    class OddSized:
        def __init__(self, cap) -> None:
            self.cap = cap

        def read(self):
            grabbed, frame = self.cap.read()
            return grabbed, (cv2.resize(frame, (641, 479)) if grabbed else frame)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(video_module, "open_capture", lambda cv2_, source: OddSized(real(cv2_, source)))
    summary = run_stream(predictor, str(video), tmp_path, conf=CONF, show=False)
    written = read_frames(summary.video_path)
    assert len(written) == FRAMES and written[0].shape[:2] == (480, 642)
    field = written[0][:479, :641].mean()
    assert written[0][479].mean() < field / 4 and written[0][:, 641].mean() < field / 4  # the edge is black (lossy)
    with open(summary.csv_path) as f:
        assert {(r["width"], r["height"]) for r in csv.DictReader(f)} == {("641", "479")}


def test_a_folder_with_a_video_says_it_is_left_out(model_file, video, tmp_path, capsys):
    folder = tmp_path / "slide"
    folder.mkdir()
    cv2.imwrite(str(folder / "field.jpg"), read_frames(video)[0])
    (folder / "v.mp4").write_bytes(video.read_bytes())
    assert main(["predict", str(folder), "--model", str(model_file), "--out", str(tmp_path / "out")]) == 0
    assert f"note: {folder}: 1 video left out: v.mp4; `bloodcell predict --source {folder / 'v.mp4'}`" in (
        capsys.readouterr().err
    )


def test_an_mpeg_stream_is_a_video_not_a_still_image(model_file, video, tmp_path):
    """Pillow opens an MPEG-1 stream's first frame as an image: the still-image check must not refuse it."""
    path = tmp_path / "clip.mpeg"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"PIM1"), 25.0, (640, 480))
    if not writer.isOpened():
        pytest.skip("this OpenCV build writes no MPEG-1")
    for frame in read_frames(video)[:2]:
        writer.write(frame)
    writer.release()
    assert main(["predict", "--source", str(path), "--model", str(model_file), "--out", str(tmp_path / "out")]) == 0


def test_a_refused_video_rename_keeps_the_earlier_pair(model_file, video, tmp_path, monkeypatch, capsys):
    """The counts CSV and the video are renamed together: if the video's rename is refused (a player holds the old
    one open on Windows), the CSV gets its earlier file back, so the pair stays one run's."""
    import bloodcell.atomic as atomic

    out = tmp_path / "out"
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = os.replace

    def held_open(src, dst):
        if Path(dst).name == "slide_annotated.mp4":
            raise PermissionError(13, "Permission denied", str(src))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", held_open)
    assert (
        main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out), "--conf", "0.9"]) == 2
    )
    assert f"{out / 'slide_annotated.mp4'}: Permission denied" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporaries left either


def test_counts_csv_written_through_its_link_and_a_file_named_like_a_camera(model_file, video, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    kept = tmp_path / "lab" / "slide_counts.csv"  # a lab links the counts into its own folder
    kept.parent.mkdir()
    kept.write_text("earlier\n")
    (out / "slide_counts.csv").symlink_to(kept)
    assert main(["predict", "--source", str(video), "--model", str(model_file), "--out", str(out)]) == 0
    assert (out / "slide_counts.csv").is_symlink() and kept.read_text().startswith("frame,time_s,")
    monkeypatch.chdir(tmp_path)
    Path("12").write_bytes(video.read_bytes())  # a file named 12 here is that file, not camera 12
    assert main(["predict", "--source", "12", "--model", str(model_file), "--out", str(out)]) == 0
    assert (out / "12_counts.csv").is_file()
