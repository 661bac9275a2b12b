"""`bloodcell batch`: sources, Parquet rows, resume after a kill, local and Ray engines agree with predict."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
import pyarrow.dataset as pads  # noqa: E402

from bloodcell.app.archive import run_batch  # noqa: E402
from bloodcell.app.archive.sources import expand  # noqa: E402
from bloodcell.app.predict_job import run_predict  # noqa: E402
from bloodcell.runtime.predict import GRAYSCALE_WARNING  # noqa: E402

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "src/bloodcell/assets/samples").glob("*.jpg"))


def read_rows(out: Path) -> list[dict]:
    return pads.dataset(out, format="parquet").to_table().to_pylist()


def has_parts(out: Path) -> bool:
    """Whether a running batch has written a part yet. Its --out check makes the folder and removes it
    again before the dataset is made, so the folder may vanish between a listing's steps."""
    try:
        return any(out.glob("part-*.parquet"))
    except FileNotFoundError:
        return False


def predict_counts(paths: list[Path], tmp_path: Path) -> dict[str, dict[str, int]]:
    """Counts from `bloodcell predict --csv` for the same images, keyed by absolute path."""
    csv_path = tmp_path / "predict.csv"
    assert run_predict([str(p) for p in paths], csv_path=str(csv_path), device="cpu") == 0
    names = {p.name: str(p.absolute()) for p in paths}
    with open(csv_path, newline="") as f:
        return {names[r["image"]]: {k: int(r[k]) for k in ("RBC", "WBC", "Platelets")} for r in csv.DictReader(f)}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """The three samples, one again in a subfolder, and a file that is not an image."""
    root = tmp_path / "archive"
    (root / "day2").mkdir(parents=True)
    for p in SAMPLES:
        shutil.copy(p, root / p.name)
    shutil.copy(SAMPLES[0], root / "day2" / "again.jpg")
    (root / "day2" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_sources_expand_folders_globs_lists_and_uris(archive: Path, tmp_path: Path) -> None:
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# the second day\n{archive / 'day2' / 'again.jpg'}\n\n{archive / 'nothing.jpg'}\n")
    relative = os.path.relpath(archive / "day2", Path.cwd()) + "/../day2/again.jpg"  # spelled another way
    listing.write_text(listing.read_text() + "foo://bucket/x.jpg\n")  # a scheme nobody serves: one problem
    sources = [str(archive), f"{archive}/*.jpg", str(listing), f"file://{archive / 'day2'}", relative, "/no/such"]
    found = expand(sources)
    assert found.uris == sorted(str(p) for p in archive.rglob("*.jpg"))  # each file once, one spelling
    assert expand([f"{archive}/*.jpg"]).uris == sorted(str(p) for p in archive.glob("*.jpg"))  # * stays in its folder
    # a list's problems name the list; its relative lines are relative to its folder
    assert [p.split(": ")[0] for p in found.problems] == [str(listing), str(listing), "/no/such"]
    assert found.problems[0] == f"{listing}: {archive / 'nothing.jpg'}: no such file or folder"
    assert found.problems[1].startswith(f"{listing}: foo://bucket")
    nested = archive.parent / "lists" / "day2.lst"
    nested.parent.mkdir()
    nested.write_text("../archive/day2/again.jpg\nagain.jpg\n")
    found = expand([str(nested)])
    assert found.uris == [str(archive / "day2" / "again.jpg")]
    assert found.problems == [f"{nested}: {nested.parent / 'again.jpg'}: no such file or folder"]
    (archive / "day2" / "gone.jpg").symlink_to(archive / "no-such.jpg")  # a link to nothing: a failed input
    os.mkfifo(archive / "day2" / "pipe.jpg")  # a pipe named as an image: likewise (it was dropped unsaid)
    found = expand([str(archive / "day2")])
    assert found.skipped == [] and found.problems == [
        f"{archive / 'day2' / 'gone.jpg'}: broken link (to {archive / 'no-such.jpg'}, which is not there)",
        f"{archive / 'day2' / 'pipe.jpg'}: not a regular file (a pipe, socket or device)",
    ]


def test_local_batch_rows_match_predict_and_resume_skips(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_batch([str(archive)], str(out), device="cpu", part_rows=2, progress=False)
    assert (summary.written, summary.failed, summary.skipped) == (5, 1, 0)
    assert str(summary).startswith("4 images counted, 1 failed, 0 skipped (already done); 5 rows written;")
    rows = read_rows(out)
    assert len(rows) == 5 and len(list(out.glob("part-*.parquet"))) == 3
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and "broken.jpg" in bad[0]["error"] and bad[0]["counts"] is None and bad[0]["sha256"]
    assert bad[0]["warnings"] == []  # a list column holds lists on every row
    good = [r for r in rows if not r["error"]]
    expected = predict_counts([Path(r["path"]) for r in good], tmp_path)
    assert {r["path"]: r["counts"] for r in good} == expected
    for r in good:  # counted boxes are listed, and every count lies in its interval
        assert len(r["detections"]) == sum(r["counts"].values())
        assert all(r["count_lo90"][k] <= n <= r["count_hi90"][k] for k, n in r["counts"].items())
    assert {r["model"] for r in rows} == {rows[0]["model"]} and rows[0]["model"].startswith("cellnet_bccd.pt@")

    again = run_batch([str(archive)], str(out), device="cpu", progress=False)
    # the bad file, unchanged, is failed again (not also skipped): 4 + 1 = the 5 rows
    assert (again.written, again.skipped, again.failed) == (0, 4, 1) and len(read_rows(out)) == 5
    summaries = sorted((out / "_runs").glob("*.csv"))
    assert len(summaries) == 2 and "images_per_s" in summaries[0].read_text()

    # Changed content under the same path is new work; unchanged files stay skipped.
    shutil.copy(SAMPLES[1], archive / "day2" / "again.jpg")
    changed = run_batch([str(archive)], str(out), device="cpu", progress=False)
    assert (changed.written, changed.skipped, changed.failed) == (1, 3, 1)

    # What makes a count doubtful travels with the row, as predict prints it.
    Image.open(SAMPLES[2]).convert("L").save(archive / "gray.png")
    assert run_batch([str(archive)], str(out), device="cpu", progress=False).written == 1
    warnings = {Path(r["path"]).name: r["warnings"] for r in read_rows(out) if not r["error"]}
    assert warnings.pop("gray.png") == [GRAYSCALE_WARNING] and set(map(len, warnings.values())) == {0}


def test_rows_record_the_exposure_gains_predict_detected_at(tmp_path: Path) -> None:
    """A dim field is brightened before detection (runtime.exposure); its row says by how much, as predict's JSON."""
    import json

    import numpy as np

    folder = tmp_path / "fields"
    folder.mkdir()
    shutil.copy(SAMPLES[0], folder / "plain.jpg")
    dim = (np.asarray(Image.open(SAMPLES[0]), np.float32) * 0.3 + 0.5).astype(np.uint8)
    Image.fromarray(dim).save(folder / "dim.png")
    run_batch([str(folder)], str(tmp_path / "out"), device="cpu", progress=False)
    rows = {Path(r["path"]).name: r["exposure_gains"] for r in read_rows(tmp_path / "out")}
    assert run_predict([str(folder / "plain.jpg"), str(folder / "dim.png")], json_path=str(tmp_path / "p.json")) == 0
    predicted = {Path(r["image"]).name: r["exposure_gains"] for r in json.loads((tmp_path / "p.json").read_text())}
    assert rows["plain.jpg"] == [1.0, 1.0, 1.0] == predicted["plain.jpg"]
    assert min(rows["dim.png"]) > 2.5 and rows["dim.png"] == pytest.approx(predicted["dim.png"], abs=1e-3)


def test_killed_batch_completes_each_image_exactly_once_on_rerun(bccd_root: Path, tmp_path: Path) -> None:
    images = sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:24]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(map(str, images)) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bloodcell", "batch", str(listing), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen([*cmd, "--part-rows", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not has_parts(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = len(read_rows(out))
    assert 0 < first < len(images), "the kill must land mid-way for this test to mean anything"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{first} skipped" in done.stdout
    paths = [r["path"] for r in read_rows(out)]
    assert sorted(paths) == sorted(map(str, images))  # every image, exactly once


def test_sigterm_stops_a_batch_with_workers_as_ctrl_c_does(bccd_root: Path, tmp_path: Path) -> None:
    """A scheduler's SIGTERM: the rows finished are written, _runs/<id>.csv says how far it got, exit 130,
    and the worker processes end quietly (no tracebacks)."""
    images = sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:40]  # tasks of 8: two running, more queued
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(map(str, images)) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bloodcell", "batch", str(listing), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--part-rows", "1"], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while not has_parts(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as a scheduler does: workers get it too
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "stopped: " in err and "a rerun counts the rest" in err
        [summary] = list(csv.DictReader(next((out / "_runs").glob("*.csv")).open()))
        assert summary["interrupted"] == "True" and 0 < int(summary["written"]) == len(read_rows(out)) < 40
        deadline = time.monotonic() + 10  # and no worker outlives the run
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("worker processes outlived the stopped run")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_ray_with_two_cpus_counts_like_predict_on_bccd_val(bccd_root: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ids = (bccd_root / "ImageSets/Main/val.txt").read_text().split()
    images = [bccd_root / "JPEGImages" / f"{i}.jpg" for i in ids]
    listing = tmp_path / "val.txt"
    listing.write_text("\n".join(map(str, images)) + "\n")

    def cli_stop(signum, frame):  # stands for the CLI's handler (SIGTERM ends a run as Ctrl-C does)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, cli_stop)
    try:
        summary = run_batch(
            [str(listing)], str(tmp_path / "out"), engine="ray", workers=2, device="cpu", progress=False
        )
        assert signal.getsignal(signal.SIGTERM) is cli_stop  # ray.init's own handler (sys.exit) did not stay
    finally:
        signal.signal(signal.SIGTERM, before)
        ray.shutdown()
    assert (summary.written, summary.failed) == (len(images), 0)
    rows = read_rows(tmp_path / "out")
    assert {r["path"]: r["counts"] for r in rows} == predict_counts(images, tmp_path)


def test_batch_flags_are_checked(tmp_path: Path) -> None:
    from bloodcell.cli import main

    assert main(["batch", str(SAMPLES[0]), "--out", str(tmp_path / "o"), "--address", "auto"]) == 2
    assert main(["batch", str(SAMPLES[0]), "--out", str(tmp_path / "o"), "--engine", "ray", "--device", "cuda:1"]) == 2
    assert not (tmp_path / "o").exists()  # refused before any work
    (tmp_path / "file").write_text("x")
    assert main(["batch", str(SAMPLES[0]), "--out", str(tmp_path / "file")]) == 2
    with pytest.raises(SystemExit):
        main(["batch", str(SAMPLES[0]), "--out", str(tmp_path / "o"), "--engine", "spark"])
    assert main(["batch", str(SAMPLES[0]), "--out", str(tmp_path / "counts.csv")]) == 2  # a folder, not a CSV
    assert not (tmp_path / "counts.csv").exists()


def test_nothing_to_count_makes_no_dataset_and_another_folder_is_not_one(tmp_path: Path, capsys) -> None:
    from bloodcell.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    for source in (tmp_path / "typo", empty):  # a typo'd source, an empty folder: exit 1, no folder made
        assert main(["batch", str(source), "--out", str(tmp_path / "o")]) == 1
        assert f"error: no image found in {source}; nothing written to" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    images = tmp_path / "images"  # --out naming the images' folder: refused, nothing written there
    images.mkdir()
    shutil.copy(SAMPLES[0], images / "a.jpg")
    assert main(["batch", str(images), "--out", str(images)]) == 2
    assert "holds other files (a.jpg); give a new or empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == ["a.jpg"]


def test_a_dataset_holds_one_models_counts(tmp_path: Path, tiny_model) -> None:
    from bloodcell.errors import ConfigError

    out = tmp_path / "out"
    run_batch([str(SAMPLES[0])], str(out), device="cpu", progress=False)
    with pytest.raises(ConfigError, match=r"holds counts by cellnet_bccd\.pt@"):
        run_batch([str(SAMPLES[0])], str(out), model=str(tiny_model()), device="cpu", progress=False)


def test_foreign_parquet_and_list_encodings_are_said_not_tracebacks(tmp_path: Path) -> None:
    """A Parquet file of other columns in --out, a list saved as UTF-16 (PowerShell) or with a byte-order mark
    (Notepad): one line each, and the BOM's first path read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bloodcell.errors import ConfigError

    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"a": [1, 2]}), out / "data.parquet")
    with pytest.raises(ConfigError, match="holds Parquet files that are not bloodcell batch counts"):
        run_batch([str(SAMPLES[0])], str(out), device="cpu", progress=False)
    utf16, bom = tmp_path / "u16.txt", tmp_path / "bom.txt"
    utf16.write_text(f"{SAMPLES[0]}\r\n", encoding="utf-16")
    bom.write_text(f"{SAMPLES[0]}\n", encoding="utf-8-sig")
    outer = tmp_path / "outer.txt"
    outer.write_text(f"{bom}\n")  # a list inside a list: said, not a row "cannot decode image"
    assert expand([str(outer)]).problems == [f"{outer}: {bom}: a list named inside a list is not read; name its "
                                             "paths in the first list"]  # fmt: skip
    expanded = expand([str(utf16), str(bom)])
    assert expanded.problems == [f"{utf16}: a list saved as UTF-16 (Windows PowerShell's default); save it as "
                                 "UTF-8 text, one path per line (e.g. `Out-File -Encoding utf8`)"]  # fmt: skip
    assert [Path(u).name for u in expanded.uris] == [SAMPLES[0].name]


def test_a_rerun_with_other_settings_is_refused_not_mixed(tmp_path: Path) -> None:
    """Rows say which --conf and --cell-size counted them; a rerun with others would mix two kinds of counts."""
    from bloodcell.errors import ConfigError

    out = tmp_path / "out"
    run_batch([str(SAMPLES[0])], str(out), device="cpu", conf="0.9", cell_size=70.0, progress=False)
    [row] = read_rows(out)
    assert row["model"].startswith("cellnet_bccd.pt@") and row["model"].endswith(" conf=0.9,0.9,0.9 cell_size=70")
    for settings in ({"conf": "0.95", "cell_size": 70.0}, {"conf": "0.9"}, {}):
        with pytest.raises(ConfigError, match="another model, --conf or --cell-size"):
            run_batch([str(SAMPLES[1])], str(out), device="cpu", progress=False, **settings)
    same = run_batch([str(SAMPLES[0])], str(out), device="cpu", conf="0.9", cell_size=70.0, progress=False)
    assert same.skipped == 1 and same.written == 0


def test_folder_sources_take_each_real_file_once_and_skip_hidden_and_watch_output(archive: Path) -> None:
    (archive / "day2" / "loop").symlink_to("..")  # a link back up: loops forever if followed blindly
    (archive / "alias").symlink_to("day2")  # a second way to the same folder
    (archive / "._resource.jpg").write_bytes(b"macOS resource fork")
    watched = archive / "bloodcell"  # `bloodcell watch archive` writes here by default
    (watched / "annotated").mkdir(parents=True)
    shutil.copy(SAMPLES[0], watched / "annotated" / "x.jpg")
    (watched / ".bloodcell-watch.json").write_text("{}")
    elsewhere = archive.parent / "elsewhere"  # a link to a folder outside the source is followed
    elsewhere.mkdir()
    shutil.copy(SAMPLES[1], elsewhere / "far.jpg")
    (archive / "day2" / "far").symlink_to(elsewhere)
    found = expand([str(archive)])
    # each file spelled by its own place under the source (links kept: the path a user gave)
    expected = [*(archive / p.name for p in SAMPLES), *(archive / "day2" / n for n in ("again.jpg", "broken.jpg"))]
    assert found.uris == sorted(map(str, [*expected, archive / "day2" / "far" / "far.jpg"]))
    assert found.problems == []
    assert expand([str(archive / "day2")]).uris == [str(archive / "day2" / n) for n in ("again.jpg", "broken.jpg")] + [
        str(archive / "day2" / "far" / "far.jpg")
    ]  # the link back up (loop -> ..) does not take in the parent folder
    # a watch that wrote into the folder it watched: its annotated copies are left out, its images are fields
    shutil.copy(SAMPLES[2], watched / "own.jpg")
    assert expand([str(watched)]).uris == [str(watched / "own.jpg")]


def test_parts_left_by_killed_runs_are_removed_once_stale(tmp_path: Path) -> None:
    """A killed run leaves a hidden .tmp part; the next run removes it when it is an hour old, never
    a fresh one (a concurrent writer's) nor a finished part."""
    from bloodcell.app.archive.rows import schema
    from bloodcell.app.archive.store import ParquetStore

    store = ParquetStore(str(tmp_path / "counts"), schema(("RBC", "WBC", "Platelets")))
    root = tmp_path / "counts"
    stale, fresh = root / ".part-a-00000.parquet.tmp", root / ".part-b-00000.parquet.tmp"
    done = root / "part-a-00001.parquet"
    for path in (stale, fresh, done):
        path.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(done, (old, old))
    assert store.remove_stale_parts() == 1
    assert not stale.exists() and fresh.exists() and done.exists()


def test_ray_actors_get_the_model_and_its_sidecar_by_value(tiny_exports: dict, tmp_path: Path) -> None:
    """A cluster node has none of the driver's files: the actor rebuilds the model from the bytes
    sent through the object store, sidecar (retuned operating points) included, and counts alike."""
    import json

    from bloodcell.app.archive.engines import model_files, worker_from_files
    from bloodcell.app.archive.rows import ImageWorker, PredictorSpec
    from bloodcell.runtime.metadata import sidecar_path

    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "inference_ms"} for r in rows]

    for fmt in ("onnx", "tflite"):
        folder = tmp_path / fmt
        folder.mkdir()
        model = folder / tiny_exports[fmt].name
        shutil.copyfile(tiny_exports[fmt], model)
        meta = json.loads(sidecar_path(tiny_exports[fmt]).read_text())
        meta["conf"] = [0.41, 0.42, 0.43]
        sidecar_path(model).write_text(json.dumps(meta))
        spec = PredictorSpec(str(model), "tiny@test", "run")
        here = ImageWorker(spec).rows([str(p) for p in SAMPLES])
        files = model_files(str(model))
        shutil.rmtree(folder)
        remote = worker_from_files(spec, files)
        assert tuple(remote.conf) == pytest.approx((0.41, 0.42, 0.43)), fmt
        assert not Path(remote.spec.model).exists(), "the node's temporary copy outlives the load"
        assert timeless(remote.rows([str(p) for p in SAMPLES])) == timeless(here), fmt


def test_a_failed_prediction_is_retried_by_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prediction that fails (out of GPU memory, a runtime error) is not a property of the file: it is
    reported and counted as failed, keeps no row, and the next run predicts it."""
    from bloodcell.app.archive.rows import ImageWorker

    out = tmp_path / "out"
    real = ImageWorker._predict

    def failing(self, part):
        if any(Path(g[1]).name == SAMPLES[1].name for g in part):
            raise RuntimeError("CUDA out of memory")
        return real(self, part)

    monkeypatch.setattr(ImageWorker, "_predict", failing)
    first = run_batch([str(p) for p in SAMPLES], str(out), device="cpu", progress=False)
    assert (first.written, first.failed) == (len(SAMPLES) - 1, 1)
    assert SAMPLES[1].name not in {Path(r["path"]).name for r in read_rows(out)}
    monkeypatch.setattr(ImageWorker, "_predict", real)
    second = run_batch([str(p) for p in SAMPLES], str(out), device="cpu", progress=False)
    assert (second.written, second.skipped, second.failed) == (1, len(SAMPLES) - 1, 0)


def test_an_exports_sidecar_is_part_of_what_counted(tiny_exports: dict, tmp_path: Path) -> None:
    """The same file with another sidecar counts at other operating points: a rerun with it is refused."""
    import json

    from bloodcell.errors import ConfigError

    model = tmp_path / "m.onnx"
    shutil.copy(tiny_exports["onnx"], model)
    shutil.copy(f"{tiny_exports['onnx']}.json", f"{model}.json")
    out = tmp_path / "out"
    run_batch([str(SAMPLES[0])], str(out), model=str(model), device="cpu", progress=False)
    meta = json.loads(Path(f"{model}.json").read_text())
    Path(f"{model}.json").write_text(json.dumps({**meta, "conf": [0.9, 0.9, 0.9]}))
    with pytest.raises(ConfigError, match="another model, --conf or --cell-size"):
        run_batch([str(SAMPLES[1])], str(out), model=str(model), device="cpu", progress=False)


def test_an_unreadable_subfolder_is_skipped_with_a_warning(archive: Path, monkeypatch) -> None:
    """A mount's lost+found (root only): not an image that failed, so not a failure every run."""
    from bloodcell.app.archive import sources

    walk = os.walk

    def walk_with_a_locked_folder(top, **kwargs):
        kwargs["onerror"](PermissionError(13, "Permission denied", str(Path(top) / "lost+found")))
        yield from walk(top, **kwargs)

    monkeypatch.setattr(sources.os, "walk", walk_with_a_locked_folder)
    found = expand([str(archive)])
    assert found.problems == [] and len(found.uris) == 5
    assert found.skipped == [f"{archive / 'lost+found'}: cannot read (Permission denied)"]


def test_a_stopped_run_keeps_its_rows_and_writes_its_summary(archive: Path, tmp_path: Path, monkeypatch, capsys):
    """Ctrl-C after the first image: that row is kept, _runs/<id>.csv says the run was interrupted and
    how far it got, and a rerun counts the rest."""
    from bloodcell.app.archive import job

    real = job.make_engine

    class StopsAfterOne:
        def __init__(self, engine) -> None:
            self.engine = engine

        def run(self, uris):
            yield from self.engine.run(uris[:1])
            raise KeyboardInterrupt

    monkeypatch.setattr(job, "make_engine", lambda *a: StopsAfterOne(real(*a)))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch([str(archive)], str(out), device="cpu", progress=False)
    assert len(read_rows(out)) == 1
    [summary] = list(csv.DictReader(next((out / "_runs").glob("*.csv")).open()))
    assert (summary["interrupted"], summary["written"], summary["listed"]) == ("True", "1", "5")
    assert "stopped: 1 image counted" in capsys.readouterr().err
    monkeypatch.setattr(job, "make_engine", real)
    again = run_batch([str(archive)], str(out), device="cpu", progress=False)
    assert (again.skipped, again.written) == (1, 4)


def test_an_archive_reached_through_a_link_is_the_same_archive(archive: Path, tmp_path: Path) -> None:
    """A rerun through a symlinked folder (a mount alias, a linked share) skips what is done; rows keep
    the path the run was given (links not resolved)."""
    out = tmp_path / "out"
    (archive / "day2" / "broken.jpg").unlink()
    (archive / "field 9.jpg").symlink_to(archive / SAMPLES[0].name)  # a second name of one file
    first = run_batch([str(archive)], str(out), device="cpu", progress=False)
    assert first.written == 4  # field 9.jpg is SAMPLES[0] again: listed once, under the first name met
    linked = tmp_path / "linked"
    linked.symlink_to(archive)
    again = run_batch([str(linked)], str(out), device="cpu", progress=False)
    assert (again.written, again.skipped) == (0, 4)
    assert all(r["path"].startswith(str(archive)) for r in read_rows(out))


def test_rows_named_by_an_earlier_bloodcell_are_the_same_models() -> None:
    """Rows name the model by its file, as predict, watch and the report do; an archive begun when rows named
    the architecture (cellnet@sha) goes on with the same model, and refuses another."""
    from types import SimpleNamespace

    from bloodcell.app.archive.job import _written_by
    from bloodcell.errors import ConfigError

    store = SimpleNamespace(written=lambda: ({"a.jpg": {}}, {"cellnet@abc"}))
    assert _written_by(store, "out", "cellnet_bccd.pt@abc", "cellnet@abc") == {"a.jpg": {}}
    with pytest.raises(ConfigError, match=r"holds counts by cellnet@abc, not other\.pt@def"):
        _written_by(store, "out", "other.pt@def", "cellnet@def")


def test_the_summary_says_how_many_counts_are_doubtful(tmp_path: Path) -> None:
    """predict and watch print each image's warnings; batch (archives of thousands) counts them in its summary."""
    from PIL import Image

    gray = tmp_path / "gray.png"
    Image.open(SAMPLES[0]).convert("L").save(gray)
    summary = run_batch([str(gray), str(SAMPLES[0])], str(tmp_path / "out"), device="cpu", progress=False)
    assert summary.warned == 1
    assert str(summary).startswith("2 images counted (1 with warnings: the rows' warnings column), 0 failed")
    warned = {Path(r["path"]).name: bool(r["warnings"]) for r in read_rows(tmp_path / "out")}
    assert warned == {"gray.png": True, SAMPLES[0].name: False}


def test_a_file_name_that_is_not_utf8_is_a_failed_input_naming_the_rename(archive: Path, tmp_path: Path) -> None:
    """The archive's path column (a Parquet string) cannot hold its bytes: said with the fix, not a traceback."""
    folder = tmp_path / "latin"
    folder.mkdir()
    shutil.copy(next(archive.rglob("*.jpg")), folder / "ok.jpg")
    try:
        shutil.copy(folder / "ok.jpg", os.fsencode(folder) + b"/caf\xe9.jpg")
    except OSError as e:
        pytest.skip(f"this file system refuses a non-UTF-8 name ({e})")
    found = expand([str(folder)])
    assert found.uris == [str(folder / "ok.jpg")]
    assert found.problems == [
        f"{folder}/caf\\xe9.jpg: the file name caf\\xe9.jpg is not UTF-8 (a camera or share that writes Latin-1, "
        "say); rename it (e.g. `convmv -f latin1 -t utf8 --notest FILE`)"
    ]
    os.mkdir(os.fsencode(folder) + b"/d\xe9j\xe0")  # a folder so named: the folder is the one to rename
    os.rename(folder / "ok.jpg", os.fsencode(folder) + b"/d\xe9j\xe0/ok.jpg")
    assert [p.split(": the ")[1].split(" is not")[0] for p in expand([str(folder)]).problems] == [
        "file name caf\\xe9.jpg",
        "folder name d\\xe9j\\xe0",
    ]


def test_a_pattern_reaching_a_broken_link_names_it_as_a_folder_does(archive: Path) -> None:
    (archive / "gone.jpg").symlink_to(archive / "nowhere.jpg")
    by_folder, by_pattern = expand([str(archive)]), expand([str(archive / "*.jpg")])
    assert [p for p in by_folder.problems if "gone.jpg" in p] == [p for p in by_pattern.problems if "gone.jpg" in p]
    assert len([p for p in by_pattern.problems if "gone.jpg" in p]) == 1


def test_a_folders_videos_and_heic_are_said_and_names_not_utf8_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    (folder / "day1").mkdir(parents=True)
    shutil.copy(SAMPLES[0], folder / "day1" / "a.jpg")
    (folder / "day1" / "clip.mp4").write_bytes(b"\0" * 64)
    (folder / "phone.heic").write_bytes(b"\0" * 64)
    found = expand([str(folder)])
    assert found.uris == [str(folder / "day1" / "a.jpg")] and found.notes == [
        f"{folder}: 1 video left out: day1/clip.mp4; `bloodcell predict --source {folder / 'day1' / 'clip.mp4'}` "
        "counts one frame by frame",
        f"{folder}: 1 image file of a kind bloodcell does not read (HEIC) left out: phone.heic; save them as JPEG, "
        "PNG or TIFF to count them",
    ]
    latin1 = os.fsdecode(bytes(tmp_path) + b"/d\xe9")  # a folder named by a Latin-1 share: no traceback
    os.mkdir(latin1)
    assert expand([latin1]).problems == [
        f"{tmp_path}/d\\xe9: the folder name d\\xe9 is not UTF-8 (a camera or share that writes Latin-1, say); "
        "rename it (e.g. `convmv -f latin1 -t utf8 --notest FOLDER`)"
    ]
    listing = tmp_path / "list.txt"
    listing.write_bytes(str(folder / "day1" / "a.jpg").encode() + b"\n" + bytes(tmp_path) + b"/caf\xe9.jpg\n")
    found = expand([str(listing)])
    assert found.uris == [str(folder / "day1" / "a.jpg")]
    assert found.problems == [f"{listing}: line 2 is not UTF-8 text (a Latin-1 name?); save the list as UTF-8"]
