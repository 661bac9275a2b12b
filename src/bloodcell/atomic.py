"""Atomic file output: write to a temporary sibling, then rename over the target.

A reader (or a crash) never sees a half-written file: ``os.replace`` is atomic on POSIX
and Windows when source and target share a folder. A symbolic link is written through (its target is
replaced, the link kept); a device, pipe or socket (``/dev/stdout``, a FIFO) is written to directly, as
nothing can be renamed over it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from bloodcell.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Like ``open(path, mode)`` for writing, but the file appears only when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files only (mode 'w' or 'wb'), not {mode!r}")
    path = Path(path)
    if is_stream(path):
        with _open_stream(path, mode, **kwargs) as f:
            yield f
        return
    path = _through_links(path)
    with _staged(path, mode, **kwargs) as (f, tmp):
        yield f
    try:
        os.replace(tmp, path)
    except BaseException as e:  # a refused rename, or Ctrl-C on it: no temporary left behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _as_target(e, path) from None
        raise


@contextlib.contextmanager
def _staged(path: Path, mode: str, **kwargs: Any) -> Iterator[tuple[IO, str]]:
    """A temporary sibling of ``path`` open for writing, and its name: flushed, synced and given normal
    permissions when the block ends; removed when it fails, a write's error (a full disk, which names no
    file) then named as ``path``'s."""
    fd, tmp = _temp_sibling(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename == tmp or (e.filename is None and e.errno in WRITE_ERRNOS)):
            raise _as_target(e, path) from None
        raise


def is_stream(path: Path) -> bool:
    """True for a path that reaches a device, pipe or socket (``/dev/stdout``, ``/dev/null``, a FIFO), or an
    open file descriptor (``/dev/fd/1``, which may be a redirected file): written to in place."""
    if _in_proc(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there yet (or a dangling link): a file to make
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _in_proc(path: Path) -> Path | None:
    """The /proc path that ``path``'s chain of links reaches (``/dev/stdout`` -> ``/proc/self/fd/1``), if any."""
    link = Path(os.path.abspath(path))
    for _ in range(40):  # the chain as the kernel follows it (realpath would go on past /proc/self/fd/1)
        link = Path(os.path.realpath(link.parent)) / link.name  # /dev/fd is itself a link to /proc/self/fd
        if os.name == "posix" and link.parts[:2] == ("/", "proc"):
            return link
        if not link.is_symlink():
            return None
        link = Path(os.path.abspath(link.parent / os.readlink(link)))
    return None


def _open_stream(path: Path, mode: str, **kwargs: Any) -> IO:
    """``path`` opened where it is. One of this process's descriptors (``/dev/stdout``) is written through
    that descriptor, so its lines and the process's own keep their order (opening /proc/self/fd/1 anew
    would write over a redirected file from its start)."""
    proc = _in_proc(path)
    own = proc is not None and proc.parent.name == "fd" and proc.parts[2] in ("self", "thread-self", str(os.getpid()))
    if own and proc.name.isdigit():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        return os.fdopen(os.dup(int(proc.name)), mode, **kwargs)
    return open(path, mode, **kwargs)


def _through_links(path: Path) -> Path:
    """The file a symbolic link at ``path`` names (replaced in its place, the link kept); ``path`` otherwise."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _temp_sibling(path: Path) -> tuple[int, str]:
    """An open temporary file beside ``path`` (its folder made); an error names ``path``, not the temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _as_target(e, path) from None


def temp_prefix(path: Path) -> str:
    """Hidden prefix of a temporary sibling of ``path``. Cut so that prefix + mkstemp's 8 characters +
    ".tmp" stay within a file-name limit (255 bytes) that ``path``'s own name may be close to."""
    return f".{path.name[:48]}."


#: A write's failures that name no file (the disk or quota full, a file too large, an I/O error): the target's.
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _as_target(e: OSError, path: Path) -> OSError:
    """The same error, naming the file the caller asked for instead of its temporary sibling."""
    try:
        return type(e)(e.errno, e.strerror, str(path))
    except TypeError:  # a subclass with a constructor of its own
        return OSError(e.errno, e.strerror, str(path))


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine, for judging another run's claim or temporary file.
    Windows has no signal 0 (there it is CTRL_C_EVENT, sent to the process group): taken as alive there."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except (ProcessLookupError, OverflowError):  # (a number past any pid: no such process)
        return False
    except OSError:  # another user's process: running
        return True
    return True


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_files(
    files: Sequence[tuple[str | os.PathLike, bytes]], staged: Sequence[tuple[str | os.PathLike, str]] = ()
) -> None:
    """Write several files that belong together (a model and its sidecar): each is written and synced to a
    temporary sibling first, and only when all are complete are they renamed into place, in the order given.
    A failed write (disk full) leaves every target as it was; a device or pipe among them is written last.
    ``staged``: (target, temporary) pairs the caller already wrote and synced (a video), renamed after
    ``files``; their temporaries are removed whatever happens."""
    done: list[tuple[str, Path]] = []
    # told apart before links are followed (/dev/stdout's lead to what stdout writes to); written last
    streams = [(Path(target), data) for target, data in files if is_stream(Path(target))]
    try:
        for target, data in files:
            if any(Path(target) == stream for stream, _ in streams):
                continue
            path = _through_links(Path(target))
            done.append((stage_bytes(path, data), path))
        done += [(str(tmp), _through_links(Path(target))) for target, tmp in staged]
        replace_together(done)
        for stream, data in streams:
            with _open_stream(stream, "wb") as f:
                f.write(data)
    finally:
        for tmp in {*(t for t, _ in done), *(str(t) for _, t in staged)}:  # (staged ones too if never reached)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def stage_bytes(path: Path, data: bytes) -> str:
    """``data`` in a synced temporary sibling of ``path``, with normal permissions, for ``replace_together``
    (the caller removes it if it never gets there); an error names ``path``."""
    with _staged(path, "wb") as (f, tmp):
        f.write(data)
    return tmp


def replace_together(pairs: list[tuple[str, Path]]) -> None:
    """Rename each (temporary, target) into place; if one rename fails (a file held open on Windows, an
    immutable one), the targets already replaced get their earlier files back: the set stays as it was.
    (The last target needs no copy of its earlier file: nothing after it can fail.) An earlier file that
    could not be put back is kept beside its target, and the error names it."""
    replaced: list[tuple[Path, Path | None]] = []  # target, the copy of its earlier file (None: it was new)
    try:
        for i, (tmp, path) in enumerate(pairs):
            kept = _earlier_copy(path) if i < len(pairs) - 1 else None
            try:
                os.replace(tmp, path)
            except OSError as e:
                if kept is not None:
                    os.unlink(kept)
                raise _as_target(e, path) from None
            replaced.append((path, kept))
    except BaseException as e:
        lost = []
        for path, kept in reversed(replaced):
            try:
                if kept is not None:
                    os.replace(kept, path)
                else:
                    os.unlink(path)
            except OSError:
                lost.append(f"{path}'s earlier file is {kept}" if kept else f"{path} is this run's")
        replaced.clear()  # each earlier file is back in place or named in the error: none may be removed
        if lost and isinstance(e, OSError):
            raise OSError(e.errno, f"{e.strerror}; and not put back as it was: {'; '.join(lost)}", e.filename) from None
        raise
    finally:
        for _, kept in replaced:
            if kept is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(kept)


def _earlier_copy(path: Path) -> Path | None:
    """A hidden sibling holding ``path``'s current file (a hard link; a copy where links are refused), or None."""
    if not path.exists():
        return None
    fd, name = _temp_sibling(path)
    os.close(fd)
    os.unlink(name)  # its name only, for the link (the name taken meanwhile: a copy over it, below)
    try:
        os.link(path, name)
    except OSError:  # no hard links here (some file systems), or an immutable file: a copy keeps it as well
        try:
            shutil.copy2(path, name)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(name)
            if isinstance(e, OSError):
                raise _as_target(e, path) from None
            raise
    return Path(name)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` as a whole when the block succeeds."""
    path = _through_links(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.filename is None and e.errno in WRITE_ERRNOS:  # a full disk: this folder's
            raise _as_target(e, path) from None
        raise


def check_folder(flag: str, path: str | Path) -> None:
    """ConfigError unless ``path`` is (or can be made) a folder that files can be written to."""
    if Path(path).is_file():
        raise ConfigError(f"{flag} {path}: is a file, expected a folder")
    _probe(flag, path, Path(path), ".probe.")


def check_writable(flag: str, path: str | Path) -> None:
    """ConfigError unless a file can be written at ``path`` (its folder is made, as the writer would)."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} {path}: cannot write there (is a folder, expected a file name)")
    if is_stream(target):
        if target.exists() and not os.access(target, os.W_OK):
            raise ConfigError(f"{flag} {path}: cannot write there (permission denied)")
        return
    target = _through_links(target)
    _probe(flag, path, target.parent, temp_prefix(target))


def check_outputs(files: dict[str, str | None], folders: dict[str, str | None] | None = None) -> None:
    """Refuse outputs (flag -> path; None: not asked for) that cannot be written, or where a file
    would be written at a folder's path, before any long work."""
    for flag, path in [*files.items(), *(folders or {}).items()]:
        kind = "folder" if flag in (folders or {}) else "file"
        # `--csv ""` (an unset shell variable) is a mistake, not "no CSV"; "  " names no file either
        if isinstance(path, str) and not path.strip():
            raise ConfigError(f"{flag}: the path is empty; name a {kind}")
        if path == "-":  # commands that can write to standard output say so before calling this
            raise ConfigError(f"{flag} -: this command cannot write to standard output; name a {kind}")
    folders = {flag: path for flag, path in (folders or {}).items() if path}
    for flag, path in folders.items():
        check_folder(flag, path)
    seen: dict[Path, str] = {}
    for flag, path in files.items():
        if not path:
            continue
        same = next((f for f, folder in folders.items() if Path(folder).resolve() == Path(path).resolve()), None)
        if same:
            raise ConfigError(f"{flag} {path}: cannot write there (it is the {same} folder; expected a file name)")
        other = flag if is_stream(Path(path)) else seen.setdefault(Path(path).resolve(), flag)  # /dev/null twice: fine
        if other != flag:
            raise ConfigError(f"{flag} {path}: is also the {other} file; each output needs a file of its own")
        check_writable(flag, path)


def blocked_reason(folder: Path, error: OSError) -> str:
    """Why ``folder`` could not be made or written in: a file in its path's place, else the OS's words."""
    blocking = next((p for p in (folder, *folder.parents) if p.is_file()), None)
    if blocking is None and folder.is_symlink() and not folder.exists():
        return f"{folder} is a link to {os.readlink(folder)}, which is not there"
    return f"{blocking} is a file, not a folder" if blocking else (error.strerror or str(error))


def _probe(flag: str, path: str | Path, folder: Path, prefix: str) -> None:
    """Make ``folder`` and a temporary file in it, as a writer would, then remove what it made (a
    command refused later, or interrupted, leaves no empty folders); ConfigError naming what blocks it."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write there ({blocked_reason(folder, e)})") from None
    finally:
        for p in made:
            with contextlib.suppress(OSError):  # another process may have written there meanwhile
                p.rmdir()
