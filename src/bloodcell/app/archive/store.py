"""The output: a Parquet dataset written in parts, each part whole or absent.

A part is written under a dot-name (which readers skip) and then renamed, so a killed job leaves
only complete parts (and a hidden ``.tmp`` that the next run removes once it is an hour old: a part
takes seconds to write, so an older one has no writer left); a rerun reads the (path, sha256) pairs
already written and skips them.
One dataset holds one model's counts: a run with another model is refused (see ``written``)."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from bloodcell.app.archive.sources import filesystem
from bloodcell.errors import first_of

LOCK_NAME = ".bloodcell-batch.lock"  # a dot-name: Parquet readers skip it
RUNS_DIR = "_runs"  # per-run summary CSVs; the underscore keeps Parquet readers away
STALE_PART_S = 3600.0


def _refuse_other_files(folder: Path, out: str) -> None:
    """A dataset folder holds parts, their hidden temporaries, _runs/ and the lock; anything else means
    --out names another folder (the images', say), where parts would be written among its files."""
    other = sorted(
        p.name for p in folder.iterdir() if not (p.name.endswith(".parquet") or p.name.startswith((".", "_")))
    )
    if other:
        from bloodcell.errors import ConfigError

        shown = first_of(other)
        raise ConfigError(
            f"--out {out}: holds other files ({shown}); give a new or empty folder, or an earlier batch's dataset"
        )


class ParquetStore:
    def __init__(self, out: str, schema) -> None:
        import pyarrow.fs as pafs

        self.fs, self.root = filesystem(out)
        self.schema = schema
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            from bloodcell.errors import ConfigError

            raise ConfigError(f"--out {out}: is a file; expected a folder for the Parquet dataset")
        if info.type == pafs.FileType.Directory and isinstance(self.fs, pafs.LocalFileSystem):
            _refuse_other_files(Path(self.root), out)
        self.fs.create_dir(self.root, recursive=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This dataset for one run at a time (a local folder: an flock; a bucket has none, and the
        README says to run one job per --out there)."""
        import pyarrow.fs as pafs

        if not isinstance(self.fs, pafs.LocalFileSystem):
            yield
            return
        from bloodcell.app.folder_lock import lock_folder

        lock = lock_folder(Path(self._path(LOCK_NAME)), "bloodcell batch")
        try:
            yield
        finally:
            lock.close()

    def _path(self, name: str) -> str:
        return str(PurePosixPath(self.root) / name)

    def written(self) -> tuple[dict[str, dict[str, str | None]], set[str]]:
        """What the dataset holds, in one read: path -> {content hash: its row's error (None: counted)},
        and the model ids."""
        import pyarrow.dataset as pads

        dataset = pads.dataset(
            self.root, schema=self.schema, format="parquet", filesystem=self.fs
        )  # skips '.' and '_' names
        table = dataset.to_table(columns=["path", "sha256", "model", "error"])
        done: dict[str, dict[str, str | None]] = {}
        columns = (table.column(c).to_pylist() for c in ("path", "sha256", "error"))
        for path, digest, error in zip(*columns, strict=True):
            done.setdefault(path, {})[digest] = error
        return done, set(table.column("model").to_pylist())

    def remove_stale_parts(self, max_age_s: float = STALE_PART_S) -> int:
        """Delete the hidden part files that killed jobs left behind, older than ``max_age_s``; how many."""
        import datetime as dt

        import pyarrow.fs as pafs

        now = dt.datetime.now(dt.timezone.utc)
        removed = 0
        for entry in self.fs.get_file_info(pafs.FileSelector(self.root)):
            name = entry.base_name
            hidden_part = name.startswith(".part-") and name.endswith(".tmp")
            if entry.type != pafs.FileType.File or not hidden_part or entry.mtime is None:
                continue
            mtime = entry.mtime if entry.mtime.tzinfo else entry.mtime.replace(tzinfo=dt.timezone.utc)
            if (now - mtime).total_seconds() > max_age_s:
                self.fs.delete_file(entry.path)
                removed += 1
        return removed

    def write_part(self, rows: list[dict], name: str) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=self.schema)
        final, tmp = self._path(name), self._path(f".{name}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            pq.write_table(table, f, compression="zstd")
        self.fs.move(tmp, final)
        return final

    def write_summary(self, run_id: str, row: dict) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
        self.fs.create_dir(self._path(RUNS_DIR), recursive=True)
        final, tmp = self._path(f"{RUNS_DIR}/{run_id}.csv"), self._path(f"{RUNS_DIR}/.{run_id}.csv.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue().encode())
        self.fs.move(tmp, final)
        return final
