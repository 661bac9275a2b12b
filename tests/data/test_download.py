"""`bloodcell data download` without a network: a tarball in tmp_path, served through a file:// URL."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path

import pytest
from voc_factory import make_voc

from bloodcell.cli import main
from bloodcell.data import download
from bloodcell.data.download import UPSTREAM_COMMIT, download_bccd
from bloodcell.data.voc import load_voc
from bloodcell.errors import DatasetError

TOP = f"BCCD_Dataset-{UPSTREAM_COMMIT}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_archive(tmp_path: Path, extra: list[tarfile.TarInfo | tuple[str, bytes]] = ()) -> tuple[Path, str]:
    """A tarball laid out like GitHub's archive of the upstream repository; returns it and its sha256."""
    voc = make_voc(tmp_path / "src" / "BCCD", n_images=2)
    (voc.root / "JPEGImages" / ".DS_Store").write_bytes(b"junk")  # upstream noise that must not be copied
    archive = tmp_path / "bccd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(voc.root, arcname=f"{TOP}/BCCD")
        _add_bytes(tar, f"{TOP}/LICENSE", b"MIT License\n")
        _add_bytes(tar, f"{TOP}/README.md", b"# BCCD\n")
        _add_bytes(tar, f"{TOP}/scripts/split.py", b"print()\n")
        for item in extra:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
            else:
                _add_bytes(tar, *item)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_download_extracts_only_the_dataset(tmp_path: Path) -> None:
    archive, digest = make_archive(tmp_path)
    dest = tmp_path / "cache" / "BCCD"
    assert download_bccd(dest, url=archive.as_uri(), sha256=digest.upper()) == dest
    assert _tree(dest) == {
        "LICENSE", ".bloodcell-download.json", "Annotations", "JPEGImages", "ImageSets", "ImageSets/Main",
        "Annotations/img0.xml", "Annotations/img1.xml", "JPEGImages/img0.jpg", "JPEGImages/img1.jpg",
        "ImageSets/Main/train.txt", "ImageSets/Main/val.txt", "ImageSets/Main/test.txt",
    }  # fmt: skip
    assert [p.name for p in dest.parent.iterdir()] == ["BCCD"]  # no staging folders left behind
    dataset = load_voc(dest)
    assert len(dataset) == 2 and dataset.findings == []


def test_download_replaces_an_earlier_unchanged_download(tmp_path: Path) -> None:
    archive, digest = make_archive(tmp_path)
    dest = tmp_path / "BCCD"
    download_bccd(dest, url=archive.as_uri(), sha256=digest)
    (dest / ".DS_Store").write_bytes(b"Finder")  # what a file manager leaves is no edit
    (dest / "JPEGImages" / "Thumbs.db").write_bytes(b"Explorer")
    first = (dest / "Annotations" / "img0.xml").stat().st_ino
    download_bccd(dest, url=archive.as_uri(), sha256=digest)
    assert (dest / "Annotations" / "img0.xml").stat().st_ino != first  # unpacked again
    assert sorted(p.name for p in (dest / "Annotations").iterdir()) == ["img0.xml", "img1.xml"]


def test_download_refuses_to_wipe_an_unrelated_folder(tmp_path: Path) -> None:
    archive, digest = make_archive(tmp_path)
    (tmp_path / "home" / "notes.txt").parent.mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match=r"holds notes\.txt, which a BCCD download does not; nothing was written"):
        download_bccd(tmp_path / "home", url=archive.as_uri(), sha256=digest)
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"


def test_download_refuses_a_labs_voc_folder_or_an_edited_download(tmp_path: Path) -> None:
    """Both have an Annotations/ folder, as a download has: a lab's labels are never replaced by BCCD's."""
    archive, digest = make_archive(tmp_path)
    own = make_voc(tmp_path / "mylab", n_images=2).root  # Annotations, JPEGImages, ImageSets only
    before = _tree(own)
    with pytest.raises(DatasetError, match="differ from what a download unpacked there"):
        download_bccd(own, url=archive.as_uri(), sha256=digest)
    assert _tree(own) == before
    dest = tmp_path / "BCCD"
    download_bccd(dest, url=archive.as_uri(), sha256=digest)
    (dest / "Annotations" / "img0.xml").write_text("<annotation><!-- corrected --></annotation>")
    with pytest.raises(DatasetError, match="edited, or another dataset"):
        download_bccd(dest, url=archive.as_uri(), sha256=digest)
    assert "corrected" in (dest / "Annotations" / "img0.xml").read_text()
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / ".DS_Store").write_bytes(b"Finder")  # an empty folder a file manager has shown: still empty
    download_bccd(clean, url=archive.as_uri(), sha256=digest)
    (clean / ".git").mkdir()  # a lab versioning its copy: hidden, and still theirs
    with pytest.raises(DatasetError, match=r"holds \.git, which a BCCD download does not"):
        download_bccd(clean, url=archive.as_uri(), sha256=digest)


def test_wrong_sha256_leaves_nothing(tmp_path: Path) -> None:
    archive, _ = make_archive(tmp_path)
    dest = tmp_path / "cache" / "BCCD"
    with pytest.raises(DatasetError, match="sha256") as info:
        download_bccd(dest, url=archive.as_uri(), sha256="0" * 64)
    assert "\n" not in str(info.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def _symlink(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (("../evil", b"x"), "unsafe member"),
        ((f"{TOP}/BCCD/Annotations/../../../evil", b"x"), "unsafe member"),
        (("/tmp/evil", b"x"), "unsafe member"),
        (_symlink(f"{TOP}/BCCD/JPEGImages/evil.jpg"), "link or special file"),
    ],
    ids=["parent", "nested-parent", "absolute", "symlink"],
)
def test_unsafe_archive_is_refused(tmp_path: Path, member, words: str) -> None:
    archive, digest = make_archive(tmp_path, extra=[member])
    dest = tmp_path / "cache" / "BCCD"
    with pytest.raises(DatasetError, match=words):
        download_bccd(dest, url=archive.as_uri(), sha256=digest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()


def test_not_a_tarball_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bccd.tar.gz"
    archive.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DatasetError, match="cannot be unpacked"):
        download_bccd(tmp_path / "BCCD", url=archive.as_uri(), sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    assert not (tmp_path / "BCCD").exists()


def test_without_archive_hash_the_layout_and_content_are_checked(tmp_path: Path, monkeypatch) -> None:
    archive, _ = make_archive(tmp_path)
    with pytest.raises(DatasetError, match="2 annotation files, expected 364"):
        download_bccd(tmp_path / "BCCD", url=archive.as_uri(), sha256=None)
    assert not (tmp_path / "BCCD").exists()

    monkeypatch.setattr(download, "EXPECTED_ANNOTATIONS", 2)
    with pytest.raises(DatasetError, match="not the pinned BCCD commit"):
        download_bccd(tmp_path / "BCCD", url=archive.as_uri(), sha256=None)
    assert not (tmp_path / "BCCD").exists()

    content = download.tree_sha256_of(tmp_path / "src" / "BCCD")
    download_bccd(tmp_path / "BCCD", url=archive.as_uri(), sha256=None, tree_sha256=content)
    assert (tmp_path / "BCCD" / "LICENSE").is_file()
    assert download.tree_sha256_of(tmp_path / "BCCD") == content


def test_pinned_tree_hash_is_the_real_bccd(bccd_root: Path) -> None:
    """The pinned content hash equals the hash of the reference copy of the upstream commit."""
    assert download.tree_sha256_of(bccd_root) == download.PINNED_TREE_SHA256


UNREACHABLE = ["http://127.0.0.1:9/bccd.tar.gz", "file:///nonexistent/bccd.tar.gz", "nonsense-url"]


@pytest.mark.parametrize("url", UNREACHABLE)
def test_unreachable_url_fails_at_once_in_one_line(tmp_path: Path, url: str) -> None:
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        download_bccd(tmp_path / "BCCD", url=url, timeout=60)
    message = str(info.value)
    assert time.monotonic() - start < 10  # no retries, no wait for the timeout (60 s)
    assert message.startswith(f"cannot download BCCD from {url}: ") and "--data" in message and "\n" not in message
    assert not (tmp_path / "BCCD").exists()


@pytest.mark.parametrize("url", UNREACHABLE[:2])
def test_cli_unreachable_url_exit_2(tmp_path: Path, capsys, url: str) -> None:
    code = main(["data", "download", "--out", str(tmp_path / "BCCD"), "--url", url])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "--data" in err


def test_cli_download(tmp_path: Path, capsys) -> None:
    archive, digest = make_archive(tmp_path)
    code = main(["data", "download", "--out", str(tmp_path / "BCCD"), "--url", archive.as_uri(), "--sha256", digest])
    assert code == 0 and capsys.readouterr().out.strip() == f"BCCD ready at {tmp_path / 'BCCD'}"


def test_default_destination_is_the_user_cache(tmp_path: Path, monkeypatch) -> None:
    archive, digest = make_archive(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download_bccd(url=archive.as_uri(), sha256=digest) == tmp_path / "xdg" / "bloodcell" / "BCCD"
