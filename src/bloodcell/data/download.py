"""`bloodcell data download`: fetch the public BCCD archive, check it, unpack its BCCD/ folder.

The archive is GitHub's tarball of Shenggan/BCCD_Dataset at a fixed commit, so every user gets
the same 364 images and labels. Only ``BCCD/{Annotations,JPEGImages,ImageSets}`` and the
repository's LICENSE are unpacked, by hand rather than with ``tarfile.extract``, so no member
name can write outside the destination; the destination appears only when everything worked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from bloodcell.atomic import atomic_dir
from bloodcell.data.sources import default_data_root
from bloodcell.data.voc import VOC_FOLDERS
from bloodcell.errors import DatasetError, first_of

log = logging.getLogger(__name__)

UPSTREAM_REPO = "Shenggan/BCCD_Dataset"
UPSTREAM_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"
DEFAULT_URL = f"https://codeload.github.com/{UPSTREAM_REPO}/tar.gz/{UPSTREAM_COMMIT}"
#: sha256 of the archive at DEFAULT_URL. None: not pinned, because GitHub regenerates tarballs
#: (their bytes, and so their hash, may change while the content does not). The content is
#: pinned instead, by PINNED_TREE_SHA256.
PINNED_SHA256: str | None = None
#: sha256 over the unpacked Annotations/, JPEGImages/ and ImageSets/ of the pinned commit (see
#: tree_sha256), computed from a copy of that commit; checked whenever the archive hash is not given.
PINNED_TREE_SHA256 = "0bb479c7ed1c5f1e410e8e3c1b9a1565ee37feeb8e6375f6c93534deebf720c1"

#: What the BCCD commit holds; used to check an archive whose hash is not pinned.
EXPECTED_ANNOTATIONS = 364
EXPECTED_SPLITS = ("train", "val", "test")
#: Parts of the upstream BCCD/ folder that are unpacked (the rest of the repository is scripts).
DATA_FOLDERS = VOC_FOLDERS
CHUNK = 1 << 20
#: Written into a download: the content it unpacked (hidden: ``tree_sha256_of`` and listings skip it).
MARKER = ".bloodcell-download.json"


def download_bccd(
    dest: str | Path | None = None,
    url: str = DEFAULT_URL,
    sha256: str | None = PINNED_SHA256,
    timeout: float = 60.0,
    tree_sha256: str | None = PINNED_TREE_SHA256,
) -> Path:
    """Download the BCCD archive from ``url`` into ``dest`` (default: the user cache) and return ``dest``.

    ``sha256`` is the archive's expected hash; without it the unpacked layout is checked against the
    upstream counts and its content against ``tree_sha256``. An existing BCCD folder at ``dest`` is
    replaced as a whole.
    """
    dest = Path(dest) if dest else default_data_root()
    _refuse_foreign_folder(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside dest (same disk, no /tmp quota); removed whatever happens.
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.download.", dir=dest.parent) as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        digest = _fetch(url, archive, timeout)
        if sha256 is not None and digest != sha256.strip().lower():
            raise DatasetError(
                f"archive from {url} has sha256 {digest}, expected {sha256}; "
                "it is corrupt or not the pinned BCCD commit (nothing was written)"
            )
        with atomic_dir(dest) as staging:
            _extract_bccd(archive, staging, url)
            _check_layout(staging, url, exact=sha256 is None)
            content = tree_sha256_of(staging)
            if sha256 is None and tree_sha256 is not None and content != tree_sha256:
                raise DatasetError(
                    f"archive from {url}: dataset content has sha256 {content}, expected {tree_sha256}; "
                    "it is not the pinned BCCD commit (nothing was written)"
                )
            # what was unpacked, so a later download knows this folder unchanged and may replace it
            (staging / MARKER).write_text(json.dumps({"url": url, "tree_sha256": content}) + "\n")
    if sha256 is None:
        log.info("sha256 of the archive from %s is %s (content checked by tree hash)", url, digest)
    return dest


def tree_sha256_of(root: str | Path) -> str:
    """sha256 over every file in the dataset folders: 'relative/path NUL sha256(file)' lines, sorted."""
    root = Path(root)
    lines = []
    for folder in DATA_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and not path.name.startswith(".") and not _os_file(path.name):
                lines.append(f"{path.relative_to(root).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


#: Files a file manager leaves in any folder it shows (no edit of the dataset).
OS_FILES = (".ds_store", "thumbs.db", "desktop.ini")


def _os_file(name: str) -> bool:
    return name.lower() in OS_FILES or name.startswith("._")  # ._x: macOS's resource forks on other drives


def _refuse_foreign_folder(dest: Path) -> None:
    """Replacing ``dest`` wipes it, so only an empty folder or an earlier, unchanged download may be replaced:
    a lab's own VOC folder (or a BCCD copy whose labels it corrected) has an ``Annotations/`` too."""
    if dest.is_file():
        raise DatasetError(f"{dest}: is a file; pass a folder for the dataset")
    if not dest.is_dir():
        return
    entries = [p.name for p in dest.iterdir() if not _os_file(p.name)]  # a file manager's own files aside
    known = {*DATA_FOLDERS, "LICENSE", MARKER}  # any other entry, a hidden .git/ too, would be wiped with the folder
    foreign = sorted(name for name in entries if name not in known)
    if foreign:
        raise DatasetError(
            f"{dest}: folder exists and holds {first_of(foreign)}, which a BCCD download does not; nothing was "
            "written (a download replaces the folder as a whole): choose a new or empty folder"
        )
    if not entries:  # empty, but for what Finder or Explorer left there
        return
    try:  # what this folder's download unpacked; a download from before the marker: the pinned content
        unpacked = json.loads((dest / MARKER).read_text())["tree_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        unpacked = PINNED_TREE_SHA256
    if tree_sha256_of(dest) != unpacked:
        raise DatasetError(
            f"{dest}: folder exists and its images or labels differ from what a download unpacked there (edited, "
            "or another dataset); nothing was written (a download replaces the folder as a whole): choose a new "
            "or empty folder"
        )


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split()) or type(reason).__name__


def _fetch(url: str, path: Path, timeout: float) -> str:
    """Stream ``url`` into ``path``; return the sha256 hex digest. Network faults become one DatasetError line."""
    hasher = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, path.open("wb") as f:
            while chunk := response.read(CHUNK):
                hasher.update(chunk)
                f.write(chunk)
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DatasetError(
            f"cannot download BCCD from {url}: {_one_line(reason)}; "
            "download it by hand and pass --data PATH or set BLOODCELL_DATA"
        ) from None
    return hasher.hexdigest()


def _target(name: str, url: str) -> PurePosixPath | None:
    """Where a member of the upstream archive goes inside dest, or None to skip it.

    Upstream members are ``BCCD_Dataset-<commit>/BCCD/<folder>/...`` and ``BCCD_Dataset-<commit>/LICENSE``.
    A name that is absolute or climbs with ``..`` refuses the whole archive: it was not made by GitHub.
    """
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise DatasetError(f"archive from {url} has an unsafe member name {name!r}; refused (nothing was written)")
    parts = path.parts[1:]  # drop the BCCD_Dataset-<commit>/ top folder
    if parts == ("LICENSE",):
        return PurePosixPath("LICENSE")
    if len(parts) >= 3 and parts[0] == "BCCD" and parts[1] in DATA_FOLDERS and not parts[-1].startswith("."):
        return PurePosixPath(*parts[1:])
    return None


def _extract_bccd(archive: Path, out: Path, url: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                target = _target(member.name, url)
                if target is None or member.isdir():
                    continue
                if not member.isfile():  # links and devices could point outside dest
                    raise DatasetError(f"archive from {url}: member {member.name!r} is a link or special file; refused")
                path = out / target
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have data
                with source, path.open("wb") as f:
                    shutil.copyfileobj(source, f, CHUNK)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"archive from {url} cannot be unpacked: {_one_line(e)}") from None


def _check_layout(root: Path, url: str, exact: bool) -> None:
    """The unpacked folder must be a VOC dataset; with ``exact`` also the upstream BCCD counts."""
    xmls = sorted((root / "Annotations").glob("*.xml"))
    images = {p.stem for p in (root / "JPEGImages").glob("*")}
    problems = []
    if not xmls:
        problems.append("no BCCD/Annotations/*.xml")
    elif exact and len(xmls) != EXPECTED_ANNOTATIONS:
        problems.append(f"{len(xmls)} annotation files, expected {EXPECTED_ANNOTATIONS}")
    missing = [p.stem for p in xmls if p.stem not in images]
    if missing:
        problems.append(f"{len(missing)} annotations without an image (first {missing[0]})")
    splits = [s for s in EXPECTED_SPLITS if not (root / "ImageSets" / "Main" / f"{s}.txt").is_file()]
    if exact and splits:
        problems.append(f"no ImageSets/Main/{{{','.join(splits)}}}.txt")
    if problems:
        raise DatasetError(f"archive from {url} is not the BCCD dataset: {'; '.join(problems)} (nothing was written)")
