"""Expanding SOURCE arguments (files, folders, globs) into image paths."""

from __future__ import annotations

import errno
import glob
import os
import re
import shlex
from pathlib import Path

from bloodcell.errors import first_of
from bloodcell.runtime.images import IMAGE_SUFFIXES, OTHER_IMAGE_SUFFIXES, VIDEO_SUFFIXES


def expand_sources(sources: list[str]) -> tuple[list[Path], list[str], list[Path], list[Path]]:
    """Return (image paths, problems, named paths that are not there, both in the order given). Folders
    give their images (sorted, not recursive); globs their matches ("**" at any depth); a named file is
    always tried, whatever its suffix. A file reached twice (a folder and a glob over it, a/x.jpg and
    ./a/x.jpg) is listed once, where first reached: counting it twice would double its cells in every total."""
    problems: list[str] = []
    missing: list[Path] = []
    # every input once, where first reached, in the order given: images by their real path, missing names
    # by name (results list them so)
    order: dict[str | tuple[str, str], Path] = {}
    for source in sources:
        p = Path(source)
        found: list[Path] = []
        if _is_dir(p):
            unusable = []  # x.jpg that is a broken link or a pipe: a failed input, not a file silently left out
            for f in sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):  # in the folder's order
                if is_file(f):
                    found.append(f)
                    order.setdefault(os.path.realpath(f), f)
                elif not _is_dir(f):
                    unusable.append(f)
                    _failed_input(f, problems, missing, order)
            if not found and not unusable:
                nested = any(_is_dir(f) for f in p.iterdir())
                hint = f"; subfolders are not searched (a glob like '{p / '**' / '*.jpg'}' is)" if nested else ""
                problems.append(f"{p}: folder has no images ({', '.join(IMAGE_SUFFIXES)}){hint}")
        elif is_file(p):
            found = [p]
        elif glob.has_magic(source):
            matches = sorted(Path(f) for f in glob.glob(source, recursive=True))  # "**": any depth
            found = [f for f in matches if is_file(f)]
            unusable = [f for f in matches if not is_file(f) and not _is_dir(f)]  # as in a folder: said
            for f in unusable:
                _failed_input(f, problems, missing, order)
            if not found and not unusable:
                problems.append(f"{source}: pattern matches no files")
        elif p not in missing:  # named twice: one failed input, not two
            problems.append(f"{p}: {unusable_reason(p)}")
            missing.append(p)
            order[("missing", str(p))] = p
        for path in found:
            order.setdefault(os.path.realpath(path), path)
    ordered = list(order.values())
    gone = set(missing)
    return [p for p in ordered if p not in gone], problems, missing, ordered


def unread_image_notes(sources: list[str]) -> list[str]:
    """For each folder given: the image files of kinds bloodcell does not read (an iPhone's HEIC, camera raw
    beside its JPEG) and the videos that its listing leaves out, so a field missing from the counts is no surprise."""
    notes = []
    for source in sources:
        if _is_dir(Path(source)):
            notes += left_out_notes(source, sorted(f.name for f in Path(source).iterdir()))
    return notes


def left_out_notes(where: str, names: list[str]) -> list[str]:
    """What of ``names`` (files in the folder ``where``, or paths under it) a folder's listing leaves out:
    videos (`predict --source` counts them frame by frame) and images of kinds bloodcell does not read."""
    left = [n for n in names if Path(n).suffix.lower() in OTHER_IMAGE_SUFFIXES]
    videos = [n for n in names if Path(n).suffix.lower() in VIDEO_SUFFIXES]
    notes = []
    if videos:
        notes.append(
            f"{printable(where)}: {len(videos)} video{'s' if len(videos) > 1 else ''} left out: "
            f"{first_of([printable(v) for v in videos])}; `bloodcell predict --source "
            f"{shlex.quote(printable(str(Path(where) / videos[0])))}` counts one frame by frame"
        )
    if left:
        kinds = ", ".join(sorted({OTHER_IMAGE_SUFFIXES[Path(n).suffix.lower()] for n in left}))
        notes.append(
            f"{printable(where)}: {len(left)} image file{'s' if len(left) > 1 else ''} of a kind bloodcell does not "
            f"read ({kinds}) left out: {first_of([printable(n) for n in left])}; save them as JPEG, PNG or TIFF to "
            "count them"
        )
    return notes


def _failed_input(path: Path, problems: list[str], missing: list[Path], order: dict) -> None:
    """A path that was asked for (in a folder, by a pattern) but is no readable file, a broken link or a pipe:
    said, and listed in the results as a missing name (once however often it was reached)."""
    if path not in missing:
        problems.append(f"{path}: {unusable_reason(path)}")
        missing.append(path)
    order.setdefault(("missing", str(path)), path)


def is_file(path: Path) -> bool:
    """Path.is_file, False where the answer cannot be had (a link into a folder this user may not enter:
    Python 3.11 raises there); unusable_reason then says why."""
    try:
        return path.is_file()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def unusable_reason(path: Path) -> str:
    """Why a named path that is neither a file nor a folder cannot be read, in a few words."""
    try:
        path.stat()
    except OSError as e:
        if not path.is_symlink():
            return "no such file or folder" if e.errno == errno.ENOENT else f"cannot read ({e.strerror})"
        if e.errno == errno.ELOOP:
            return "a loop of links (it leads back to itself)"
        if e.errno != errno.ENOENT:
            return f"a link that cannot be followed ({e.strerror})"
        return f"broken link (to {os.readlink(path)}, which is not there)"
    return "not a regular file (a pipe, socket or device)"


def output_names(paths: list[Path]) -> list[str]:
    """How outputs name each image: its file name, or, when two inputs share a file name (a/s.jpg,
    b/s.jpg), its path relative to the inputs' common folder, so no output overwrites another."""
    names = [printable(p.name) for p in paths]
    if len(set(names)) == len(names):
        return names
    parents = [os.path.abspath(p.parent) for p in paths]
    base = os.path.commonpath(parents)
    return [printable(Path(os.path.relpath(os.path.abspath(p), base)).as_posix()) for p in paths]


def shown(text: str) -> str:
    """``printable`` for a terminal line: control characters escaped too (a newline in a file name would split
    the line; an escape sequence would be run by the terminal), as ``\\n`` or ``\\x1b``."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], printable(text))


def printable(text: str) -> str:
    """A file name or path as text every output (CSV, HTML, Parquet) can hold: the bytes of a name that is
    not UTF-8 (a Latin-1 camera's "café", which Python carries as lone surrogates) shown as ``caf\\xe9``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system byte gave: its code point, escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
