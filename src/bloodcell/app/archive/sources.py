"""SOURCE arguments -> image URIs, through pyarrow.fs: local paths, s3://, gs://, hdfs:// alike."""

from __future__ import annotations

import fnmatch
import glob
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from bloodcell.errors import ConfigError
from bloodcell.runtime.images import IMAGE_SUFFIXES

#: A SOURCE with one of these suffixes is a list of sources, one per line ('#' starts a comment).
LIST_SUFFIXES = (".txt", ".lst")


def _pafs():
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise ConfigError("bloodcell batch needs pyarrow: pip install 'bloodcell[cluster]'") from None
    return pafs


@lru_cache(maxsize=32)
def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI or a local path; cached per scheme and bucket."""
    pafs = _pafs()
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with the scheme's own wording
        raise ConfigError(f"{uri}: cannot open ({e})") from None


@dataclass(frozen=True)
class ExpandedSources:
    uris: list[str]  # each image once, in the order given
    problems: list[str]


def _uri(source: str, inner: str) -> str:
    """A path inside the filesystem of ``source``, written the way ``source`` was (scheme kept)."""
    return f"{source.split('://', 1)[0]}://{inner}" if "://" in source else inner


def _glob(source: str) -> list[str]:
    """Matches of a glob: the local filesystem's own globbing, or a listing under the pattern's
    fixed prefix matched with fnmatch in a bucket (object stores have no glob)."""
    if "://" not in source:
        return sorted(str(Path(f).absolute()) for f in glob.glob(source, recursive=True) if Path(f).is_file())
    pafs = _pafs()
    fs, pattern = filesystem(source)
    fixed = pattern[: min(pattern.find(c) for c in "*?[" if c in pattern)].rsplit("/", 1)[0]
    try:
        infos = fs.get_file_info(pafs.FileSelector(fixed, recursive=True))
    except OSError:
        return []
    return sorted(
        _uri(source, i.path) for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)
    )


def expand(sources: list[str]) -> ExpandedSources:
    """Folders give their images recursively, globs their matches (in a bucket too), a .txt/.lst
    file its lines (each a source); a named file is always tried, whatever its suffix."""
    pafs = _pafs()
    uris: list[str] = []
    problems: list[str] = []

    def add(source: str, nested: bool = False) -> None:
        if glob.has_magic(source):
            found = _glob(source)
            if not found:
                problems.append(f"{source}: pattern matches no files")
            uris.extend(found)
            return
        fs, path = filesystem(source)
        try:
            info = fs.get_file_info(path)
        except OSError as e:
            problems.append(f"{source}: cannot read ({e})")
            return
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            found = sorted(
                i.path for i in infos if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                problems.append(f"{source}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            uris.extend(_uri(source, f) for f in found)
        elif info.type == pafs.FileType.File and Path(path).suffix.lower() in LIST_SUFFIXES and not nested:
            with fs.open_input_stream(path) as f:
                lines = f.read().decode("utf-8", errors="replace").splitlines()
            for line in (raw.strip() for raw in lines):
                if line and not line.startswith("#"):
                    add(line, nested=True)
        elif info.type == pafs.FileType.File:
            uris.append(_uri(source, path))
        else:
            problems.append(f"{source}: no such file or folder")

    for source in sources:
        add(source)
    return ExpandedSources(list(dict.fromkeys(uris)), problems)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as f:
        return f.read()
