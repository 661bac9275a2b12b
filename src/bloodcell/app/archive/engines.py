"""Where the model runs: in this process, a local process pool, or a Ray cluster's actor pool.

Every engine turns a list of URIs into row lists as they complete (any order); the job writes them."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from bloodcell.app.archive.rows import ImageWorker, PredictorSpec
from bloodcell.errors import ConfigError
from bloodcell.runtime.timing import available_cores
from bloodcell.weights import default_model

ENGINES = ("local", "ray")


class Engine(Protocol):
    def run(self, uris: list[str]) -> Iterator[list[dict]]: ...


def _task_size(spec: PredictorSpec) -> int:
    return max(8, spec.batch)  # enough images per task that scheduling costs nothing


_worker: ImageWorker | None = None


def _init_process(spec: PredictorSpec) -> None:
    global _worker
    # Ctrl-C reaches the whole process group and a scheduler may signal it too: the main process stops
    # the run (writing what is done) and ends the workers; they do not die on their own with a traceback.
    # (Spawned with both signals ignored already: see _ignoring_stops.) Nor do they outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    _worker = ImageWorker(spec)


def _exit_with(parent: int) -> None:
    """End this worker once its parent is gone (killed outright): nothing would ever give it work again."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


@contextlib.contextmanager
def _ignoring_stops() -> Iterator[None]:
    """SIGINT and SIGTERM ignored while worker processes are spawned: an ignored signal stays ignored in
    the new process from its first instruction, so a Ctrl-C during its start-up prints no traceback.
    (Main thread only, where Python handles signals; a stop meanwhile is lost for those milliseconds.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _process_rows(uris: list[str]) -> list[dict]:
    assert _worker is not None, "worker process not initialised"
    return _worker.rows(uris)


class LocalEngine:
    """``workers`` processes, each with its own model and ``threads`` threads (default: the cores
    shared out); one worker runs in this process. Spawned, not forked: torch's thread pools do not
    survive a fork."""

    def __init__(self, spec: PredictorSpec, workers: int = 1) -> None:
        self.workers = workers
        threads = spec.threads or max(1, available_cores() // workers)
        self.spec = replace(spec, threads=threads)

    def run(self, uris: list[str]) -> Iterator[list[dict]]:
        size = _task_size(self.spec)
        tasks = [uris[i : i + size] for i in range(0, len(uris), size)]
        if self.workers == 1:
            worker = ImageWorker(self.spec)
            for task in tasks:
                yield worker.rows(task)
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_process, initargs=(self.spec,))
        try:
            pending: set[Future] = set()
            queue = iter(tasks)
            for task in queue:  # keep every worker busy with one task queued behind it, no more
                # the first submit spawns every worker (spawn context)
                with _ignoring_stops() if not pending else contextlib.nullcontext():
                    pending.add(pool.submit(_process_rows, task))
                if len(pending) >= 2 * self.workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield fut.result()
            for fut in pending:
                yield fut.result()
        except BaseException:  # stopped (Ctrl-C, SIGTERM, closed early): the work in flight is dropped anyway,
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.kill()  # so the workers end now rather than finish it (they ignore SIGTERM)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


def model_files(model: str) -> dict[str, bytes]:
    """The model file and its sidecar (an export's retuned operating points), by name: what a worker
    on another node needs, where the driver's paths may not exist."""
    from bloodcell.runtime.metadata import sidecar_path

    path = Path(model)
    files = {path.name: path.read_bytes()}
    if (sidecar := sidecar_path(path)).is_file():
        files[path.name + ".json"] = sidecar.read_bytes()  # the name the copy's own sidecar_path looks for
    return files


def worker_from_files(spec: PredictorSpec, files: dict[str, bytes]) -> ImageWorker:
    """An ImageWorker whose model is ``model_files``' output, written to a temporary folder of this node
    for the load only (runtimes read or map the file when they open it; POSIX keeps a mapped file)."""
    with tempfile.TemporaryDirectory(prefix="bloodcell-model-", ignore_cleanup_errors=True) as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return ImageWorker(replace(spec, model=str(Path(tmp) / next(iter(files)))))


class _RayWorker:
    """A Ray Data actor: one model per actor, for the actor's lifetime. The model arrives through the
    object store, so actors on other nodes need no copy of the driver's files."""

    def __init__(self, spec: PredictorSpec, files: list) -> None:
        import ray

        self.worker = worker_from_files(spec, ray.get(files[0]))
        import pyarrow as pa

        from bloodcell.app.archive.rows import schema

        self.pa, self.schema = pa, schema(tuple(self.worker.predictor.class_names))

    def __call__(self, batch: dict) -> object:
        rows = self.worker.rows([str(u) for u in batch["uri"]])
        return self.pa.Table.from_pylist(rows, schema=self.schema)


class RayEngine:
    """Ray Data: an actor pool of ``workers`` actors (1 CPU each, or 1 GPU each with a GPU device)
    reading and predicting in parallel; joins ``address`` or starts a local Ray with ``workers`` CPUs."""

    def __init__(self, spec: PredictorSpec, workers: int = 1, address: str | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--engine ray needs Ray: pip install 'bloodcell[cluster]'") from None
        self.gpu = spec.device.startswith("cuda")  # "auto" was resolved by the job
        # Each actor sees only the GPU Ray gave it, as cuda (device 0).
        device = "cuda" if self.gpu else spec.device
        self.spec = replace(spec, threads=spec.threads or 1, device=device)
        self.workers, self.address = workers, address

    def _init_ray(self, ray) -> None:
        if self.address:
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        else:
            cpus = self.workers * (1 if self.gpu else self.spec.threads)  # every actor fits, none waits forever
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    def run(self, uris: list[str]) -> Iterator[list[dict]]:
        import ray

        if not ray.is_initialized():
            sigterm = signal.getsignal(signal.SIGTERM)  # ray.init installs its own (sys.exit): keep the CLI's,
            try:  # so a scheduler's stop still writes the finished rows and the run record
                self._init_ray(ray)
            finally:
                if sigterm is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, sigterm)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the job shows one bar of its own
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices would break the bar
        # Small inputs are cut finer so that every actor gets work.
        size = max(1, min(_task_size(self.spec), -(-len(uris) // self.workers)))
        items = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=-(-len(uris) // size))
        model = self.spec.model or str(default_model()[0])
        files = ray.put(model_files(model))  # once for every actor, on whatever node
        rows = items.map_batches(
            _RayWorker,
            # a nested reference: a top-level one in an actor's arguments makes Ray warn about actor restarts
            fn_constructor_kwargs={"spec": self.spec, "files": [files]},
            batch_size=size,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=0 if self.gpu else self.spec.threads,
            num_gpus=1 if self.gpu else 0,
            batch_format="numpy",
        )
        for table in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield table.to_pylist()


def check_engine(name: str, address: str | None, device: str) -> None:
    """ConfigError for settings the engine cannot honour (checked before any work starts)."""
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r}: choose from {list(ENGINES)}")
    if address and name != "ray":
        raise ConfigError("--address joins a Ray cluster; it needs --engine ray")
    if name == "ray" and device.startswith("cuda:"):
        raise ConfigError(f"--device {device}: Ray gives each worker a GPU of its own; use --device cuda")


def make_engine(name: str, spec: PredictorSpec, workers: int, address: str | None) -> Engine:
    check_engine(name, address, spec.device)
    return RayEngine(spec, workers, address) if name == "ray" else LocalEngine(spec, workers)
