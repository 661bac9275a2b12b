"""SOURCE arguments -> image URIs, through pyarrow.fs: local paths, s3://, gs://, hdfs:// alike."""

from __future__ import annotations

import codecs
import fnmatch
import glob
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.app.watch import ANNOTATED_DIR as WATCH_ANNOTATED
from bloodcell.app.watch import STATE_NAME as WATCH_STATE
from bloodcell.errors import BloodcellError, ConfigError
from bloodcell.runtime.images import IMAGE_SUFFIXES
from bloodcell.runtime.sources import left_out_notes, printable, unusable_reason

if TYPE_CHECKING:
    import pyarrow.fs as pafs

#: A SOURCE with one of these suffixes is a list of sources, one per line ('#' starts a comment).
LIST_SUFFIXES = (".txt", ".lst")


def _is_hidden(name: str) -> bool:
    """Dot-names: macOS ``._*`` resource forks, editors' temporaries; skipped as globs and watch skip them."""
    return name.startswith(".")


def _local_images(root: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """Images under a local folder, recursively; subfolders that could not be read (skipped); image names
    that are no readable file (a link to nothing, a pipe: failed inputs); and the other files' paths under
    ``root`` (videos and HEIC among them are said). A symbolic link to a folder inside ``root`` (a second way
    to it) or to one above it (a loop) is not followed; links to folders elsewhere are, each real folder
    once. Hidden names and `bloodcell watch` output skipped."""
    top = os.path.realpath(root)
    seen: set[str] = set()
    found: list[str] = []
    problems: list[str] = []
    failed: list[str] = []
    others: list[str] = []

    def unreadable(e: OSError) -> None:
        problems.append(f"{e.filename}: cannot read ({e.strerror or e})")

    def elsewhere(folder: str) -> bool:
        real = os.path.realpath(folder)
        inside = real == top or real.startswith(top + os.sep)
        above = top.startswith(real.rstrip(os.sep) + os.sep)
        return not (inside or above)

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        # `bloodcell watch` output: its annotated copies are not fields (the folder's own images are, where a
        # watch wrote into the folder it watched)
        copies = WATCH_ANNOTATED if WATCH_STATE in files else None
        dirs[:] = sorted(
            d
            for d in dirs
            if not _is_hidden(d)
            and d != copies
            and (not os.path.islink(os.path.join(folder, d)) or elsewhere(os.path.join(folder, d)))
        )
        for name in files:
            path = os.path.join(folder, name)
            if not _is_hidden(name) and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                others.append(os.path.relpath(path, root))  # a video, an iPhone's HEIC: said, not counted
            if _is_hidden(name) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if os.path.isfile(path):
                found.append(path)
            else:  # os.walk lists a link to nothing, a pipe among the files: images asked for, unreadable
                failed.append(f"{printable(path)}: {unusable_reason(Path(path))}")
    return sorted(found), problems, sorted(failed), sorted(others)


def _pafs():
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise ConfigError("bloodcell batch needs pyarrow: pip install 'bloodcell[cluster]'") from None
    return pafs


def canonical(source: str) -> str:
    """The spelling rows record: local paths (and file:// URIs) absolute and normalized, links kept (a
    file link's name is the field's, an alias may be the one path every node shares); other URIs as given.
    Which rows are the same file is ``file_key``'s call."""
    if source.startswith("file://"):
        source = source[len("file://") :]
    return source if "://" in source else os.path.normpath(os.path.abspath(source))


def file_key(uri: str) -> str:
    """The file a row's path names, links resolved: an archive reached through a linked folder or another
    mount alias is the same archive (a rerun skips it; one run lists each file once)."""
    return uri if "://" in uri else os.path.realpath(uri)


@lru_cache(maxsize=32)
def _remote(uri: str):
    try:
        return _pafs().FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with the scheme's own wording
        raise ConfigError(f"{uri}: cannot open ({e})") from None


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow FileSystem, path inside it) for a URI or a local path. Remote filesystems are cached
    per bucket (scheme, host and options), so each image does not open a new client."""
    if "://" not in uri or uri.startswith("file://"):
        return _pafs().LocalFileSystem(), canonical(uri)
    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    query = rest.partition("?")[2]
    fs, root = _remote(f"{scheme}://{bucket}" + (f"?{query}" if query else ""))
    path = f"{root.rstrip('/')}/{key.partition('?')[0]}" if key else root
    return fs, path


@dataclass(frozen=True)
class ExpandedSources:
    uris: list[str]  # each image once, in the order given
    problems: list[str]
    skipped: list[str] = field(default_factory=list)  # subfolders that could not be read (e.g. lost+found)
    notes: list[str] = field(default_factory=list)  # files of a kind not counted (videos, HEIC), by folder


def _uri(source: str, inner: str) -> str:
    """A path inside the filesystem of ``source``, written the way ``source`` was (scheme and
    options kept: an S3 endpoint or region in the query must reach the workers too)."""
    if "://" not in source or source.startswith("file://"):
        return canonical(inner)
    scheme, rest = source.split("://", 1)
    query = rest.partition("?")[2]
    return f"{scheme}://{inner}" + (f"?{query}" if query else "")


def _has_magic(source: str) -> bool:
    return glob.has_magic(source.partition("?")[0] if "://" in source else source)


def _glob(source: str) -> tuple[list[str], list[str]]:
    """Matches of a glob: the local filesystem's own globbing, or a listing under the pattern's
    fixed prefix matched with fnmatch in a bucket (object stores have no glob); and the local matches that
    are no readable file (a link to nothing, a pipe: failed inputs, as in a folder)."""
    if "://" not in source or source.startswith("file://"):
        local = source[len("file://") :] if source.startswith("file://") else source
        matches = glob.glob(local, recursive=True)
        unusable = [m for m in matches if not Path(m).is_file() and not Path(m).is_dir()]
        failed = [f"{printable(m)}: {unusable_reason(Path(m))}" for m in sorted(unusable)]
        return sorted(canonical(f) for f in matches if Path(f).is_file()), failed
    pafs = _pafs()
    fs, pattern = filesystem(source)
    fixed = pattern[: min(i for i in (pattern.find(c) for c in "*?[") if i >= 0)].rsplit("/", 1)[0]
    depth = pattern.count("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(fixed, recursive=True))
    except OSError:
        return [], []
    # fnmatch's * also crosses "/": keep a listing's depth equal to the pattern's, as a shell glob does
    found = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and fnmatch.fnmatch(i.path, pattern)
        and ("**" in pattern or i.path.count("/") == depth)
    ]
    return sorted(_uri(source, p) for p in found), []


def expand(sources: list[str]) -> ExpandedSources:
    """Folders give their images recursively, globs their matches (in a bucket too), a .txt/.lst
    file its lines (each a source); a named file is always tried, whatever its suffix."""
    pafs = _pafs()
    uris: list[str] = []
    problems: list[str] = []
    skipped: list[str] = []
    notes: list[str] = []  # files a folder holds that are not counted: videos, HEIC

    def add(source: str, nested: bool = False) -> None:
        try:
            add_one(source, nested)
        except BloodcellError as e:  # an unknown scheme, a bucket that cannot be opened: the others go on
            problems.append(str(e))
        except OSError as e:  # e.g. an unreadable subfolder or list file
            problems.append(f"{printable(source)}: cannot read ({e.strerror or e})")
        except UnicodeEncodeError:  # a name that is not UTF-8 (pyarrow's paths are UTF-8 strings)
            problems.append(_not_utf8(source))

    def add_one(source: str, nested: bool) -> None:
        if _has_magic(source):
            found, failed = _glob(source)
            problems.extend(failed)
            if not found and not failed:
                problems.append(f"{printable(source)}: pattern matches no files")
            uris.extend(found)
            return
        fs, path = filesystem(source)
        try:
            info = fs.get_file_info(path)
        except OSError as e:
            problems.append(f"{printable(source)}: cannot read ({e})")
            return
        failed: list[str] = []
        if info.type == pafs.FileType.Directory and isinstance(fs, pafs.LocalFileSystem):
            found, unreadable, failed, others = _local_images(path)
            skipped.extend(unreadable)
            problems.extend(failed)
            notes.extend(left_out_notes(path, others))  # the local path: a file:// source's works in `predict`
        elif info.type == pafs.FileType.Directory:  # a bucket: no links, no loops
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            found = sorted(
                i.path
                for i in infos
                if i.type == pafs.FileType.File
                and Path(i.path).suffix.lower() in IMAGE_SUFFIXES
                and not any(_is_hidden(part) for part in i.path[len(path) :].split("/"))
            )
        if info.type == pafs.FileType.Directory:
            if not found and not failed:
                problems.append(f"{printable(source)}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            uris.extend(_uri(source, f) for f in found)
        elif info.type == pafs.FileType.File and Path(path).suffix.lower() in LIST_SUFFIXES and not nested:
            with fs.open_input_stream(path) as f:
                raw_list = f.read()
            if raw_list.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw_list:
                problems.append(
                    f"{printable(source)}: a list saved as UTF-16 (Windows PowerShell's default); save it as UTF-8 "
                    "text, one path per line (e.g. `Out-File -Encoding utf8`)"
                )
                return
            # utf-8-sig: Notepad's byte-order mark is no part of the first path; a line in another encoding (a
            # Latin-1 name) is said by its number, not looked for under a garbled name
            lines = []
            for number, raw in enumerate(raw_list.removeprefix(codecs.BOM_UTF8).splitlines(), start=1):
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    problems.append(
                        f"{printable(source)}: line {number} is not UTF-8 text (a Latin-1 name?); save the list "
                        "as UTF-8"
                    )
            base = os.path.dirname(path) if isinstance(fs, pafs.LocalFileSystem) else None
            for line in (raw.strip() for raw in lines):
                if line and not line.startswith("#"):
                    # a relative local path is relative to the list's folder (as wherever the list is read)
                    local = base is not None and "://" not in line and not os.path.isabs(line)
                    entry = os.path.join(base, line) if local else line
                    before = len(problems)
                    add(entry, nested=True)
                    problems[before:] = [f"{printable(source)}: {p}" for p in problems[before:]]  # which list named it
        elif info.type == pafs.FileType.File and Path(path).suffix.lower() in LIST_SUFFIXES:  # (nested)
            problems.append(
                f"{printable(source)}: a list named inside a list is not read; name its paths in the first list"
            )
        elif info.type == pafs.FileType.File:
            uris.append(_uri(source, path))
        else:
            problems.append(f"{printable(source)}: no such file or folder")

    for source in sources:
        add(source)
    first: dict[str, str] = {}  # each file once, however it was reached (a folder and a glob, a link and its target)
    for uri in uris:
        if printable(uri) != uri:  # bytes that are not UTF-8 in a name: no Parquet string (nor pyarrow path) holds it
            problems.append(_not_utf8(uri))
            continue
        first.setdefault(file_key(uri), uri)
    return ExpandedSources(list(first.values()), problems, skipped, list(dict.fromkeys(notes)))  # a folder given twice


def _not_utf8(uri: str) -> str:
    """Why a path whose name holds bytes that are not UTF-8 cannot be counted, and how to rename it."""
    odd = next((part for part in Path(uri).parts if printable(part) != part), uri)
    what = "file" if odd == Path(uri).name and not os.path.isdir(uri) else "folder"
    return (
        f"{printable(uri)}: the {what} name {printable(odd)} is not UTF-8 (a camera or share that writes "
        f"Latin-1, say); rename it (e.g. `convmv -f latin1 -t utf8 --notest {what.upper()}`)"
    )


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as f:
        return f.read()
