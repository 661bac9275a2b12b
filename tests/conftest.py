"""Fixtures shared by every test folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from export_worker import tiny_model_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """The read-only BCCD copy beside the repository (see ../shared/data/README.md)."""
    root = REPO.parent / "shared" / "data" / "BCCD"
    if not (root / "Annotations").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"BCCD not found at {root}; CI must have ../shared/data/BCCD")
        pytest.skip(f"BCCD not found at {root}")
    return root


@pytest.fixture(scope="session")
def dense_root(bccd_root: Path) -> Path:
    """BCCD-dense beside BCCD (every cell boxed on 90 train + 42 val images); CI must have it, as it must BCCD:
    the counting guards read it, and a guard that skips is no guard."""
    root = bccd_root.parent / "BCCD-dense"
    if not (root / "Annotations").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"BCCD-dense not found at {root}; CI must have ../shared/data/BCCD-dense")
        pytest.skip(f"BCCD-dense not found at {root}")
    return root


@pytest.fixture(scope="session")
def tiny_voc(bccd_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-image VOC folder (train 4, val 2) of symlinks into BCCD: real data, seconds to train on."""
    root = tmp_path_factory.mktemp("tiny_voc")
    split_ids = {s: (bccd_root / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in ("train", "val")}
    ids = {"train": split_ids["train"][:4], "val": split_ids["val"][:2]}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for split, names in ids.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            (root / "Annotations" / f"{name}.xml").symlink_to(bccd_root / "Annotations" / f"{name}.xml")
            (root / "JPEGImages" / f"{name}.jpg").symlink_to(bccd_root / "JPEGImages" / f"{name}.jpg")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Factory for small random CellNet model files (seconds to build, fast to run)."""

    def make(conf: float = 0.3, cls_bias: float = 0.0, metrics: dict | None = None) -> Path:
        path = tmp_path_factory.mktemp("model") / "tiny.pt"
        return tiny_model_file(path, conf=conf, cls_bias=cls_bias, metrics=metrics)

    return make


# Exported models take two minutes of one core to build (the TFLite converter is single-threaded):
# a subprocess builds them while the other tests run, and the tests that need them run last.
BACKGROUND_FIXTURES = {"tiny_exports": "tiny", "exports": "shipped"}  # fixture -> what the worker builds
WORKER_TIMEOUT_S = 1200  # about 2 min on a 2-core CPU; a hung converter fails its tests instead of CI


class _BackgroundExports:
    def __init__(self, builds: list[str]) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="bloodcell-test-exports-"))
        self.log = self.out / "worker.log"
        bccd = REPO.parent / "shared" / "data" / "BCCD"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core for it, the other tests keep theirs
        worker = [sys.executable, str(Path(__file__).with_name("export_worker.py")), str(self.out), str(bccd)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([*worker, *builds], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.deadline = time.monotonic() + WORKER_TIMEOUT_S  # one for the whole worker, however many wait

    def wait_for(self, name: str) -> dict[str, Path]:
        """The paths the worker listed under ``name`` once written; the worker's log if it failed first."""
        done = self.out / f"{name}.json"
        while not done.is_file() and self.proc.poll() is None and time.monotonic() < self.deadline:
            time.sleep(0.2)
        if not done.is_file():
            tail = self.log.read_text(errors="replace")[-3000:]
            code = self.proc.poll()
            if code is None:  # hung: stopped, so the next fixture does not wait again
                self.proc.kill()
                self.proc.wait()
            state = f"exited with {code}" if code is not None else f"ran {WORKER_TIMEOUT_S} s and was stopped"
            pytest.fail(f"the export worker {state} without writing {name}:\n{tail}")
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.out, ignore_errors=True)


_background: _BackgroundExports | None = None


def _exports_needed(items: list[pytest.Item]) -> list[str]:
    """What the worker must build for these tests: "tiny", "shipped", both or neither."""
    used = {f for item in items for f in getattr(item, "fixturenames", ()) if f in BACKGROUND_FIXTURES}
    return [build for fixture, build in BACKGROUND_FIXTURES.items() if fixture in used]


@pytest.hookimpl(tryfirst=True)  # before -k, --sw, --lf and the like choose from the order the run will have
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the modules whose tests use the exported models to the end (a stable sort: order kept in each part)."""
    later = {getattr(item, "module", None) for item in items if _exports_needed([item])}
    later.discard(None)
    items[:] = sorted(items, key=lambda item: getattr(item, "module", None) in later)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the export worker if a test that will run needs it (``session.items`` is the final selection)."""
    global _background
    option = session.config.option
    listing_only = ("collectonly", "setupplan", "setuponly", "showfixtures", "show_fixtures_per_test")
    if any(getattr(option, name, False) for name in listing_only):
        return
    builds = _exports_needed(session.items)
    if builds:
        _background = _BackgroundExports(builds)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _background is not None:
        _background.close()


@pytest.fixture(scope="session")
def exports(bccd_root) -> dict[str, Path]:
    """The shipped model exported once per test session to every format (the export worker's)."""
    assert _background is not None, "conftest starts the export worker for tests that use this fixture"
    return _background.wait_for("shipped")


@pytest.fixture(scope="session")
def tiny_exports() -> dict[str, Path]:
    """A small random model exported to ONNX and fp32 TFLite (about 30 s), and under "raw_tflite"
    the .tflite file as the converter wrote it, before its metadata was embedded."""
    assert _background is not None, "conftest starts the export worker for tests that use this fixture"
    return _background.wait_for("tiny")
