"""`bloodcell batch`: list the sources, skip what is written, run an engine, write Parquet parts."""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bloodcell.app.archive.engines import check_engine, make_engine
from bloodcell.app.archive.rows import PredictorSpec, content_hash, schema
from bloodcell.app.archive.sources import expand, file_key, read_bytes
from bloodcell.app.archive.store import ParquetStore
from bloodcell.atomic import check_folder
from bloodcell.errors import BloodcellError, ConfigError, StopSaid, is_interrupt
from bloodcell.runtime.counting import conf_override, parse_conf
from bloodcell.runtime.loader import load_predictor, print_model_notes
from bloodcell.runtime.metadata import counted_by, model_digest
from bloodcell.runtime.scaling import check_cell_size
from bloodcell.runtime.sources import printable
from bloodcell.weights import model_file

#: --out names a folder; these suffixes name a file a user meant instead (a CSV or JSON of counts)
FILE_SUFFIXES = (".csv", ".json", ".txt", ".html", ".xlsx")
PART_SECONDS = 60.0  # a part is written after this long, however few rows it has


@dataclass
class BatchSummary:
    run_id: str
    listed: int = 0  # images the sources named
    skipped: int = 0  # already in the dataset with the same content (a bad file unchanged: in failed)
    written: int = 0  # rows written by this run (bad images included)
    error_rows: int = 0  # of those, the rows of images that could not be decoded (their error, no counts)
    failed: int = 0  # bad images, unreadable files and source problems
    warned: int = 0  # rows written with warnings (doubtful counts: no colour, a tiny image...)
    seconds: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM: the rows written so far are kept
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.totals.items())
        warned = f" ({self.warned} with warnings: the rows' warnings column)" if self.warned else ""
        counted = self.written - self.error_rows
        return (
            f"{counted} image{'' if counted == 1 else 's'} counted{warned}, {self.failed} failed, {self.skipped} "
            f"skipped (already done); {self.written} rows written; {self.images_per_s:.1f} images/s; "
            f"totals: {counts or 'none'}"
        )


def _by_file(done: dict[str, dict[str, str | None]]) -> dict[str, dict[str, str | None]]:
    """``done`` keyed by the file each path names (``file_key``): rows written through a link or alias."""
    keyed: dict[str, dict[str, str | None]] = {}
    for path, hashes in done.items():
        keyed.setdefault(file_key(path), {}).update(hashes)
    return keyed


def _unchanged(keyed: dict[str, dict[str, str | None]], uris: list[str]) -> dict[str, str | None]:
    """URIs already written with their current content, under this spelling or another of the same file
    (``keyed``: ``_by_file``; read and hashed again, in threads: I/O bound), each with its row's error
    (None: counted)."""
    candidates = [u for u in uris if file_key(u) in keyed]

    def same(uri: str) -> str | None:
        try:
            digest = content_hash(read_bytes(uri))
        except OSError:
            return None  # unreadable now: the worker reports it
        return digest if digest in keyed[file_key(uri)] else None

    with ThreadPoolExecutor(8) as pool:
        found = zip(candidates, pool.map(same, candidates), strict=True)
        return {u: keyed[file_key(u)][digest] for u, digest in found if digest is not None}


def _written_by(store: ParquetStore, out: str, model_id: str, earlier_id: str = "") -> dict[str, dict[str, str | None]]:
    """path -> content hashes already in ``out``, all counted by ``model_id`` (or ``earlier_id``, its older
    name): one dataset, one model (skipping images another model counted would mix two models' counts)."""
    import pyarrow as pa

    try:
        done, models = store.written()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ConfigError(f"--out {out}: holds Parquet files that are not this model's counts ({e})") from None
    if None in models or None in done:  # a Parquet file of other columns: read with this schema, they are empty
        raise ConfigError(
            f"--out {out}: holds Parquet files that are not bloodcell batch counts (rows without a path or model); "
            "use another --out"
        )
    others = models - {model_id, earlier_id}
    if others:
        raise ConfigError(
            f"--out {out}: holds counts by {', '.join(sorted(others))}, not {model_id} (another model, --conf "
            "or --cell-size); use another --out"
        )
    return done


def _resolve_device(device: str, model_path: Path) -> str:
    """``auto`` becomes cuda or cpu here, once, so every worker and the Ray scheduler agree on it."""
    if device != "auto":
        return device
    if model_path.suffix.lower() != ".pt":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_batch(
    sources: list[str],
    out: str,
    engine: str = "local",
    address: str | None = None,
    workers: int = 1,
    device: str = "cpu",
    model: str | None = None,
    threads: int | None = None,
    batch: int = 1,
    conf: str | None = None,
    cell_size: float | str | None = "auto",
    part_rows: int = 256,
    progress: bool = True,
) -> BatchSummary:
    """Count cells in every image of ``sources`` into the Parquet dataset ``out`` (resumable).

    ``conf``: --conf text (one operating point or per class; None keeps the model's)."""
    if Path(out.rstrip("/")).suffix.lower() in FILE_SUFFIXES:  # "counts.csv" would become a folder of that name
        raise ConfigError(f"--out {out}: batch writes a Parquet dataset, a folder: name it like counts.parquet")
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    summary = BatchSummary(run_id)
    check_engine(engine, address, device)
    model_path = model_file(model)
    device = _resolve_device(device, model_path)
    probe = load_predictor(model_path, device=device, batch=batch)  # fail fast
    print_model_notes(probe)
    check_cell_size(probe, cell_size)
    class_names = tuple(probe.class_names)
    thresholds = None if conf is None else parse_conf(conf, class_names, probe.conf)
    override = conf_override(thresholds, probe.conf, len(class_names))
    digest = model_digest(model_path)
    # named as predict, watch and the report name it (the file); earlier bloodcells named the architecture:
    # an archive begun so is the same model's and goes on
    model_id = counted_by(model_path.name, digest, override, cell_size)
    earlier_id = counted_by(probe.describe()["name"], digest, override, cell_size)
    del probe
    expanded = expand(sources)
    for note in expanded.notes:  # a folder's videos and HEIC files: not counted, and said so
        print(f"note: {note}", file=sys.stderr)
    for skipped in expanded.skipped:  # a mount's lost+found, say: not images that failed
        print(f"warning: {skipped}, skipped", file=sys.stderr)
    for problem in expanded.problems:
        print(f"error: {problem}", file=sys.stderr)
    summary.failed += len(expanded.problems)
    summary.listed = len(expanded.uris)
    if not expanded.uris:  # nothing to count: no dataset folder made for it (a typo'd source, an empty folder)
        print(
            f"error: no image found in {' '.join(map(printable, sources))}; nothing written to {out}", file=sys.stderr
        )
        summary.failed = max(summary.failed, 1)
        return summary
    if "://" not in out or out.startswith("file://"):  # an unwritable folder: now, not after the first part
        check_folder("--out", out.removeprefix("file://"))
    store = ParquetStore(out, schema(class_names))
    with store.locked():  # a second run on this --out would count every image again
        spec = PredictorSpec(str(model_path), model_id, run_id, device, threads, batch, thresholds, cell_size)
        run = _Run(out, class_names, spec, engine, workers, address, part_rows, progress, earlier_id)
        return _count(store, expanded.uris, summary, run)


@dataclass(frozen=True)
class _Run:
    """What one batch run was asked for, once its model is checked and its sources are listed."""

    out: str
    class_names: tuple[str, ...]
    spec: PredictorSpec
    engine: str
    workers: int
    address: str | None
    part_rows: int
    progress: bool
    earlier_id: str = ""  # the same model as an older bloodcell named it in the rows


def _count(store: ParquetStore, uris: list[str], summary: BatchSummary, run: _Run) -> BatchSummary:
    """The run once the dataset is ours: skip what is written, count the rest in parts, write the summary."""
    out, spec, address = run.out, run.spec, run.address
    model_id, run_id = spec.model_id, spec.run_id
    if stale := store.remove_stale_parts():
        print(f"removed {stale} unfinished part file(s) left by killed runs in {out}", file=sys.stderr)
    keyed = _by_file(_written_by(store, out, model_id, run.earlier_id))
    skip = _unchanged(keyed, uris)
    todo = [u for u in uris if u not in skip]
    summary.skipped = sum(not error for error in skip.values())  # a bad file unchanged counts as failed, below
    if changed := sum(file_key(u) in keyed for u in todo):
        print(
            f"note: {changed} image(s) changed since an earlier run are counted again; their earlier rows stay in "
            f"{out} (history): for current counts take each path's row with the latest run_id",
            file=sys.stderr,
        )
    for error in filter(None, skip.values()):  # a bad file stays bad until it changes: the exit code says so
        print(f"error: {error} (unchanged since an earlier run)", file=sys.stderr)
        summary.failed += 1
    summary.totals = dict.fromkeys(run.class_names, 0)
    if address and any("://" not in u for u in todo):  # the model travels with the job; images do not
        print(
            f"note: --address {address}: local image paths must be readable at the same path on every node "
            "(a shared filesystem); s3:// or gs:// URIs need no copy",
            file=sys.stderr,
        )
    runner = make_engine(run.engine, spec, run.workers, address)
    t0 = time.perf_counter()
    buffer: list[dict] = []
    parts = 0
    flushed = time.monotonic()

    def flush() -> None:
        nonlocal parts, flushed
        if buffer:
            store.write_part(buffer, f"part-{run_id}-{parts:05d}.parquet")
            parts += 1
            buffer.clear()
        flushed = time.monotonic()

    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    stream = runner.run(todo) if todo else iter(())
    processed = 0
    try:
        with tqdm(total=len(todo), desc="batch", unit="img", disable=not run.progress, file=sys.stderr) as bar:
            for rows in stream:
                processed += sum(row["sha256"] is not None for row in rows)  # unreadable ones: tried again later
                for row in rows:
                    if row["error"]:  # through tqdm: a line of its own, not glued to the progress bar
                        tqdm.write(f"error: {row['error']}", file=sys.stderr)
                        summary.failed += 1
                    if row["sha256"] is None:
                        continue  # unreadable, or the prediction failed (out of memory...): a rerun tries again
                    summary.error_rows += bool(row["error"])
                    summary.warned += bool(row.get("warnings"))
                    for name, n in (row.get("counts") or {}).items():
                        summary.totals[name] += n
                    buffer.append(row)
                    summary.written += 1
                    # a kill (a scheduler's stop, out of memory) loses at most a part or a minute of work
                    if len(buffer) >= run.part_rows or time.monotonic() - flushed >= PART_SECONDS:
                        flush()
                bar.update(len(rows))
    except BrokenProcessPool:  # a worker was killed (out of memory, most often): its images get no row
        raise BloodcellError(
            f"a worker process died (killed, or out of memory?); the {summary.written} images finished are "
            f"kept in {out}, and a rerun counts the rest (fewer --workers or --threads need less memory)"
        ) from None
    except BaseException as e:  # Ctrl-C or SIGTERM: the rows finished are written, then how far it got is said
        if not is_interrupt(e):
            raise
        summary.interrupted = True
        getattr(stream, "close", lambda: None)()  # the workers' queued tasks are dropped now, not awaited
        flush()
        _write_summary(store, summary, run, t0)
        rest = "every listed image was done" if processed == len(todo) else "a rerun counts the rest"
        print(f"stopped: {summary}; {rest}", file=sys.stderr)
        raise StopSaid from None
    finally:  # rows already finished are kept, whatever stopped the run
        flush()
    _write_summary(store, summary, run, t0)
    return summary


def _write_summary(store: ParquetStore, summary: BatchSummary, run: _Run, t0: float) -> None:
    """_runs/<run_id>.csv: what this run listed, skipped, wrote and failed, its speed and totals."""
    spec = run.spec
    summary.seconds = time.perf_counter() - t0
    record = {k: v for k, v in asdict(summary).items() if k != "totals"}
    record.update(
        engine=run.engine,
        workers=run.workers,
        device=spec.device,
        model=spec.model_id,
        images_per_s=round(summary.images_per_s, 2),
    )
    record.update({f"total_{k}": v for k, v in summary.totals.items()})
    store.write_summary(spec.run_id, record)
