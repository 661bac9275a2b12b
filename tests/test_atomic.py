"""Outputs appear whole or not at all, and land where their path leads: through a symbolic link to its target,
into a device or pipe in place (renaming a temporary over /dev/stdout would replace the device with a file)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bloodcell.atomic import (
    atomic_dir,
    atomic_open,
    check_outputs,
    check_writable,
    is_stream,
    write_files,
    write_text,
)
from bloodcell.errors import ConfigError


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "counts.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("stopped")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["counts.csv"]


def test_a_symbolic_link_is_written_through_and_kept(tmp_path: Path):
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "results.json"
    target.write_text("old\n")
    link = tmp_path / "results.json"
    link.symlink_to(target)
    write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    model, sidecar = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    sidecar.symlink_to(tmp_path / "shared" / "meta.json")  # a dangling link: its target is made
    write_files([(model, b"net"), (sidecar, b"{}")])
    assert sidecar.is_symlink() and (tmp_path / "shared" / "meta.json").read_bytes() == b"{}"
    folder = tmp_path / "annotated"
    folder.symlink_to(tmp_path / "shared", target_is_directory=True)
    with atomic_dir(folder) as tmp:
        (tmp / "a.png").write_bytes(b"png")
    assert folder.is_symlink() and (tmp_path / "shared" / "a.png").read_bytes() == b"png"


def test_a_pipe_and_devices_are_written_in_place(tmp_path: Path):
    fifo = tmp_path / "counts.csv"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_text(fifo, "image,RBC\n")
    reader.join(timeout=10)
    assert got == ["image,RBC\n"] and fifo.is_fifo()
    assert is_stream(Path("/dev/null")) and is_stream(Path("/dev/stdout")) and is_stream(Path("/dev/fd/1"))
    assert not is_stream(tmp_path / "new.json") and not is_stream(Path("/dev/shm/x.json"))
    write_text("/dev/null", "gone")
    assert Path("/dev/null").is_char_device()
    check_writable("--json", "/dev/null")  # no temporary file is probed for beside it
    if Path("/dev/full").exists():  # a full disk is an error, never "wrote"
        with pytest.raises(OSError) as e:
            write_text("/dev/full", "x" * 100_000)
        assert e.value.errno == errno.ENOSPC and Path("/dev/full").is_char_device()


def test_dev_stdout_keeps_the_order_of_the_processs_own_lines_in_a_redirected_file(tmp_path: Path):
    code = (
        "from bloodcell.atomic import write_text\n"
        "print('before', flush=True)\n"
        "write_text('/dev/stdout', 'json\\n')\n"
        "print('after')\n"
    )
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=60)
    assert out.read_text() == "before\njson\nafter\n"  # opened anew, /proc/self/fd/1 would write from the start
    code = code.replace("write_text('/dev/stdout', 'json\\n')", "write_files([('/dev/stdout', b'json\\n')])")
    code = code.replace("import write_text", "import write_files")
    with out.open("w") as f:  # (a model and its sidecar, one of them a device: not renamed over stdout's file)
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=60)
    assert out.read_text() == "before\njson\nafter\n"


def test_devices_are_not_one_output_twice(tmp_path: Path):
    """/dev/null for two outputs is no clash (two files that resolve to one are)."""
    check_outputs({"--json": "/dev/null", "--csv": "/dev/null"})
    with pytest.raises(ConfigError, match="is also the --json file"):
        check_outputs({"--json": str(tmp_path / "a"), "--csv": str(tmp_path / "." / "a")})


def test_a_write_that_fails_without_a_file_name_is_said_as_the_targets(tmp_path):
    """A full disk fails a write or flush with no file name (`error: No space left on device`): said as the file
    or folder being written, and nothing is left behind."""
    from bloodcell.atomic import atomic_dir, atomic_open

    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as info, atomic_open(tmp_path / "counts.csv") as f:
        f.write("frame\n")
        raise full
    assert info.value.filename == str(tmp_path / "counts.csv") and info.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as info, atomic_dir(tmp_path / "labels"):
        raise full
    assert info.value.filename == str(tmp_path / "labels")
    assert list(tmp_path.iterdir()) == []


def test_files_written_together_stay_as_they_were_when_one_cannot_be_replaced(tmp_path, monkeypatch):
    """A model and its sidecar: the sidecar is renamed first; if the model's rename then fails (held open on
    Windows, immutable), the sidecar gets its earlier file back, and the error names the model, not a temporary."""
    import bloodcell.atomic as atomic

    sidecar, model, new = tmp_path / "m.onnx.json", tmp_path / "m.onnx", tmp_path / "new.txt"
    sidecar.write_bytes(b"old sidecar")
    model.write_bytes(b"old model")
    real = os.replace

    def refuse_the_model(src, dst):
        if Path(dst) == model:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_the_model)
    with pytest.raises(PermissionError) as info:
        atomic.write_files([(new, b"a new file"), (sidecar, b"new sidecar"), (model, b"new model")])
    assert info.value.filename == str(model)
    assert sidecar.read_bytes() == b"old sidecar" and model.read_bytes() == b"old model" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # nothing hidden left


def test_an_earlier_file_that_cannot_be_put_back_is_kept_and_named(tmp_path, monkeypatch):
    import bloodcell.atomic as atomic

    first, second = tmp_path / "counts.csv", tmp_path / "video.mp4"
    first.write_bytes(b"old counts")
    second.write_bytes(b"old video")
    real, to_first = os.replace, []

    def refuse(src, dst):  # the video's rename, and then the counts' restore (its second rename)
        to_first.extend([src] if Path(dst) == first else [])
        if Path(dst) == second or len(to_first) == 2:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match=r"and not put back as it was: .*counts\.csv's earlier file is .*") as info:
        atomic.write_files([(first, b"new counts"), (second, b"new video")])
    kept = Path(re.search(r"earlier file is (\S+?\.tmp)", str(info.value))[1])
    assert kept.read_bytes() == b"old counts" and second.read_bytes() == b"old video"  # nothing lost


def test_the_last_file_of_a_set_needs_no_copy_of_its_earlier_file(tmp_path, monkeypatch):
    """A copy of the earlier file is only for putting it back when a later rename fails: the last (a video of
    gigabytes, on a drive without hard links) is never copied."""
    import bloodcell.atomic as atomic

    copied = []
    real = atomic._earlier_copy
    monkeypatch.setattr(atomic, "_earlier_copy", lambda path: copied.append(path.name) or real(path))
    (tmp_path / "a.json").write_bytes(b"old")
    (tmp_path / "b.mp4").write_bytes(b"old")
    atomic.write_files([(tmp_path / "a.json", b"new"), (tmp_path / "b.mp4", b"new")])
    assert copied == ["a.json"] and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.mp4"]
