"""What native libraries (LiteRT and its converter, absl, XNNPACK) print goes to the process's file
descriptors 1 and 2, where ``contextlib.redirect_stdout`` cannot reach: captured here to a temporary file.
Written by hand because no library does this at the file-descriptor level (``capfd`` is pytest's)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

_LOCK = threading.RLock()  # the descriptors are the process's: one thread's captures at a time (they nest)


@dataclass
class Captured:
    """The captured text, filled in when the capture ends."""

    text: str = ""


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


@contextlib.contextmanager
def captured_output(fds: tuple[int, ...] = (2,)) -> Iterator[Captured]:
    """Everything written to ``fds`` (Python's own prints too) while the block runs, as ``.text`` after
    it. Without those descriptors (a detached service) or a temporary file, nothing is captured."""
    result = Captured()
    with _LOCK:
        _flush()
        saved: dict[int, int] = {}
        sink = None
        try:
            for fd in fds:
                saved[fd] = os.dup(fd)
            sink = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the with block below)
        except OSError:
            for copy in saved.values():
                os.close(copy)
        if sink is None:  # outside the except: the block's own errors are not "during handling of" this one
            yield result
            return
        with sink, contextlib.ExitStack() as python_side:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            # sys.stdout may not write to fd 1 (a test's capture, an IDE): send Python's own prints along too
            # unbuffered: Python's prints land in order with the native lines around them
            raw = open(sink.fileno(), "wb", buffering=0, closefd=False)  # noqa: SIM115
            text = io.TextIOWrapper(raw, write_through=True)
            python_side.callback(text.close)
            if 1 in fds:
                python_side.enter_context(contextlib.redirect_stdout(text))
            if 2 in fds:
                python_side.enter_context(contextlib.redirect_stderr(text))
            try:
                yield result
            finally:
                _flush()  # what Python buffered belongs to the capture
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
                    os.close(copy)
                sink.seek(0)
                result.text = sink.read().decode(errors="replace")
