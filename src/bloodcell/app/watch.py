"""`bloodcell watch`: count cells in every image a microscope camera drops into a folder, once each.

How a file is judged complete: its (size, mtime_ns) has not changed for ``settle`` seconds, then it
must decode. A file still being written is never decoded; one that is stable but does not decode is
recorded once as failed (reported on stderr, and a CSV row with its error and no counts, which
``bloodcell report`` lists), not retried while it stays the same. A copy that pauses longer than
``settle`` looks stable but ends early: a truncated file younger than TRUNCATED_WAIT_S (by mtime) is
waited for, and fails only if it is still truncated and unchanged at that age.

What is remembered: ``<out>/.bloodcell-watch.json`` maps each handled name to the (size, mtime_ns) it
had, its status (``ok`` / ``failed``) and how many CSV rows it has given; it is rewritten atomically
after every file, after the CSV row is on disk. On start the folder is scanned before watching, so
files that arrived while the watcher was down are picked up, and nothing already in the state is
processed again. A file whose size or mtime later changes (replaced, or a failed file rewritten) is
a new version: it is processed again and gets a new CSV row (rows are never rewritten in place). A
counted file renamed (its old name gone or holding another file; same size, mtime and sha256) keeps its one
row, under the old name; the new name's state entry says ``renamed_from``. Files counted before the state
recorded sha256 are counted again when renamed.
If a crash came between the CSV row and the state write, the start-up check adopts that row, so the
file is not counted twice. The CSV is read back with the csv module only (never ``str.splitlines``,
which also splits at U+2028 and other characters a file name may hold).

One writer per output folder: a Watcher holds an exclusive lock on ``<out>/.bloodcell-watch.lock``
(``flock``, released by ``close()``, at exit, or if the process dies) from before it reads the state
until it is closed, so the state file it keeps is the one record of what was done; a second watcher on
the same folder fails at once instead of counting every image again.

Only the top level of the folder is watched; names starting with "." (temporary files many cameras
and copy tools write first) and suffixes not in IMAGE_SUFFIXES are ignored. Watchdog events only
wake the loop; a periodic scan also runs, so folders where events are missed (network shares) work.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.app.folder_lock import lock_folder
from bloodcell.app.sinks import counts_header, counts_row, format_counts, from_spreadsheet_text, save_annotated
from bloodcell.atomic import write_text
from bloodcell.digest import sha256_of
from bloodcell.errors import ConfigError, ImageError, TruncatedImageError, UnreadableImageError, describe_os_error
from bloodcell.runtime.counting import Conf, conf_override, resolve_conf
from bloodcell.runtime.images import IMAGE_SUFFIXES, load_image
from bloodcell.runtime.metadata import counted_by, model_digest
from bloodcell.runtime.predict import ImageResult, api_cell_size, predict_image
from bloodcell.runtime.sources import left_out_notes, printable, shown, unusable_reason

if TYPE_CHECKING:
    from bloodcell.runtime.predict import Predictor

STATE_NAME = ".bloodcell-watch.json"
RETRY_UNREADABLE_S = 60.0
TRUNCATED_WAIT_S = 30.0  # how long a truncated file may still be a copy in progress (by its mtime)
LOCK_NAME = ".bloodcell-watch.lock"
ANNOTATED_DIR = "annotated"  # the annotated copies, in the output folder
# Output errors that belong to one image's name (too long for the file system, taken by a folder):
# that image fails alone; any other output error stops the watch.
FILE_NAME_ERRORS = (errno.ENAMETOOLONG, errno.EISDIR, errno.EINVAL)
CSV_NAME = "counts.csv"
LATER_COLUMNS = ("warnings", "error")  # added to counts.csv later: a CSV begun without them goes on without
STATE_VERSION = 1


class Watcher:
    """Scan ``folder`` and process each new, complete image once; the predictor is given, never built here."""

    def __init__(
        self,
        predictor: Predictor,
        folder: str | Path,
        out: str | Path,
        conf: Conf | Mapping[str, float] | str | None = None,
        settle: float = 1.0,
        scan_interval: float = 2.0,
        log: TextIO | None = None,
        cell_size: float | str | None = "auto",
        model: str | None = None,
    ) -> None:
        """``conf`` as ``bloodcell.predict`` takes it (default: the model's operating points). ``model``: what
        counts (``runtime.metadata.counted_by``; default: the predictor's file with ``conf`` and ``cell_size``), kept
        in the state: a later watch into the same ``out`` with another model, --conf or --cell-size is refused, not
        mixed into one counts.csv."""
        self.folder = Path(folder)
        self.out = Path(out)
        if not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: not a folder")
        if settle < 0:
            raise ConfigError(f"--settle {settle:g}: must be >= 0 seconds")
        if scan_interval <= 0:
            raise ConfigError(f"scan interval {scan_interval:g}: must be positive")
        cell_size = api_cell_size(predictor, cell_size)  # parsed ("none", "75") and checked: said before any image
        self.predictor = predictor
        self.class_names = tuple(predictor.class_names)
        self.conf = resolve_conf(conf, self.class_names, predictor.conf)
        self.cell_size = cell_size
        if model is None and (path := predictor.path) is not None:
            override = conf_override(self.conf, predictor.conf, len(self.class_names))
            model = counted_by(Path(path).name, model_digest(Path(path)), override, cell_size)
        self.model = model
        self.settle = settle
        self.scan_interval = scan_interval
        self.log = log
        self.annotator = BoxAnnotator(self.class_names)
        self.csv_path = self.out / CSV_NAME
        self.state_path = self.out / STATE_NAME
        self.annotated_dir = self.out / ANNOTATED_DIR
        self.processed = 0
        self._failed: set[str] = set()  # files whose latest version failed in this run
        self._noted: set[str] = set()  # names seen in the folder: a video or HEIC among them is said once
        self._columns = len(counts_header(self.class_names))  # fewer in a CSV an older bloodcell began
        # files that could not be read (permissions): version and when, retried after RETRY_UNREADABLE_S
        self._unreadable: dict[str, tuple[tuple[int, int], float]] = {}
        self._pending: dict[str, tuple[tuple[int, int], float]] = {}  # name -> (signature, stable since)
        # young truncated files (maybe copies): their version, and when it was first found truncated
        self._truncated: dict[str, tuple[tuple[int, int], float]] = {}
        self._wake = threading.Event()
        self._gone = False  # the watched folder vanished (said once)
        self._said_new_csv = False  # counts.csv moved away while files were counted (said once)
        self.out.mkdir(parents=True, exist_ok=True)
        # before the state is read: it is ours until close()
        self._lock = lock_folder(self.out / LOCK_NAME, "bloodcell watch")
        try:
            self.state = self._load_state()
            self._check_csv()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the output folder (another watcher may then take it over); the Watcher cannot process after."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # closing the file releases the flock

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state and CSV ---------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict]:
        if not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            files = data["files"]
            if data.get("version") != STATE_VERSION or not isinstance(files, dict):
                raise ValueError(f"unknown layout (version {data.get('version')!r})")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{self.state_path}: watch state unreadable ({e}); move it away to start over "
                "(every image in the folder is then processed again)"
            ) from None
        earlier = data.get("model")  # (a state from before watch recorded it: taken as this model's)
        if files and self.model and isinstance(earlier, str) and earlier != self.model:
            raise ConfigError(
                f"{self.out}: holds counts by {earlier}, not {self.model} (another model, --conf or --cell-size); "
                "use another --out, so one counts.csv holds one kind of count"
            )
        return files

    def _save_state(self) -> None:
        named = {"model": self.model} if self.model else {}
        state = {"version": STATE_VERSION, **named, "files": self.state}
        write_text(self.state_path, json.dumps(state, indent=1) + "\n")

    def _check_csv(self) -> None:
        """Refuse a CSV of another class list; drop a torn last row; adopt rows the state missed (crash).

        Read with the csv module (newline=""): rows end only at a newline outside quotes, whatever the file
        names hold (U+2028, form feeds, ... are line ends to ``str.splitlines``: a row split in two would not
        be adopted and its file would be counted twice).
        """
        header = counts_header(self.class_names)
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return
        # surrogateescape: a row torn inside a multi-byte character still reads (and is then dropped)
        with open(self.csv_path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            lines = f.readlines()
        reader = csv.reader(lines, strict=True)
        rows: list[list[str]] = []
        whole = 0  # lines holding complete rows
        try:
            for row in reader:
                if not lines[reader.line_num - 1].endswith(("\n", "\r")):
                    break  # the last row, torn by a crash: its file is not in the state, so it is redone
                rows.append(row)
                whole = reader.line_num
        except csv.Error as e:
            if reader.line_num < len(lines):
                where = f"{self.csv_path}: line {reader.line_num}"
                raise ConfigError(f"{where}: not a counts CSV ({e}); use another --out") from None
        if rows and rows[0]:  # saved by a spreadsheet ("CSV UTF-8"): its byte-order mark is no column name's
            rows[0][0] = rows[0][0].removeprefix("\ufeff")
        if whole < len(lines):
            with open(self.csv_path, "r+b") as f:
                f.truncate(sum(len(line.encode("utf-8", "surrogateescape")) for line in lines[:whole]))
        if rows and rows[0] == header[: -len(LATER_COLUMNS)]:
            self._columns = len(rows[0])  # a CSV begun by an older bloodcell: go on in its columns
        elif rows and rows[0] != header:
            raise ConfigError(
                f"{self.csv_path}: columns {','.join(rows[0])} differ from this model's {','.join(header)}; "
                "use another --out"
            )
        adopted = False
        # names and errors were written as spreadsheet text (a leading = + - @ escaped, app.sinks)
        rows[1:] = [[from_spreadsheet_text(r[0]), *r[1:]] if r else r for r in rows[1:]]
        last = {r[0]: r for r in rows[1:] if r}
        escaped: dict[str, str] | None = None  # a row's name -> the file's, for names that are not UTF-8
        for label, n in Counter(r[0] for r in rows[1:] if r).items():
            if "\\" in label and escaped is None:  # rows hold such names with their bytes escaped (printable)
                escaped = {printable(e): e for e in os.listdir(self.folder) if printable(e) != e}
            name = (escaped or {}).get(label, label)
            entry = self.state.get(name)
            if n > (entry or {}).get("rows", 0):
                sig = self._signature(self.folder / name)
                if sig is not None:
                    error = from_spreadsheet_text(last[label][-1]) if len(rows[0]) == len(header) else ""
                    status = {"status": "failed", "error": error} if error else {"status": "ok"}
                    content = {} if error else {"sha256": _digest(self.folder / name)}  # a later rename is known
                    self.state[name] = {"size": sig[0], "mtime_ns": sig[1], **status, "rows": n, **content}
                    adopted = True
        if adopted:
            self._save_state()

    def _check_out(self) -> None:
        """Stop when the output folder was removed or emptied while watching (its lock is gone with it): going
        on would make a new counts.csv missing every row before it, while the state says those files are done."""
        if not (self.out / LOCK_NAME).is_file():
            raise ConfigError(
                f"{self.out}: removed or emptied while watching (its lock file is gone), with the rows of the files "
                "counted so far; stopped: watch again to count the folder anew"
            )

    def _append_row(self, result: ImageResult) -> None:
        size = self.csv_path.stat().st_size if self.csv_path.exists() else 0
        counted = 0 if size or self._said_new_csv else sum(1 for entry in self.state.values() if entry.get("rows"))
        if counted:  # moved away (to keep it): a new one starts here
            self._said_new_csv = True
            print(
                f"note: {self.csv_path} not found: a new one begins with {shown(result.label)} (the rows of the "
                f"{counted} files counted before are in the one moved away, and are not counted again)",
                file=sys.stderr,
            )
        try:
            self._write_row(result, new=size == 0)
        except BaseException:
            with contextlib.suppress(FileNotFoundError), open(self.csv_path, "r+b") as f:
                f.truncate(size)  # no torn row for the next one to continue
            raise

    def _write_row(self, result: ImageResult, new: bool) -> None:
        with open(self.csv_path, "a", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:  # a fresh file (first, or the old one removed): the full columns from here on
                writer.writerow(counts_header(self.class_names))
                self._columns = len(counts_header(self.class_names))
            row = counts_row(result, self.class_names)[: self._columns]
            # csv quotes "\n" but not a lone "\r", which would end the row on reading: quote such a (rare) row
            quote = any("\r" in str(v) for v in row)
            (csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL) if quote else writer).writerow(row)
            f.flush()
            os.fsync(f.fileno())

    # -- scanning ----------------------------------------------------------------------------------------

    @staticmethod
    def _signature(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def _candidates(self) -> list[Path]:
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except FileNotFoundError:
            if not self._gone:  # deleted, or a share unmounted: said once, not silently idle
                print(f"warning: {self.folder} is gone; waiting for it to come back", file=sys.stderr, flush=True)
            self._gone = True
            return []
        if self._gone:
            print(f"note: {self.folder} is back; watching it again", file=sys.stderr, flush=True)
            self._gone = False
        images = [e for e in entries if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
        others = [e.name for e in entries if not e.name.startswith(".") and e.name not in self._noted]
        for note in left_out_notes(str(self.folder), others):  # a video or an iPhone's HEIC: said once each
            print(f"note: {shown(note)}", file=sys.stderr, flush=True)
        self._noted.update(others)
        for e in images:  # a link to nothing, a pipe named x.jpg: said once, a failed file (never silently left out)
            if not e.is_file() and not e.is_dir() and e.name not in self._failed:
                print(f"error: {shown(e.name)}: {unusable_reason(Path(e.path))}", file=sys.stderr, flush=True)
                self._failed.add(e.name)
        return [Path(e.path) for e in images if e.is_file()]

    def _waiting_to_retry(self, name: str, sig: tuple[int, int], now: float) -> bool:
        known = self._unreadable.get(name)
        return known is not None and known[0] == sig and now - known[1] < RETRY_UNREADABLE_S

    def _is_done(self, name: str, sig: tuple[int, int]) -> bool:
        entry = self.state.get(name)
        return entry is not None and (entry["size"], entry["mtime_ns"]) == sig

    @property
    def failed(self) -> int:
        """Files that failed in this run and were not then rewritten into a good image."""
        return len(self._failed)

    def failed_earlier(self) -> list[str]:
        """Files that failed in an earlier run and are still there unchanged (not retried, so not in ``failed``)."""
        failed = [n for n, e in sorted(self.state.items()) if e.get("status") == "failed" and n not in self._failed]
        return [n for n in failed if (sig := self._signature(self.folder / n)) is not None and self._is_done(n, sig)]

    def poll_once(self) -> list[ImageResult]:
        """One scan: process every new file that has settled; returns what was processed (failures have .error)."""
        if self._lock is None:
            raise RuntimeError("this Watcher is closed: its output folder may have another writer now")
        now = time.monotonic()
        seen, ready = set(), []
        for path in self._candidates():
            sig = self._signature(path)
            if sig is None or self._is_done(path.name, sig) or self._waiting_to_retry(path.name, sig, now):
                continue
            seen.add(path.name)
            truncated = self._truncated.get(path.name)
            if truncated is not None and truncated[0] == sig and self._young(path.name, sig):
                continue  # the rest of a paused copy may come yet
            known = self._pending.get(path.name)
            if known is None or known[0] != sig:
                # First sight of this version: an mtime already older than `settle` counts as settled time
                # (files that arrived while we were down need no extra wait); a future mtime counts as none.
                age = max(0.0, time.time() - sig[1] / 1e9)
                known = (sig, now - age)
                self._pending[path.name] = known
            if now - known[1] >= self.settle:
                ready.append((path, sig))
        for name in set(self._pending) - seen:  # deleted, or handled
            del self._pending[name]
        for name in set(self._truncated) - seen:  # deleted
            del self._truncated[name]
        results = []
        for path, sig in ready:
            self._pending.pop(path.name, None)
            result = self._process(path, sig)
            if result is not None:  # done with this name (whole now, or failed for good)
                self._truncated.pop(path.name, None)
                results.append(result)
        return results

    def _process(self, path: Path, sig: tuple[int, int]) -> ImageResult | None:
        """The file's result (failures have .error); None for a truncated file young enough to be a copy
        still in progress (waited for, no row) and for one that changed since ``sig`` (it settles again)."""
        self._check_out()
        if (renamed := self._renamed_from(path, sig)) is not None:  # its row stands: a second would count it twice
            counted_as = self.state[renamed].get("renamed_from", renamed)  # the name its row has, through renames
            # the old name's entry stays (its rows are in the CSV under it); this name has none of its own
            self.state[path.name] = {**self.state[renamed], "rows": 0, "renamed_from": counted_as}
            self._save_state()
            note = f"same size, time and content as {renamed}, now gone: renamed, counted already as {counted_as}"
            print(f"note: {shown(path.name)}: {shown(note)}", file=sys.stderr)
            return None
        entry = {"size": sig[0], "mtime_ns": sig[1], "rows": self.state.get(path.name, {}).get("rows", 0)}
        try:
            try:
                image = load_image(path)
            except TruncatedImageError:
                known = self._truncated.get(path.name)
                if known is None or known[0] != sig:  # this version found truncated for the first time
                    self._truncated[path.name] = (sig, time.monotonic())
                if not self._young(path.name, sig):
                    del self._truncated[path.name]
                    raise
                if known is None:
                    wait = f"waiting up to {TRUNCATED_WAIT_S:g} s after its last change for the rest of it"
                    print(f"note: {shown(path.name)} ends early (still being copied?); {wait}", file=sys.stderr)
                return None
            if self._changed_since(path, sig):
                return None
            entry["sha256"] = _digest(path)  # what tells a renamed file from a new one of the same size and time
            result = predict_image(self.predictor, image, path, self.conf, cell_size=self.cell_size)
            save_annotated(result, self.annotator, self.annotated_dir)
            result.image = None
            self._append_row(result)
        except UnreadableImageError as e:  # e.g. permissions: not the file's fault, so not recorded as failed
            self._failed.add(path.name)
            self._unreadable[path.name] = (sig, time.monotonic())
            error = _by_name(str(e), path)
            print(
                f"error: {shown(error)} (tried again in {RETRY_UNREADABLE_S:g} s, or at the next start)",
                file=sys.stderr,
            )
            return ImageResult(path, conf=self.conf, class_names=self.class_names, error=error)
        except (ImageError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in FILE_NAME_ERRORS:
                raise  # a full disk, a lost --out: the environment's fault; a restart retries this file
            if isinstance(e, ImageError) and self._changed_since(path, sig):
                return None  # the bytes it failed on were mid-write: the finished file is judged, not these
            # this file failed for good while it stays the same (unreadable, or a name no output can take)
            error = _by_name(str(e), path) if isinstance(e, ImageError) else describe_os_error(e)
            self._failed.add(path.name)
            print(f"error: {shown(error)} (tried again if the file changes)", file=sys.stderr)
            failure = ImageResult(path, conf=self.conf, class_names=self.class_names, error=error)
            if self._columns == len(counts_header(self.class_names)):  # a row that names it (report lists it)
                self._append_row(failure)
                entry["rows"] += 1
            self.state[path.name] = {**entry, "status": "failed", "error": error}
            self._save_state()
            return failure
        self.state[path.name] = {**entry, "status": "ok", "rows": entry["rows"] + 1}
        self._failed.discard(path.name)  # a camera that paused mid-file: the finished file counts, not the pause
        self._unreadable.pop(path.name, None)
        self._save_state()
        self.processed += 1
        if self.log is not None:
            line = f"{shown(result.label)}: {format_counts(result)} ({result.timing_ms['inference']:.0f} ms)"
            print(line, file=self.log, flush=True)
        for warning in result.warnings:  # as predict says them: a doubtful count must not pass unnoticed
            print(f"warning: {shown(result.label)}: {warning}", file=sys.stderr, flush=True)
        return result

    def _young(self, name: str, sig: tuple[int, int]) -> bool:
        """Whether a truncated file may still be a copy in progress: last changed (by its mtime) and first
        found truncated (by this clock: a camera's clock may run ahead) less than TRUNCATED_WAIT_S ago."""
        return _age_s(sig) < TRUNCATED_WAIT_S and time.monotonic() - self._truncated[name][1] < TRUNCATED_WAIT_S

    def _changed_since(self, path: Path, sig: tuple[int, int]) -> bool:
        """Whether ``path`` was written to (or removed) since it was judged settled at ``sig``, e.g. while
        files ahead of it took seconds: what was read may be another version than the state would record
        (counted again as new), so it settles again from now; a removed file is said, not counted."""
        now = self._signature(path)
        if now == sig:
            return False
        if now is None:
            print(f"note: {shown(path.name)} was removed while it was read; not counted", file=sys.stderr)
        else:
            self._pending[path.name] = (now, time.monotonic())
        return True

    def _renamed_from(self, path: Path, sig: tuple[int, int]) -> str | None:
        """The counted file that ``path`` is under a new name (a technician labelling captures): a counted
        version (ok, not failed: a failed file renamed is tried again) of the same size, mtime and content,
        no longer under its name (gone, or replaced by another file: cameras reuse names)."""
        digest = None
        for name, entry in self.state.items():
            if name == path.name or entry.get("status") != "ok" or not entry.get("sha256"):
                continue
            if (entry["size"], entry["mtime_ns"]) != sig or self._signature(self.folder / name) == sig:
                continue
            digest = digest or _digest(path)
            if digest == entry["sha256"]:
                return name
        return None

    def not_yet_counted(self) -> list[str]:
        """Images in the folder now that no run has finished: settling, ending early, or arrived since the
        last scan (a stop leaves them to the next run, which counts them)."""
        return [p.name for p in self._candidates() if (sig := self._signature(p)) and not self._is_done(p.name, sig)]

    @property
    def pending(self) -> int:
        """Files seen but not yet settled, or ending early while young enough to be copies in progress."""
        return len(self._pending) + len(self._truncated)

    # -- loops -------------------------------------------------------------------------------------------

    def drain(self, stop_event: threading.Event | None = None) -> list[ImageResult]:
        """`--once`: process what is in the folder now, waiting for files still being written to settle."""
        results = self.poll_once()
        while self.pending and not (stop_event is not None and stop_event.is_set()):
            time.sleep(min(0.1, max(self.settle / 4, 0.01)))
            results += self.poll_once()
        return results

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop_event: threading.Event) -> None:
        """Catch up on the folder, then watch it until ``stop_event`` is set."""
        observer = _start_observer(self.folder, self.wake)
        try:
            while not stop_event.is_set():
                self._wake.clear()
                self.poll_once()
                # Wake on an event, at the next scan, or sooner while a file is settling; stay responsive to stop.
                timeout = self.scan_interval if not self.pending else max(min(self.settle / 4, 0.25), 0.01)
                deadline = time.monotonic() + timeout
                while not stop_event.is_set() and not self._wake.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(min(left, 0.2))
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)


def _digest(path: Path) -> str | None:
    """The file's sha256, None if it cannot be read now (gone, or locked by the camera's writer)."""
    try:
        return sha256_of(path)
    except OSError:
        return None


def _by_name(message: str, path: Path) -> str:
    """An image error as rows name the image: its file name, not the path it was opened by (which depends
    on how the folder was given: ``w8/d.jpg`` or ``/data/w8/d.jpg``)."""
    opened = f"{path}: "
    return f"{path.name}: {message.removeprefix(opened)}" if message.startswith(opened) else message


def _age_s(sig: tuple[int, int]) -> float:
    """Seconds since the version ``sig`` (size, mtime_ns) was last written (0 for a future mtime)."""
    return max(0.0, time.time() - sig[1] / 1e9)


def _start_observer(folder: Path, callback):
    """A watchdog observer calling ``callback`` on any event in ``folder``; None (polling only) if it cannot start
    or watchdog is not installed (the lite install: the periodic scan alone)."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        print(
            "note: watchdog is not installed, so new files are found by a scan every few seconds "
            "(pip install 'bloodcell[serve]' for folder events)",
            file=sys.stderr,
        )
        return None

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            callback()

    observer = Observer()
    try:
        observer.schedule(_Wake(), str(folder), recursive=False)
        observer.start()
    except OSError as e:  # e.g. the inotify watch limit: the periodic scan still works
        print(f"warning: folder events unavailable ({e}); scanning every few seconds instead", file=sys.stderr)
        return None
    return observer
