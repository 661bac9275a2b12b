"""One writer per output folder: an exclusive flock on a lock file inside it (watch, batch)."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import IO, Protocol

from bloodcell.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per folder is then the user's care
    fcntl = None  # type: ignore[assignment]


class FolderLock(Protocol):
    def close(self) -> None: ...


class _NoLock:
    def close(self) -> None:
        pass


def lock_folder(path: Path, command: str) -> FolderLock | IO[str]:
    """An open lock file holding an exclusive flock (the pid inside); ConfigError at once if another
    process has it (``command`` names what that process is, for the message)."""
    if fcntl is None:  # the file is made all the same: a watch checks it is there (its folder not removed)
        path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        return _NoLock()
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = f.read().strip()
            f.close()
            pid = f"pid {holder}" if holder.isdigit() else "pid unknown"
            raise ConfigError(f"{path}: another {command} is writing to this folder ({pid})") from None
        f.close()
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # some network file systems
            print(f"warning: {path}: cannot lock ({e.strerror}); run one {command} per --out", file=sys.stderr)
            return _NoLock()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
