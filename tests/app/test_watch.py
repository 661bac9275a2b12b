"""`bloodcell watch`: slow writers, a restart in the middle, bad files (on the numpy FakePredictor)."""

import csv
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from bloodcell.app.report import read_slide
from bloodcell.app.sinks import counts_header
from bloodcell.app.watch import LOCK_NAME, STATE_NAME, Watcher
from bloodcell.cli import main
from bloodcell.errors import ConfigError
from bloodcell.runtime.images import load_image
from bloodcell.runtime.predict import predict_image
from bloodcell.types import CLASS_NAMES
from fakes import FakePredictor, save_slide, use_fake_model

SETTLE = 0.3
CONF = 0.05


@pytest.fixture(scope="module")
def predictor():
    """Tests that count predict() calls take a fresh FakePredictor of their own (same detections)."""
    return FakePredictor(conf=CONF)


@pytest.fixture
def model_file(predictor, monkeypatch, tmp_path):
    """A --model file that `bloodcell watch` loads as ``predictor``."""
    return use_fake_model(monkeypatch, predictor, tmp_path / "models" / "fake.pt")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    for i in range(2):  # 640x480, as a microscope camera writes them
        save_slide(d / f"cam{i}.jpg", seed=i)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(d / "noise.png")
    return d


def expected_counts(predictor, path):
    """What `bloodcell predict` counts in ``path`` (the same pipeline: exposure step, operating points)."""
    return predict_image(predictor, load_image(path), path, predictor.conf).counts


def read_rows(out):
    with open(out / "counts.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    assert rows[0] == counts_header(CLASS_NAMES)
    return rows[1:]


def write_slowly(src, dst, chunks=8, pause=0.04):
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with open(dst, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


class Running:
    """A Watcher's run() in a thread, stopped on exit."""

    def __init__(self, watcher) -> None:
        self.watcher, self.stop = watcher, threading.Event()
        self.thread = threading.Thread(target=watcher.run, args=(self.stop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.watcher

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.watcher.close()  # releases the out folder's lock


def test_slow_writes_are_processed_once_after_completion(predictor, sources, tmp_path):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    counting = FakePredictor(conf=CONF)
    watcher = Watcher(counting, folder, out, settle=SETTLE, scan_interval=0.5)
    with Running(watcher):
        writers = [
            threading.Thread(target=write_slowly, args=(sources / name, folder / name))
            for name in ("cam0.jpg", "cam1.jpg")
        ]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        assert wait_until(lambda: watcher.processed == 2)
        time.sleep(3 * SETTLE)  # more scans and events: still nothing processed twice
    assert counting.calls == 2 and watcher.failed == 0
    rows = read_rows(out)
    assert sorted(r[0] for r in rows) == ["cam0.jpg", "cam1.jpg"]
    for r in rows:
        full = load_image(sources / r[0])
        assert (int(r[1]), int(r[2])) == (full.shape[1], full.shape[0])  # decoded whole, not a partial file
        want = expected_counts(predictor, sources / r[0])
        header = counts_header(CLASS_NAMES)
        assert [int(r[header.index(c)]) for c in CLASS_NAMES] == [want[c] for c in CLASS_NAMES]
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["cam0.jpg", "cam1.jpg"]
    state = json.loads((out / STATE_NAME).read_text())["files"]
    assert state["cam0.jpg"]["status"] == "ok" and state["cam0.jpg"]["size"] == (folder / "cam0.jpg").stat().st_size


def test_a_file_still_being_written_waits(predictor, sources, tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    data = (sources / "cam0.jpg").read_bytes()
    (folder / "cam0.jpg").write_bytes(data[: len(data) // 2])
    watcher = Watcher(predictor, folder, tmp_path / "out", settle=30)
    assert watcher.poll_once() == [] and watcher.pending == 1  # fresh mtime: not settled, not decoded
    (folder / "cam0.jpg").write_bytes(data)
    watcher.settle = 0
    [result] = watcher.poll_once()
    assert result.error is None and watcher.failed == 0


def test_restart_in_the_middle(predictor, sources, tmp_path):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    first = FakePredictor(conf=CONF)
    watcher = Watcher(first, folder, out, settle=SETTLE, scan_interval=0.5)
    with Running(watcher):
        write_slowly(sources / "cam0.jpg", folder / "cam0.jpg")
        assert wait_until(lambda: watcher.processed == 1)
    # Down: two files arrive; after the catch-up scan a third is written slowly while it watches.
    shutil.copy(sources / "cam1.jpg", folder / "cam1.jpg")
    shutil.copy(sources / "noise.png", folder / "noise.png")
    second = FakePredictor(conf=CONF)
    watcher = Watcher(second, folder, out, settle=SETTLE, scan_interval=0.5)
    with Running(watcher):
        assert wait_until(lambda: watcher.processed == 2)
        write_slowly(sources / "cam0.jpg", folder / "late.jpg")
        assert wait_until(lambda: watcher.processed == 3)
    assert second.calls == 3 and first.calls == 1
    # A third start with nothing new does nothing.
    third = FakePredictor(conf=CONF)
    assert Watcher(third, folder, out, settle=0).drain() == [] and third.calls == 0
    names = [r[0] for r in read_rows(out)]
    assert sorted(names) == ["cam0.jpg", "cam1.jpg", "late.jpg", "noise.png"]


def test_crash_between_csv_row_and_state_is_not_counted_twice(predictor, sources, tmp_path):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / "noise.png")
    Watcher(predictor, folder, out, settle=0).drain()
    (out / STATE_NAME).write_text(json.dumps({"version": 1, "files": {}}))  # the state write was lost
    with open(out / "counts.csv", "a") as f:
        f.write("torn,12")  # and a row torn mid-write
    counting = FakePredictor(conf=CONF)
    assert Watcher(counting, folder, out, settle=0).drain() == [] and counting.calls == 0
    assert [r[0] for r in read_rows(out)] == ["noise.png"]


def test_corrupt_file_is_recorded_once_as_failed(predictor, sources, tmp_path, capsys):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"not an image at all")
    shutil.copy(sources / "noise.png", folder / "good.png")
    watcher = Watcher(predictor, folder, out, settle=0)
    results = watcher.drain()
    assert sorted((r.path.name, r.error is None) for r in results) == [("bad.jpg", False), ("good.png", True)]
    assert "bad.jpg" in capsys.readouterr().err
    assert watcher.drain() == []
    watcher.close()
    restarted = Watcher(predictor, folder, out, settle=0)
    assert restarted.drain() == [] and restarted.failed == 0
    assert "bad.jpg" not in capsys.readouterr().err
    rows = read_rows(out)  # one row each: the bad file's with its error and no counts, so a report can name it
    assert [r[0] for r in rows] == ["bad.jpg", "good.png"]
    # the error names the file as the image column does, not by the path it was opened with
    assert rows[0][-1].startswith("bad.jpg: cannot decode image") and str(folder) not in rows[0][-1]
    assert rows[0][1:-1] == [""] * (len(rows[0]) - 2) and rows[1][-1] == ""
    assert read_slide(out / "counts.csv")[1] == ["bad.jpg"]
    assert json.loads((out / STATE_NAME).read_text())["files"]["bad.jpg"]["status"] == "failed"
    # Rewritten with a real image, it is a new version and is processed; its last row holds.
    shutil.copy(sources / "cam0.jpg", folder / "bad.jpg")
    [result] = restarted.drain()
    assert result.error is None and [r[0] for r in read_rows(out)] == ["bad.jpg", "good.png", "bad.jpg"]
    records, failed, _ = read_slide(out / "counts.csv")
    assert sorted(r["image"] for r in records) == ["bad.jpg", "good.png"] and failed == []


def test_a_failed_row_the_state_missed_is_adopted_as_failed(predictor, sources, tmp_path, capsys):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"not an image at all")
    Watcher(predictor, folder, out, settle=0).drain()
    (out / STATE_NAME).write_text(json.dumps({"version": 1, "files": {}}))  # the state write was lost
    watcher = Watcher(predictor, folder, out, settle=0)
    assert watcher.drain() == [] and watcher.failed_earlier() == ["bad.jpg"]
    assert [r[0] for r in read_rows(out)] == ["bad.jpg"]


def test_a_csv_begun_without_warnings_and_error_columns_goes_on_in_its_columns(predictor, sources, tmp_path):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    old_header = counts_header(CLASS_NAMES)[:-2]
    (out / "counts.csv").write_text(",".join(old_header) + "\n")
    shutil.copy(sources / "noise.png", folder / "good.png")
    (folder / "bad.jpg").write_bytes(b"not an image at all")
    watcher = Watcher(predictor, folder, out, settle=0)
    results = watcher.drain()
    assert sorted(r.path.name for r in results) == ["bad.jpg", "good.png"]
    with open(out / "counts.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == old_header and [len(r) for r in rows[1:]] == [len(old_header)]  # no row for the failure
    assert rows[1][0] == "good.png"
    (out / "counts.csv").unlink()  # rotated away while watching: the new file has the full columns
    shutil.copy(sources / "noise.png", folder / "next.png")
    watcher.drain()
    with open(out / "counts.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == counts_header(CLASS_NAMES) and len(rows[1]) == len(rows[0])


def test_non_images_hidden_files_and_subfolders_are_ignored(predictor, sources, tmp_path):
    folder, out = tmp_path / "cam", tmp_path / "cam" / "bloodcell"
    folder.mkdir()
    (folder / "notes.txt").write_text("slide 12")
    (folder / "image.jpg.part").write_bytes((sources / "cam0.jpg").read_bytes())
    shutil.copy(sources / "noise.png", folder / ".tmp-upload.png")
    (folder / "sub").mkdir()
    shutil.copy(sources / "noise.png", folder / "sub" / "deep.png")
    shutil.copy(sources / "noise.png", folder / "UPPER.PNG")
    counting = FakePredictor(conf=CONF)
    results = Watcher(counting, folder, out, settle=0).drain()
    assert [r.path.name for r in results] == ["UPPER.PNG"] and counting.calls == 1
    assert Watcher(counting, folder, out, settle=0).drain() == []  # its own out folder inside is not scanned


def test_a_link_to_nothing_or_a_pipe_named_as_an_image_is_a_failed_file_said_once(predictor, sources, tmp_path, capsys):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    (folder / "gone.jpg").symlink_to(tmp_path / "no-such.jpg")
    os.mkfifo(folder / "pipe.png")
    shutil.copy(sources / "noise.png", folder / "ok.png")
    watcher = Watcher(FakePredictor(conf=CONF), folder, out, settle=0)
    assert [r.path.name for r in watcher.drain()] == ["ok.png"] and watcher.failed == 2
    assert watcher.drain() == []
    err = capsys.readouterr().err
    assert f"error: gone.jpg: broken link (to {tmp_path / 'no-such.jpg'}, which is not there)" in err
    assert err.count("pipe.png: not a regular file") == 1  # once, not at every scan
    shutil.copy(sources / "noise.png", tmp_path / "no-such.jpg")  # the link's file arrives: counted after all
    assert [r.path.name for r in watcher.drain()] == ["gone.jpg"] and watcher.failed == 1
    watcher.close()


def test_cli_once(model_file, sources, tmp_path, capsys):
    folder = tmp_path / "cam"
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / "a.png")
    assert main(["watch", str(folder), "--model", str(model_file), "--once", "--settle", "0"]) == 0
    assert "a.png:" in capsys.readouterr().out
    assert [r[0] for r in read_rows(folder / "bloodcell")] == ["a.png"]
    (folder / "b.png").write_bytes(b"garbage")
    assert main(["watch", str(folder), "--model", str(model_file), "--once", "--settle", "0"]) == 1
    capsys.readouterr()
    assert main(["watch", str(folder), "--model", str(model_file), "--once", "--settle", "0"]) == 0
    assert "1 unchanged file(s) failed in an earlier run, not retried: b.png" in capsys.readouterr().err
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(folder / "gray.png")  # grayscale: a doubtful count
    assert main(["watch", str(folder), "--model", str(model_file), "--once", "--settle", "0"]) == 0
    assert "warning: gray.png: " in capsys.readouterr().err
    # the same folder and --out, counted at other operating points: refused, one kind of count per counts.csv
    other = ["watch", str(folder), "--model", str(model_file), "--once", "--settle", "0", "--conf", "0.9"]
    assert main(other) == 2
    assert f"holds counts by {model_file.name}@" in capsys.readouterr().err
    assert main(["watch", str(tmp_path / "missing"), "--once"]) == 2


def test_a_second_watcher_on_the_same_out_is_refused_until_the_first_is_closed(
    predictor, model_file, sources, tmp_path, capsys
):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / "a.png")
    first = Watcher(predictor, folder, out, settle=0)
    with pytest.raises(ConfigError, match=rf"another bloodcell watch is writing to this folder \(pid {os.getpid()}\)"):
        Watcher(predictor, tmp_path / "cam", out, settle=0)
    # the CLI (another open of the lock file, as another process would do): one line, exit 2, nothing written
    assert main(["watch", str(folder), "--out", str(out), "--model", str(model_file), "--once", "--settle", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out / LOCK_NAME}: another bloodcell watch is writing to this folder (pid {os.getpid()})\n"
    assert not (out / "counts.csv").exists()
    assert [r.path.name for r in first.drain()] == ["a.png"]
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.poll_once()
    counting = FakePredictor(conf=CONF)
    with Watcher(counting, folder, out, settle=0) as second:  # released: the next one starts from the state file
        assert second.drain() == [] and counting.calls == 0
    assert [r[0] for r in read_rows(out)] == ["a.png"]


@pytest.mark.parametrize("name", ["slide\u2028a.png", "page\x0cbreak.png", "line\nfeed.png", "carriage\rreturn.png"])
def test_file_names_with_line_separators_are_one_row_after_a_crash(predictor, sources, tmp_path, name):
    """str.splitlines split rows at U+2028 (and \\f, \\x85...): the row was not adopted and the file counted again."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / name)
    with Watcher(predictor, folder, out, settle=0) as watcher:
        assert [r.path.name for r in watcher.drain()] == [name]
    (out / STATE_NAME).write_text(json.dumps({"version": 1, "files": {}}))  # crash: the state write was lost
    with open(out / "counts.csv", encoding="utf-8", newline="") as f:
        text = f.read()
    row = text[text.index("\n") + 1 :]  # the one row, as written
    assert row.count(name) == 1
    with open(out / "counts.csv", "a", encoding="utf-8", newline="") as f:
        f.write(row[: row.index(name) + len(name) - 4])  # and the same row again, torn just after the separator
    counting = FakePredictor(conf=CONF)
    with Watcher(counting, folder, out, settle=0) as watcher:
        assert watcher.drain() == [] and counting.calls == 0
        assert watcher.state[name]["rows"] == 1
    assert [r[0] for r in read_rows(out)] == [name]


def test_an_image_whose_outputs_cannot_be_written_fails_alone(predictor, sources, tmp_path, capsys):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    long_name = "x" * 245 + ".png"  # 249 bytes: fits the file system, its temporary sibling must too
    for name in (long_name, "blocked.png", "good.png"):
        shutil.copy(sources / "noise.png", folder / name)
    (out / "annotated" / "blocked.png").mkdir(parents=True)  # a folder where the annotated image goes
    watcher = Watcher(predictor, folder, out, settle=0)
    results = {r.path.name: r for r in watcher.drain()}
    assert results[long_name].error is None and results["good.png"].error is None
    assert results["blocked.png"].error and watcher.failed == 1
    err = capsys.readouterr().err
    assert f"{out / 'annotated' / 'blocked.png'}: Is a directory" in err and ".tmp" not in err
    rows = {r[0]: r for r in read_rows(out)}  # the blocked file's row has its error and no counts
    assert sorted(rows) == sorted([long_name, "good.png", "blocked.png"])
    assert "Is a directory" in rows["blocked.png"][-1]
    watcher.close()
    assert json.loads((out / STATE_NAME).read_text())["files"]["blocked.png"]["status"] == "failed"


def test_an_output_error_of_the_environment_stops_the_watch_and_the_file_is_retried(
    predictor, sources, tmp_path, monkeypatch
):
    import errno

    import bloodcell.app.watch as watch_module

    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / "a.png")
    shutil.copy(sources / "cam0.jpg", folder / "b.jpg")
    watcher = Watcher(predictor, folder, out, settle=0)
    real_write = Watcher._write_row

    def disk_full(self, result, new):
        if result.path.name == "b.jpg":  # half a row reaches the disk, then it is full
            with open(self.csv_path, "a") as f:
                f.write("b.jpg,64")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, result, new)

    monkeypatch.setattr(watch_module.Watcher, "_write_row", disk_full)
    with pytest.raises(OSError, match="No space left"):
        watcher.drain()
    watcher.close()
    assert [r[0] for r in read_rows(out)] == ["a.png"]  # the torn row was cut off
    assert "b.jpg" not in json.loads((out / STATE_NAME).read_text())["files"]  # not failed for good
    monkeypatch.setattr(watch_module.Watcher, "_write_row", real_write)
    [result] = Watcher(predictor, folder, out, settle=0).drain()  # after a restart: retried
    assert result.path.name == "b.jpg" and [r[0] for r in read_rows(out)] == ["a.png", "b.jpg"]


def test_a_copy_paused_longer_than_settle_is_waited_for_not_failed(predictor, sources, tmp_path, capsys):
    """A camera or network copy that stalls mid-file longer than --settle: the part ends early and is
    young, so it is waited for (said once on stderr; no row, no failure) and counted once whole."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    whole = (sources / "cam0.jpg").read_bytes()
    (folder / "slow.jpg").write_bytes(whole[: len(whole) // 3])
    watcher = Watcher(predictor, folder, out, settle=0)
    assert watcher.poll_once() == [] and watcher.poll_once() == []
    assert watcher.failed == 0 and watcher.pending == 1 and not (out / "counts.csv").exists()
    assert capsys.readouterr().err.count("note: slow.jpg ends early (still being copied?)") == 1
    (folder / "slow.jpg").write_bytes(whole)
    later = (folder / "slow.jpg").stat().st_mtime + 2  # a new mtime even on a file system with 2 s clocks
    os.utime(folder / "slow.jpg", (later, later))
    [done] = watcher.poll_once()
    assert done.error is None and watcher.failed == 0 and watcher.pending == 0
    assert [r[0] for r in read_rows(out)] == ["slow.jpg"]
    watcher.close()


def test_a_truncated_file_fails_once_it_is_too_old_to_be_a_copy(predictor, sources, tmp_path, capsys, monkeypatch):
    """--once waits for a young truncated file up to TRUNCATED_WAIT_S after its last change, then records
    it as failed (an error row); an old one fails at once. Rewritten whole, its last row holds."""
    from bloodcell.app import watch as watch_module

    monkeypatch.setattr(watch_module, "TRUNCATED_WAIT_S", 0.5)
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    whole = (sources / "cam0.jpg").read_bytes()
    (folder / "young.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "old.jpg").write_bytes(whole[: len(whole) // 2])
    os.utime(folder / "old.jpg", (time.time() - 3600, time.time() - 3600))
    watcher = Watcher(predictor, folder, out, settle=0)
    results = {r.path.name: r for r in watcher.drain()}
    assert sorted(results) == ["old.jpg", "young.jpg"] and all(r.error for r in results.values())
    assert "image file is truncated" in results["young.jpg"].error and watcher.failed == 2
    err = capsys.readouterr().err
    assert "note: young.jpg ends early" in err and "note: old.jpg" not in err
    assert err.count("(tried again if the file changes)") == 2
    (folder / "old.jpg").write_bytes(whole)
    [done] = watcher.drain()
    assert done.path.name == "old.jpg" and done.error is None and watcher.failed == 1
    rows = read_rows(out)  # the part's row (its error, no counts), then the whole file's, which a report keeps
    assert sorted(r[0] for r in rows) == ["old.jpg", "old.jpg", "young.jpg"]
    assert read_slide(out / "counts.csv")[1] == ["young.jpg"]
    watcher.close()


def test_a_file_written_to_after_it_settled_is_counted_once_as_its_last_version(
    predictor, sources, tmp_path, monkeypatch
):
    """Files ahead of it took long: the last chunk of a copy lands between the scan that judged the file
    settled and its decoding. The rows and the state name the version that was decoded, once."""
    from bloodcell.app import watch as watch_module

    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    target = folder / "late.jpg"
    shutil.copy(sources / "cam0.jpg", target)
    real_load = watch_module.load_image
    appended = []

    def load_while_a_writer_finishes(path):
        if not appended:  # after the scan's stat: the writer's last bytes (a JPEG decodes past trailing data)
            with open(path, "ab") as f:
                f.write(b"\0" * 64)
            appended.append(path)
        return real_load(path)

    monkeypatch.setattr(watch_module, "load_image", load_while_a_writer_finishes)
    watcher = Watcher(predictor, folder, out, settle=0)
    first = watcher.drain()
    assert [r.path.name for r in watcher.drain()] == [] and [r.path.name for r in first] == ["late.jpg"]
    assert [r[0] for r in read_rows(out)] == ["late.jpg"]  # one row, not one per version seen
    state = json.loads((out / STATE_NAME).read_text())["files"]["late.jpg"]
    assert (state["size"], state["rows"]) == (target.stat().st_size, 1)
    watcher.close()


def test_a_file_that_fails_to_decode_while_being_written_is_judged_when_finished(
    predictor, sources, tmp_path, monkeypatch
):
    """The bytes it failed on were the start of a copy that went on: no failure row for them; the
    finished file is counted, once, by --once's drain too."""
    from bloodcell.app import watch as watch_module
    from bloodcell.errors import ImageError

    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    target = folder / "mid.jpg"
    target.write_bytes((sources / "cam0.jpg").read_bytes()[:40])
    real_load = watch_module.load_image
    finished = []

    def fail_as_the_copy_finishes(path):
        if not finished:
            shutil.copy(sources / "cam0.jpg", path)
            finished.append(path)
            raise ImageError(f"{path}: cannot decode image (not a format Pillow reads)")
        return real_load(path)

    monkeypatch.setattr(watch_module, "load_image", fail_as_the_copy_finishes)
    watcher = Watcher(predictor, folder, out, settle=0)
    results = watcher.drain()
    assert [(r.path.name, r.error) for r in results] == [("mid.jpg", None)] and watcher.failed == 0
    assert [r[0] for r in read_rows(out)] == ["mid.jpg"] and read_rows(out)[0][-1] == ""
    watcher.close()


def test_a_watched_slide_makes_a_report(predictor, sources, tmp_path, capsys):
    """watch -> report: the counts CSV's rows (the last one of a rewritten file) and the annotated copies."""
    from bloodcell.app.report import build_report

    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    for name in ("cam0.jpg", "noise.png"):
        shutil.copy(sources / name, folder / name)
    watcher = Watcher(predictor, folder, out, settle=0)
    watcher.drain()
    shutil.copy(sources / "cam1.jpg", folder / "cam0.jpg")  # the camera rewrote a field: a second row
    later = (folder / "cam0.jpg").stat().st_mtime + 2  # a new mtime even on a file system with 2 s clocks
    os.utime(folder / "cam0.jpg", (later, later))
    watcher.drain()
    watcher.close()
    rows = read_rows(out)
    assert [r[0] for r in rows] == ["cam0.jpg", "noise.png", "cam0.jpg"]
    summary = build_report(out / "counts.csv", out=tmp_path / "slide.html")
    assert summary.fields == 2 and summary.missing_images == ()
    latest = {r[0]: r for r in rows}  # the last row of each image
    header = counts_header(CLASS_NAMES)
    assert summary.totals == {c: sum(int(r[header.index(c)]) for r in latest.values()) for c in CLASS_NAMES}
    assert (tmp_path / "slide.html").read_text().count("data:image/jpeg;base64,") == 2
    (out / "annotated" / "noise.png").unlink()
    assert build_report(out / "counts.csv", out=tmp_path / "again.html").missing_images == ("noise.png",)


def test_an_unreadable_file_is_retried_not_recorded_as_failed(predictor, sources, tmp_path, monkeypatch, capsys):
    """Permissions are not the file's fault: after a chmod (size and mtime unchanged) the file counts."""
    from bloodcell.app import watch as watch_module
    from bloodcell.errors import UnreadableImageError

    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "cam0.jpg", folder / "locked.jpg")
    real = watch_module.load_image

    def denied(path):
        raise UnreadableImageError(f"{path}: cannot read (Permission denied)")

    monkeypatch.setattr(watch_module, "load_image", denied)
    watcher = Watcher(predictor, folder, out, settle=0)
    [result] = watcher.drain()
    assert result.error and "tried again in 60 s, or at the next start" in capsys.readouterr().err
    assert watcher.drain() == [] and watcher.failed == 1  # not retried at every poll
    watcher.close()
    state = out / STATE_NAME
    assert not state.exists() or "locked.jpg" not in json.loads(state.read_text())["files"]
    monkeypatch.setattr(watch_module, "load_image", real)  # the permissions fixed
    restarted = Watcher(predictor, folder, out, settle=0)
    [again] = restarted.drain()
    assert again.error is None and [r[0] for r in read_rows(out)] == ["locked.jpg"]
    restarted.close()


def test_load_image_says_a_file_it_may_not_read_is_unreadable_not_undecodable(tmp_path, monkeypatch):
    from bloodcell.errors import UnreadableImageError

    def no_access(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pathlib.Path.read_bytes", no_access)  # as for a file of another user (tests run as root)
    with pytest.raises(UnreadableImageError, match=r"x.jpg: cannot read \(Permission denied\)"):
        load_image(tmp_path / "x.jpg")


def test_a_vanished_folder_is_said_once_and_its_return_too(predictor, sources, tmp_path, capsys):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    watcher = Watcher(predictor, folder, out, settle=0)
    folder.rmdir()  # deleted, or a share unmounted
    assert watcher.poll_once() == [] and watcher.poll_once() == []
    assert capsys.readouterr().err.count(f"warning: {folder} is gone; waiting for it to come back") == 1
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / "back.png")
    assert [r.path.name for r in watcher.poll_once()] == ["back.png"]
    assert f"note: {folder} is back" in capsys.readouterr().err
    watcher.close()


def test_cli_refuses_a_file_as_out(model_file, tmp_path, capsys):
    folder, out = tmp_path / "cam", tmp_path / "afile"
    folder.mkdir()
    out.write_text("not a folder")
    assert main(["watch", str(folder), "--out", str(out), "--once", "--model", str(model_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {out}: is a file, expected a folder"


def test_a_truncated_file_from_a_clock_ahead_is_not_waited_for_forever(predictor, sources, tmp_path, monkeypatch):
    """A camera whose clock runs ahead writes future mtimes: the wait also ends TRUNCATED_WAIT_S after the
    file was first found truncated, so --once returns (the file fails) instead of waiting for that time."""
    from bloodcell.app import watch as watch_module

    monkeypatch.setattr(watch_module, "TRUNCATED_WAIT_S", 0.5)
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    whole = (sources / "cam0.jpg").read_bytes()
    (folder / "ahead.jpg").write_bytes(whole[: len(whole) // 3])
    os.utime(folder / "ahead.jpg", (time.time() + 3600, time.time() + 3600))
    watcher = Watcher(predictor, folder, out, settle=0)
    t0 = time.monotonic()
    [result] = watcher.drain()
    assert result.error and time.monotonic() - t0 < 5 and watcher.pending == 0
    watcher.close()


def test_a_corrupt_jpeg_body_fails_after_the_wait(predictor, tmp_path, monkeypatch, capsys):
    """A JPEG header with garbage after it reads as truncated: waited for like a copy, then failed."""
    from bloodcell.app import watch as watch_module

    monkeypatch.setattr(watch_module, "TRUNCATED_WAIT_S", 0.3)
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    watcher = Watcher(predictor, folder, out, settle=0)
    [result] = watcher.drain()
    assert result.error and watcher.failed == 1 and "note: bad.jpg ends early" in capsys.readouterr().err
    assert [r[0] for r in read_rows(out)] == ["bad.jpg"]
    watcher.close()


def test_without_watchdog_the_periodic_scan_finds_new_files(sources, tmp_path, monkeypatch, capsys):
    """The lite install has no watchdog: watch still runs, on its scan alone (and says so once)."""
    import builtins

    real_import = builtins.__import__

    def no_watchdog(name, *args, **kwargs):
        if name.split(".")[0] == "watchdog":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_watchdog)
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    watcher = Watcher(FakePredictor(conf=CONF), folder, out, settle=SETTLE, scan_interval=0.2)
    with Running(watcher):
        time.sleep(0.3)
        shutil.copy(sources / "cam0.jpg", folder / "cam0.jpg")
        assert wait_until(lambda: watcher.processed == 1)
    err = capsys.readouterr().err
    assert err.count("note: watchdog is not installed, so new files are found by a scan every few seconds") == 1


def test_a_stopped_watch_names_the_files_it_leaves_for_the_next_run(model_file, sources, tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM while files still settle: they are not lost, and the user is told which wait."""
    from bloodcell.app import watch as watch_module

    folder = tmp_path / "cam"
    folder.mkdir()
    shutil.copy(sources / "cam0.jpg", folder / "done.jpg")
    shutil.copy(sources / "cam1.jpg", folder / "settling.jpg")

    def stop_after_one_scan(self, stop_event):
        self.poll_once()  # done.jpg is old enough to count; settling.jpg was touched just now
        raise KeyboardInterrupt

    os.utime(folder / "done.jpg", (time.time() - 60, time.time() - 60))
    monkeypatch.setattr(watch_module.Watcher, "run", stop_after_one_scan)
    assert main(["watch", str(folder), "--model", str(model_file), "--settle", "30"]) == 0
    err = capsys.readouterr().err
    assert "stopped" in err and "note: 1 file(s) not counted yet (settling.jpg); the next watch counts them" in err
    assert [r[0] for r in read_rows(folder / "bloodcell")] == ["done.jpg"]


def test_a_counted_file_renamed_is_not_counted_again_but_a_new_one_of_its_size_and_time_is(
    predictor, sources, tmp_path, capsys
):
    """A technician labels captures by renaming them: a second row would count that field twice in the
    slide report. Size and time alone do not make a rename (coarse clocks, fixed-size formats): content does."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "cam0.jpg", folder / "a.jpg")
    shutil.copy(sources / "cam1.jpg", folder / "b.jpg")
    watcher = Watcher(predictor, folder, out, settle=0)
    assert len(watcher.drain()) == 2
    os.rename(folder / "a.jpg", folder / "patient7_a.jpg")
    assert watcher.drain() == []
    assert "note: patient7_a.jpg: same size, time and content as a.jpg, now gone" in capsys.readouterr().err
    state = json.loads((out / STATE_NAME).read_text())["files"]
    assert state["patient7_a.jpg"]["renamed_from"] == "a.jpg" and state["patient7_a.jpg"]["rows"] == 0
    assert state["a.jpg"]["rows"] == 1  # its row is in the CSV under that name (crash recovery counts on it)
    # renamed again: still the one row, under the first name; the camera reuses the name for a new picture
    os.rename(folder / "patient7_a.jpg", folder / "patient7.jpg")
    shutil.copy(sources / "noise.png", folder / "a.jpg")
    assert [r.path.name for r in watcher.drain()] == ["a.jpg"]
    assert "note: patient7.jpg: same size, time and content as patient7_a.jpg" in capsys.readouterr().err
    assert json.loads((out / STATE_NAME).read_text())["files"]["patient7.jpg"]["renamed_from"] == "a.jpg"
    # b.jpg replaced, under another name, by other bytes of its size and time: a new picture, counted
    data, st = bytearray((folder / "b.jpg").read_bytes()), (folder / "b.jpg").stat()
    (folder / "b.jpg").unlink()
    table = data.index(b"\xff\xdb") + 5  # the first quantization table's values (after length, Pq/Tq)
    data[table + 10] ^= 0x01  # decodes cleanly, other pixels (damaged scan data would be refused)
    (folder / "c.jpg").write_bytes(bytes(data))
    os.utime(folder / "c.jpg", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [r.path.name for r in watcher.drain()] == ["c.jpg"]
    assert [r[0] for r in read_rows(out)] == ["a.jpg", "b.jpg", "a.jpg", "c.jpg"]
    # a file that failed (its annotated copy's name is taken) and is renamed to fix that: counted, not "already"
    (out / "annotated" / "f.jpg").mkdir(parents=True)
    shutil.copy(sources / "cam1.jpg", folder / "f.jpg")
    [failed] = watcher.drain()
    assert failed.error and watcher.failed == 1
    os.rename(folder / "f.jpg", folder / "fixed.jpg")
    [fixed] = watcher.drain()
    assert fixed.path.name == "fixed.jpg" and fixed.error is None
    watcher.close()


def test_names_that_spreadsheets_would_run_are_text_and_read_back(predictor, sources, tmp_path):
    """A file named like a formula is written with a leading ' (CSV injection); a restart that adopts the
    rows its state missed reads the names back unescaped, so nothing is counted twice."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    for name in ("=1+2.png", "@cell.png"):
        shutil.copy(sources / "noise.png", folder / name)
    Watcher(predictor, folder, out, settle=0).drain()
    assert sorted(r[0] for r in read_rows(out)) == ["'=1+2.png", "'@cell.png"]
    (out / STATE_NAME).write_text(json.dumps({"version": 1, "files": {}}))  # the state write was lost
    counting = FakePredictor(conf=CONF)
    assert Watcher(counting, folder, out, settle=0).drain() == [] and counting.calls == 0


def test_a_watch_with_another_model_into_the_same_counts_is_refused(predictor, sources, tmp_path):
    """One counts.csv holds one kind of count: the state records what counted (model, --conf, --cell-size);
    a state from before it did is taken over by the next watch."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / "a.png")
    with Watcher(predictor, folder, out, settle=0, model="m.onnx@111111111111") as w:
        w.drain()
    assert json.loads((out / STATE_NAME).read_text())["model"] == "m.onnx@111111111111"
    shutil.copy(sources / "noise.png", folder / "b.png")
    with pytest.raises(ConfigError, match=r"holds counts by m\.onnx@111111111111, not m\.onnx@222222222222 conf=0\.3"):
        Watcher(predictor, folder, out, settle=0, model="m.onnx@222222222222 conf=0.3")
    assert [r[0] for r in read_rows(out)] == ["a.png"]  # nothing counted by the other model
    state = json.loads((out / STATE_NAME).read_text())
    (out / STATE_NAME).write_text(json.dumps({"version": 1, "files": state["files"]}))  # an older watch's state
    with Watcher(predictor, folder, out, settle=0, model="m.onnx@222222222222") as w:
        w.drain()
    assert json.loads((out / STATE_NAME).read_text())["model"] == "m.onnx@222222222222"


def test_a_file_name_that_is_not_utf8_gets_its_row_with_the_bytes_escaped(predictor, sources, tmp_path):
    """Its row was a traceback (and an empty counts.csv) on every start, so no later file was counted."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    try:
        shutil.copy(sources / "cam0.jpg", os.fsencode(folder) + b"/caf\xe9.jpg")
    except OSError as e:
        pytest.skip(f"this file system refuses a non-UTF-8 name ({e})")
    shutil.copy(sources / "cam1.jpg", folder / "later.jpg")
    with Watcher(predictor, folder, out, settle=0) as watcher:
        assert [r.error for r in watcher.drain()] == [None, None]
    assert [r[0] for r in read_rows(out)] == ["caf\\xe9.jpg", "later.jpg"]
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["caf\\xe9.jpg", "later.jpg"]
    with Watcher(predictor, folder, out, settle=0) as watcher:  # the next start knows it: not counted again
        assert watcher.drain() == []
    state = json.loads((out / STATE_NAME).read_text())
    state["files"] = {}  # a stop after the rows were written, before the state was: the rows are adopted
    (out / STATE_NAME).write_text(json.dumps(state))
    with Watcher(predictor, folder, out, settle=0) as watcher:
        assert watcher.drain() == []
    assert [r[0] for r in read_rows(out)] == ["caf\\xe9.jpg", "later.jpg"]


def test_a_python_watcher_takes_conf_as_predict_does_and_names_its_model(tmp_path, monkeypatch):
    """conf in any form predict takes ("RBC=0.4", a dict, one number), checked; a predictor loaded from a file
    names what counts, so a second watch into the same out with other operating points is refused."""
    folder = tmp_path / "cam"
    folder.mkdir()
    predictor = FakePredictor(conf=CONF)
    assert Watcher(predictor, folder, tmp_path / "a", conf={"rbc": 0.4}).conf == (0.4, CONF, CONF)
    assert Watcher(predictor, folder, tmp_path / "a", conf="WBC=0.6").conf == (CONF, 0.6, CONF)
    with pytest.raises(ConfigError, match=r"conf=2\.0: expected values in \(0, 1\]"):
        Watcher(predictor, folder, tmp_path / "a", conf=2.0)
    with pytest.raises(ConfigError, match="needs a model that records its trained cell size"):
        Watcher(predictor, folder, tmp_path / "a", cell_size=60)  # checked before any image, as predict does
    with pytest.raises(ConfigError, match=r"cell_size=0: expected 'auto', None or a diameter"):
        Watcher(predictor, folder, tmp_path / "a", cell_size=0)
    assert Watcher(predictor, folder, tmp_path / "a", cell_size="none").cell_size is None  # as predict reads it
    model = tmp_path / "fake.pt"
    model.write_bytes(b"weights")
    monkeypatch.setattr(predictor, "path", model, raising=False)
    out = tmp_path / "b"
    save_slide(folder / "a.jpg", seed=0)
    with Watcher(predictor, folder, out) as first:
        assert len(first.drain()) == 1
        assert first.model is not None and first.model.startswith("fake.pt@")
    with pytest.raises(ConfigError, match=r"not fake\.pt"), Watcher(predictor, folder, out, conf=0.5) as second:
        second.drain()


def test_an_output_folder_removed_while_watching_stops_it_and_a_csv_moved_away_is_said(tmp_path, capsys):
    """Removed mid-run, the folder came back with a counts.csv missing every earlier row while the state said
    those files were done (and without its lock); a counts.csv moved away to keep starts a new one, said."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    save_slide(folder / "a.jpg", seed=0)
    with Watcher(FakePredictor(conf=CONF), folder, out, settle=0) as watcher:
        assert len(watcher.drain()) == 1
        shutil.rmtree(out)
        save_slide(folder / "b.jpg", seed=1)
        with pytest.raises(ConfigError, match="removed or emptied while watching"):
            watcher.drain()
    shutil.rmtree(out, ignore_errors=True)
    with Watcher(FakePredictor(conf=CONF), folder, out, settle=0) as watcher:
        assert len(watcher.drain()) == 2
    (out / "counts.csv").rename(tmp_path / "kept.csv")
    save_slide(folder / "c.jpg", seed=2)
    capsys.readouterr()
    with Watcher(FakePredictor(conf=CONF), folder, out, settle=0) as watcher:
        assert len(watcher.drain()) == 1
    assert "counts.csv not found: a new one begins with c.jpg (the rows of the 2 files" in capsys.readouterr().err
    assert [r[0] for r in read_rows(out)] == ["c.jpg"]


def test_a_counts_csv_saved_by_a_spreadsheet_goes_on(tmp_path):
    """Excel's "CSV UTF-8" writes a byte-order mark and CRLF line ends: the same columns, not another model's."""
    folder, out = tmp_path / "cam", tmp_path / "out"
    save_slide(folder / "a.jpg", seed=0)
    with Watcher(FakePredictor(conf=CONF), folder, out, settle=0) as watcher:
        watcher.drain()
    text = (out / "counts.csv").read_text(encoding="utf-8")
    (out / "counts.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    save_slide(folder / "b.jpg", seed=1)
    with Watcher(FakePredictor(conf=CONF), folder, out, settle=0) as watcher:
        assert len(watcher.drain()) == 1
    assert sorted(r[0] for r in read_rows(out)) == ["a.jpg", "b.jpg"]


def test_watch_once_stopped_says_what_is_left_and_exits_130(model_file, tmp_path, monkeypatch, capsys):
    """--once asked for the whole folder: a Ctrl-C keeps what is counted, says what is not, and is no success."""
    folder = tmp_path / "cam"
    for i in range(3):
        save_slide(folder / f"f{i}.jpg", seed=i)
    real = Watcher._process
    calls = []

    def stop_at_the_second(self, path, sig):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, path, sig)

    monkeypatch.setattr(Watcher, "_process", stop_at_the_second)
    assert main(["watch", str(folder), "--once", "--settle", "0", "--model", str(model_file)]) == 130
    err = capsys.readouterr().err
    assert "stopped" in err and "2 file(s) not counted yet (f1.jpg, f2.jpg); the next watch counts them" in err
    assert [r[0] for r in read_rows(folder / "bloodcell")] == ["f0.jpg"]


def test_without_flock_the_lock_file_is_made_and_watch_goes_on(tmp_path, monkeypatch):
    """Windows has no flock: the lock file is made all the same, so the check that the output folder is still
    there (its lock file) does not stop every watch at its first file."""
    from bloodcell.app import folder_lock

    monkeypatch.setattr(folder_lock, "fcntl", None)
    folder, out = tmp_path / "cam", tmp_path / "out"
    save_slide(folder / "a.jpg", seed=0)
    with Watcher(FakePredictor(conf=CONF), folder, out, settle=0) as watcher:
        assert len(watcher.drain()) == 1
    assert (out / LOCK_NAME).is_file()


def test_videos_and_heic_dropped_into_the_folder_are_said_once(predictor, sources, tmp_path, capsys):
    folder, out = tmp_path / "cam", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sources / "noise.png", folder / "ok.png")
    (folder / "clip.mp4").write_bytes(b"\0" * 64)
    (folder / "phone.heic").write_bytes(b"\0" * 64)
    watcher = Watcher(FakePredictor(conf=CONF), folder, out, settle=0)
    assert [r.path.name for r in watcher.drain()] == ["ok.png"]
    (folder / "later.HEIC").write_bytes(b"\0" * 64)  # one that lands while watching
    assert watcher.drain() == [] and watcher.drain() == []
    err = capsys.readouterr().err
    assert err.count("1 video left out: clip.mp4; `bloodcell predict --source") == 1
    assert err.count("(HEIC) left out: phone.heic") == 1 and err.count("left out: later.HEIC") == 1
    watcher.close()
